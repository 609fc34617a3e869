"""report.html: a run's results as one self-contained page (no network, images inlined).

Accuracy and macro F1 first; then the learning curves, the confusion matrix (click a cell to
see its test images), the top losses, per-class scores, the settings and where the data came
from. `toolkit compare` writes a page with the strategies side by side.
"""

from __future__ import annotations

import base64
import html
import io
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from ..core.files import read_own_file, write_text
from .metrics import RunMetrics, read_metrics
from .pages import CELL_IMAGES, RunFacts, known_confusions, top_loss_rows

THUMBNAIL = 96      # px, the side of an inlined test image

STYLE = """
body{font:15px/1.45 system-ui,sans-serif;margin:0 auto;max-width:1100px;padding:0 20px 60px;color:#222}
h1{margin:24px 0 4px} h2{margin-top:36px;border-bottom:1px solid #ddd;padding-bottom:4px}
.headline{display:flex;gap:28px;flex-wrap:wrap;margin:16px 0}
.headline div{background:#f3f6fa;border-radius:8px;padding:10px 18px}
.headline b{display:block;font-size:28px}
table{border-collapse:collapse;margin:8px 0} td,th{border:1px solid #ddd;padding:4px 10px;text-align:right}
th{background:#f6f6f6} td.l,th.l{text-align:left}
.cm button{width:100%;min-width:64px;padding:8px;border:0;cursor:pointer;font:inherit}
.cm button:disabled{cursor:default}
.gallery{display:flex;flex-wrap:wrap;gap:8px;margin:10px 0}
figure{margin:0;width:SIDEpx;font-size:12px} figure img{width:SIDEpx;height:SIDEpx;display:block}
.muted{color:#777} img.plot{max-width:min(100%,760px)}
""".replace("SIDE", str(THUMBNAIL + 20))

SCRIPT = """
document.querySelectorAll('[data-cell]').forEach(function (button) {
  button.addEventListener('click', function () {
    document.querySelectorAll('.cell-images').forEach(function (p) { p.hidden = true; });
    var panel = document.getElementById('cell-' + button.dataset.cell);
    panel.hidden = false;
    panel.scrollIntoView({block: 'nearest'});
  });
});
"""


def write_run_page(facts: RunFacts) -> Path:
    """Write `report.html` into the run folder; return its path."""
    m = facts.metrics
    title = (m["strategy"] + (f" / {m['backbone']}" if m["backbone"] else "")
             + f" on {Path(facts.archive).name}")
    body = [f"<h1>{_e(title)}</h1>", f"<p class=muted>{_e(str(facts.folder))}</p>",
            _headline(m), "<h2>Learning curves</h2>", _image_file(facts.folder / "curves.png"),
            "<h2>Confusion matrix</h2>", _confusion(facts),
            "<h2>Top losses</h2>", _top_losses(facts),
            "<h2>Per class</h2>", _per_class(m),
            "<h2>Settings</h2>", _settings(facts),
            "<h2>Data</h2>", _provenance(facts)]
    path = facts.folder / "report.html"
    write_text(path, _page(title, "\n".join(body)))
    return path


def write_comparison_page(folder: str | os.PathLike, rows: Sequence[dict]) -> Path:
    """`report.html` of a comparison: the strategies' numbers, curves and confusions side by side."""
    folder = Path(folder)
    metrics = [read_metrics(r["run"]) for r in rows]
    head = ["strategy", "accuracy", "macro F1", "test ECE (calibrated)", "epochs", "seconds", "report"]
    lines = [_table_head(head)]
    for r, m in zip(rows, metrics):
        ece = m["calibration"]["test_ece_after"]
        link = os.path.relpath(Path(r["run"]) / "report.html", folder)
        lines.append(f"<tr><td class=l>{_e(r['strategy'])}</td><td>{r['accuracy']:.3f}</td>"
                     f"<td>{r['macro_f1']:.3f}</td><td>{ece:.3f}</td>"
                     f"<td>{r['epochs']}</td><td>{r['seconds']:.0f}</td>"
                     f"<td class=l><a href=\"{_e(link)}\">{_e(link)}</a></td></tr>")
    side = "".join(
        f"<div><h3>{_e(r['strategy'])}</h3>{_image_file(Path(r['run']) / 'curves.png', 480)}"
        f"{_matrix_table(m)}</div>"
        for r, m in zip(rows, metrics))
    body = (f"<h1>Comparison</h1><p class=muted>{_e(str(folder))}</p><table>{''.join(lines)}</table>"
            f"{_image_file(folder / 'comparison.png')}<h2>Side by side</h2>"
            f"<div style='display:flex;gap:24px;flex-wrap:wrap'>{side}</div>")
    path = folder / "report.html"
    write_text(path, _page("Comparison", body))
    return path


# --------------------------------------------------------------------------- sections

def _headline(m: RunMetrics) -> str:
    c = m["calibration"]
    items = [("accuracy", f"{m['accuracy']:.3f}"), ("macro F1", f"{m['macro_f1']:.3f}"),
             ("test images", str(m["test_images"])),
             ("test ECE, before / after calibration",
              f"{c['test_ece_before']:.3f} / {c['test_ece_after']:.3f}"),
             ("in-class images answered unknown", f"{c['test_rejected_as_unknown']:.1%}")]
    return "<div class=headline>" + "".join(f"<div>{_e(k)}<b>{_e(v)}</b></div>" for k, v in items) + "</div>"


def _confusion(facts: RunFacts) -> str:
    m = facts.metrics
    names, matrix = m["class_names"], np.array(m["confusion_matrix"])
    predicted = (facts.probabilities.argmax(1) if facts.probabilities is not None
                 else np.full(len(facts.y_test), -1))
    top = max(1, int(matrix.max()))
    rows = [f"<tr><th class=l>true \\ predicted</th>{''.join(f'<th>{_e(n)}</th>' for n in names)}</tr>"]
    panels = []
    for i, true in enumerate(names):
        cells = []
        for j in range(len(names)):
            count = int(matrix[i, j])
            shade = int(235 - 170 * count / top)
            colour = "#fff" if shade < 140 else "#222"
            style = f"background:rgb({shade},{shade + 10},255);color:{colour}"
            cells.append(f"<td style='padding:0'><button data-cell=\"{i}-{j}\" style=\"{style}\" "
                         f"title=\"{_e(true)} predicted as {_e(names[j])}\"{'' if count else ' disabled'}>"
                         f"{count}</button></td>")
            members = np.flatnonzero((facts.y_test == i) & (predicted == j))
            if len(members):
                shown = members[:CELL_IMAGES]  # (shown_rows chooses the same)
                hidden = len(members) - len(shown)
                more = f"<p class=muted>and {hidden} more</p>" if hidden else ""
                panels.append(f"<div class=cell-images id=\"cell-{i}-{j}\" hidden><h3>{_e(true)} "
                              f"predicted as {_e(names[j])}: {len(members)} images</h3><div class=gallery>"
                              + "".join(_figure(facts, k) for k in shown) + f"</div>{more}</div>")
        rows.append(f"<tr><th class=l>{_e(true)}</th>{''.join(cells)}</tr>")
    return (f"<p class=muted>Rows are true classes, columns predictions. Click a cell to see its "
            f"test images.</p><table class=cm>{''.join(rows)}</table>{''.join(panels)}")


def _top_losses(facts: RunFacts) -> str:
    if facts.probabilities is None:
        return "<p class=muted>no predictions recorded</p>"
    order = top_loss_rows(facts.y_test, facts.probabilities)
    if not len(order):
        return "<p>every test image is classified correctly.</p>"
    return ("<p class=muted>The test images the model gets most wrong (lowest calibrated "
            "probability of the true class).</p><div class=gallery>"
            + "".join(_figure(facts, k) for k in order) + "</div>")


def _per_class(m: dict) -> str:
    lines = [_table_head(["class", "precision", "recall", "F1", "support"])]
    for name in m["class_names"]:
        s = m["per_class"][name]
        lines.append(f"<tr><td class=l>{_e(name)}</td><td>{s['precision']:.3f}</td>"
                     f"<td>{s['recall']:.3f}</td><td>{s['f1']:.3f}</td><td>{s['support']}</td></tr>")
    confusions = known_confusions(m)
    note = "".join(f"<li>{_e(t)} taken for {_e(p)}: {c} test images ({share:.0%} of {_e(t)})</li>"
                   for t, p, c, share in confusions)
    return f"<table>{''.join(lines)}</table>" + (f"<p>Known confusions:</p><ul>{note}</ul>" if note else "")


def _settings(facts: RunFacts) -> str:
    m, c = facts.metrics, dict(facts.config)
    c.update({k: m[k] for k in ("epochs_run", "best_epoch", "stopped_early", "learning_rate",
                                 "global_batch_size", "device")})
    c["parameters (trainable)"] = f"{m['parameters']['total']:,} ({m['parameters']['trainable']:,})"
    c["seconds"] = ", ".join(f"{k} {v:.0f}" for k, v in m["seconds"].items())
    for key in ("temperature", "distance_threshold", "neighbours", "validation_images"):
        c[f"calibration: {key}"] = m["calibration"][key]
    return _key_values(c)


def _provenance(facts: RunFacts) -> str:
    counts = [_table_head(["class", "train", "test"])] + [
        f"<tr><td class=l>{_e(n)}</td><td>{a}</td><td>{b}</td></tr>"
        for n, a, b in zip(facts.class_names, facts.train_counts, facts.test_counts)]
    parts = [f"<p>Archive <code>{_e(facts.archive)}</code></p>", f"<table>{''.join(counts)}</table>",
             "<h3>Pack settings</h3>", _key_values(facts.pack)]
    if facts.crawl:
        lines = [_table_head(["class", "images", "engines", "queries", "dates", "top source hosts"])]
        for name, s in facts.crawl.items():
            engines = ", ".join(f"{k} {v}" for k, v in s["engines"].items())
            hosts = ", ".join(f"{h} ({n})" for h, n in s["top_hosts"])
            lines.append(f"<tr><td class=l>{_e(name)}</td><td>{s['images']}</td>"
                         f"<td class=l>{_e(engines)}</td><td class=l>{_e('; '.join(s['queries']))}</td>"
                         f"<td class=l>{_e(str(s['first']))} to {_e(str(s['last']))}</td>"
                         f"<td class=l>{_e(hosts)}</td></tr>")
        parts += ["<h3>Crawl</h3>", f"<table>{''.join(lines)}</table>"]
    else:
        parts.append("<p class=muted>No crawl manifests beside the source folder: the images "
                     "were not crawled by toolkit, or the manifests were moved.</p>")
    return "".join(parts)


# --------------------------------------------------------------------------- pieces

def _figure(facts: RunFacts, k: int) -> str:
    names = facts.class_names
    p = facts.probabilities[k]
    guess = int(p.argmax())
    caption = f"{names[facts.y_test[k]]} → {names[guess]} {p[guess]:.2f}"
    return (f"<figure><img alt=\"{_e(caption)}\" title=\"{_e(facts.test_paths[k])}\" "
            f"src=\"{thumbnail(np.asarray(facts.test_images[k]))}\"><figcaption>{_e(caption)}"
            "</figcaption></figure>")


def thumbnail(pixels: np.ndarray, side: int = THUMBNAIL) -> str:
    """A small JPEG of an image as a data: URI."""
    image = Image.fromarray(np.asarray(pixels, dtype=np.uint8))
    image = image.resize((side, side), Image.Resampling.BILINEAR)
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=75)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode()


def _image_file(path: Path, width: int | None = None) -> str:
    """A plot the run wrote, inlined; a link or anything but a PNG is not shown."""
    data = read_own_file(path)
    if data is None or not data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "<p class=muted>(none)</p>"
    size = f" width={width}" if width else ""
    return (f"<img class=plot{size} alt=\"{_e(path.name)}\" "
            f"src=\"data:image/png;base64,{base64.b64encode(data).decode()}\">")


def _matrix_table(m: RunMetrics) -> str:
    names = m["class_names"]
    rows = [f"<tr><th></th>{''.join(f'<th>{_e(n)}</th>' for n in names)}</tr>"]
    rows += [f"<tr><th class=l>{_e(n)}</th>{''.join(f'<td>{v}</td>' for v in row)}</tr>"
             for n, row in zip(names, m["confusion_matrix"])]
    return f"<table>{''.join(rows)}</table>"


def _key_values(values: dict) -> str:
    rows = "".join(f"<tr><th class=l>{_e(str(k))}</th><td class=l>{_e(_text(v))}</td></tr>"
                   for k, v in values.items())
    return f"<table>{rows}</table>"


def _text(value) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, (list, tuple)):
        return ", ".join(map(str, value))
    return "" if value is None else str(value)


def _table_head(names: list[str]) -> str:
    return "<tr>" + "".join(f"<th{' class=l' if i == 0 else ''}>{_e(n)}</th>"
                            for i, n in enumerate(names)) + "</tr>"


def _page(title: str, body: str) -> str:
    return ("<!doctype html><html lang=en><head><meta charset=utf-8>"
            "<meta name=viewport content='width=device-width,initial-scale=1'>"
            "<link rel=icon href='data:,'>"
            f"<title>{_e(title)}</title><style>{STYLE}</style></head><body>{body}"
            f"<script>{SCRIPT}</script></body></html>\n")


def _e(text: str) -> str:
    return html.escape(str(text), quote=True)
