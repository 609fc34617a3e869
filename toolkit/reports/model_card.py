"""MODEL_CARD.md: what the model does, on what data, how well, and what not to use it for."""

from __future__ import annotations

from pathlib import Path

from ..core.files import write_text
from ..core.text import for_markdown, for_terminal
from .pages import RunFacts, known_confusions


def write_model_card(facts: RunFacts) -> Path:
    """Write `MODEL_CARD.md` beside report.html; return its path."""
    m, config = facts.metrics, facts.config
    names = facts.class_names
    backbone = (f"{m['backbone']} ({m['weights']} weights)" if m["backbone"]
                else "a small CNN trained from scratch")
    size = facts.pack.get("size") or "?"
    cal = m["calibration"]
    lines = [
        f"# Model card: {', '.join(map(for_markdown, names))}",
        "",
        "## What it does",
        "",
        (f"Labels a photo as one of {len(names)} classes: {', '.join(map(code, names))}. "
         f"It is the `{m['strategy']}` strategy on {backbone}, and takes a {size}x{size} RGB "
         f"image (0-255; `toolkit predict` makes it from any photo the way `pack` did: "
         f"{facts.pack.get('fit', 'crop')}). `toolkit predict` answers `unknown` for a photo "
         "unlike every class (see Calibration)."),
        "",
        "## Data",
        "",
        (f"- Archive {code(facts.archive)}, packed from {code(facts.pack.get('source', '?'))} "
         f"(seed {facts.pack.get('seed', '?')}, test share {facts.pack.get('test_size', '?')})."),
        *(f"- {code(n)}: {a} training images, {b} test images" for n, a, b in
          zip(names, facts.train_counts, facts.test_counts)),
    ]
    if facts.crawl:
        for name, s in facts.crawl.items():
            hosts = ", ".join(for_markdown(h) for h, _ in s["top_hosts"])
            lines.append(f"- {code(name)} was crawled with {for_markdown(', '.join(s['engines']))} for "
                         f"{'; '.join(for_markdown(repr(q)) for q in s['queries']) or 'its label'} "
                         f"({for_markdown(s['first'])} to {for_markdown(s['last'])}); top sources: {hosts}")
    else:
        lines.append("- No crawl manifests were found beside the source: where the images came "
                     "from is not recorded here.")
    lines += [
        (f"- Validation: a seeded, stratified {config.get('validation_split', '?')} of the training "
         "images; the test set was used once, at the end."),
        "",
        "## Metrics (test set)",
        "",
        (f"- {m['test_images']} test images: accuracy **{m['accuracy']:.3f}**, "
         f"macro F1 **{m['macro_f1']:.3f}**."),
        "",
        "| class | precision | recall | F1 | support |",
        "|---|---|---|---|---|",
        *(f"| {for_markdown(n)} | {s['precision']:.3f} | {s['recall']:.3f} | {s['f1']:.3f} | {s['support']} |"
          for n, s in m["per_class"].items()),
        "",
        "## Calibration",
        "",
    ]
    if cal:
        lines += [
            (f"- Temperature {cal['temperature']:.3f}, fitted on {cal['validation_images']} "
             f"validation images. Expected calibration error on the test set: "
             f"{cal['test_ece_before']:.3f} before, {cal['test_ece_after']:.3f} after."),
            (f"- `unknown`: an image whose embedding is farther than "
             f"{_number(cal['distance_threshold'])} (cosine) from its {cal['neighbours']}th nearest "
             f"training image (threshold from validation data); {cal['test_rejected_as_unknown']:.1%} "
             "of the in-class test images are answered `unknown`."),
        ]
    else:
        lines.append("- Not calibrated (no validation split).")
    confusions = known_confusions(m)
    lines += ["", "## Known confusions", ""]
    lines += [f"- {code(t)} taken for {code(p)}: {c} test images ({share:.0%} of {code(t)})"
              for t, p, c, share in confusions] or ["- none on the test set"]
    lines += [
        "",
        "## Not for",
        "",
        (f"- Anything outside these {len(names)} classes: it has seen nothing else, and `unknown` "
         "catches only part of what is unlike them."),
        ("- Decisions about people, safety, health or money: it was trained on "
         f"{sum(facts.train_counts)} web images, with the label noise and the biases of their sources."),
        ("- Photos unlike the training data (other cameras, drawings, night shots) without "
         "checking on a sample first (`toolkit evaluate --data`)."),
        "",
    ]
    path = facts.folder / "MODEL_CARD.md"
    write_text(path, "\n".join(lines))
    return path


def code(name: object) -> str:
    """A name as a code span, safe in a table and a list: no HTML is read inside a code span, a
    `|` is escaped for the table, controls are made printable; a name holding a backtick is
    written as escaped plain text instead."""
    text = for_terminal(name)
    return for_markdown(text) if "`" in text else "`" + text.replace("|", "\\|") + "`"


def _number(value) -> str:
    return "(none)" if value is None else f"{value:.4g}"
