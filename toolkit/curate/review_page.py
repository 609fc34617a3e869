"""review.html: the page of a review that needs nothing else, and the square JPEGs it and the
gallery show of each image."""

from __future__ import annotations

import base64
import html
import io
import os
from collections.abc import Callable, Collection, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from PIL import Image

from ..core import images
from ..core.files import write_text
from ..core.sources import InputFile
from .rules import AMBIGUOUS, FINE, MISLABELED, OFF_TOPIC
from .verdicts import Review

REVIEW_HTML = "review.html"
#: The side of the square thumbnails inlined in review.html.
HTML_THUMBNAIL_SIDE = 96
#: What the page says of each verdict.
VERDICT_NOTES = {
    MISLABELED: "looks like another class",
    OFF_TOPIC: "close to no class",
    AMBIGUOUS: "between its class and another",
    FINE: "",
}


#: Thumbnails of the images a page shows: from the names on the page to each one's square JPEG
#: (a name left out: an image no longer readable).
Thumbnails = Callable[[Collection[str]], dict[str, bytes]]


def cropped_jpeg(path: str | os.PathLike, side: int, checks: images.Checks = images.Checks()) -> bytes:
    """A square JPEG of the image as pack would crop it: what the model sees."""
    return square_jpeg(images.read_file(path, checks), side, checks)


def square_jpeg(data: bytes, side: int, checks: images.Checks = images.Checks()) -> bytes:
    """A square JPEG of an image's bytes, cropped as pack crops it."""
    pixels = images.decode(data, checks, side, "crop")[1]
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "JPEG", quality=80)
    return buffer.getvalue()


def file_thumbnails(files: Sequence[InputFile], checks: images.Checks = images.Checks()) -> Thumbnails:
    """:data:`Thumbnails` read from the files of a folder, in parallel."""
    def thumbnails(names: Collection[str]) -> dict[str, bytes]:
        paths = {f.name: f.path for f in files if f.name in names}

        def inline(path: str) -> bytes | None:
            try:
                return cropped_jpeg(path, HTML_THUMBNAIL_SIDE, checks)
            except (images.Unusable, OSError):  # changed or deleted since it was judged
                return None

        with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as executor:
            made = dict(zip(paths, executor.map(inline, paths.values())))
        return {name: data for name, data in made.items() if data is not None}
    return thumbnails


def write_html(result: Review, files: Sequence[InputFile], path: Path,
               checks: images.Checks = images.Checks(), *, fine_per_class: int,
               thumbnails: Thumbnails | None = None, gallery: bool = True) -> None:
    """A page that needs nothing else: per class, suspects first, thumbnails inlined; every
    suspect, but at most `fine_per_class` fine images of a class. The thumbnails come from
    `files` unless `thumbnails` makes them (a packed dataset's records); `gallery` False: the
    page names no `--serve` (a dataset has no gallery)."""
    shown = {name: sorted((v for v in result.verdicts if v.label == name),
                          key=lambda v: (not v.suspect, -v.score, v.file))
             for name in result.class_names}
    for name, mine in shown.items():
        shown[name] = mine[:sum(v.suspect for v in mine) + fine_per_class]
    on_page = {v.file for mine in shown.values() for v in mine}
    made = (thumbnails or file_thumbnails(files, checks))(on_page)
    inlined = {name: "data:image/jpeg;base64," + base64.b64encode(data).decode()
               for name, data in made.items()}
    act = ("Act on them with <code>toolkit review --serve</code>." if gallery else
           "Act on them in the SOURCE folder it was packed from: <code>toolkit review SOURCE --serve</code>.")
    sections = []
    for name in result.class_names:
        mine, cards = shown[name], []
        for v in mine:
            if v.suggested and v.reason == OFF_TOPIC:  # like a class of the reference
                note = f"looks like {v.suggested}, a reference class"
            else:
                note = VERDICT_NOTES[v.reason] + (f": {v.suggested}?" if v.suggested else "")
            cards.append(
                f'<figure class="{"suspect" if v.suspect else "fine"}">'
                f'<img src="{inlined.get(v.file, "")}" alt="(no longer readable)">'
                f'<figcaption><b>{html.escape(v.reason)}</b> {v.score:.2f}<br>'
                f'{html.escape(note)}<br><small>{html.escape(v.file)}</small>'
                '</figcaption></figure>')
        n_images = sum(v.label == name for v in result.verdicts)
        n_suspects = sum(v.suspect for v in mine)
        more = (f'<p class="more">and {n_images - len(mine)} more fine images'
                + (': <code>toolkit review --serve</code> shows every one' if gallery else '') + '</p>'
                if n_images > len(mine) else "")
        sections.append(f'<h2>{html.escape(name)} <small>{n_images} images, {n_suspects} '
                        f'suspects</small></h2><div class="grid">{"".join(cards)}</div>{more}')
    page = f"""<!doctype html><html lang="en"><head><meta charset="utf-8">
<title>review of {html.escape(result.source)}</title><style>
body{{font:14px system-ui,sans-serif;margin:1em 2em}}
.grid{{display:flex;flex-wrap:wrap;gap:8px}}
figure{{margin:0;width:{HTML_THUMBNAIL_SIDE + 24}px;padding:4px;border:3px solid #ddd;border-radius:4px}}
figure.suspect{{border-color:#d33}} figcaption{{font-size:11px;overflow-wrap:anywhere}}
</style></head><body><h1>review of {html.escape(result.source)}</h1>
<p>{len(result.verdicts)} images, {len(result.suspects())} suspects ({html.escape(result.backbone)},
weights {html.escape(result.weights)}). {act}</p>
{"".join(sections)}</body></html>
"""
    write_text(path, page)
