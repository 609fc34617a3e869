"""List a folder of class folders and find the files in it that are usable and unique.

`pack` picks from exactly these files and `review` judges exactly these, so that both see the
same "usable" and "duplicate" rules (:mod:`toolkit.core.images`, :mod:`toolkit.core.dedupe`).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from . import dedupe, images
from .errors import ToolkitError

#: Status of a file whose name starts with a dot (besides images.REASONS and dedupe's reasons).
HIDDEN = "hidden"
#: Status of a link that leads out of its class folder: a shared dataset could otherwise bring
#: any file of the disk into review.html, the gallery or an archive.
OUTSIDE = "outside"


@dataclass
class InputFile:
    """One file found under SOURCE and what became of it."""

    label: int
    path: Path
    name: str  # path relative to SOURCE, printable
    status: str = ""
    detail: str = ""
    info: images.ImageInfo | None = None
    moved_from: str = ""  # the class folder it is in, when a review moved it to `label`


@dataclass(frozen=True)
class PixelSink:
    """Where the one decoding pass hands over each usable file's pixels, so that nobody decodes
    a file twice: `put(index in the list, pixels)` gets them resized to `size` by `fit`, from
    several threads at once."""

    size: int
    fit: str
    put: Callable[[int, np.ndarray], None]


def class_folders(source: str | os.PathLike, min_classes: int = 2) -> list[tuple[str, Path]]:
    """The class folders of SOURCE as (class name, path), sorted by name: label i is the i-th.
    A classifier needs two; review's reference folder may hold one (`min_classes`)."""
    source = Path(source)
    if not source.exists():
        raise missing_source(source)
    if not source.is_dir():
        raise ToolkitError(f"source {source} is not a folder; give a folder of class folders")
    try:
        entries = sorted(os.scandir(source), key=lambda e: e.name)
    except OSError as e:
        raise ToolkitError(f"cannot read {source}: {e.strerror}") from None
    folders = [(printable(e.name), Path(e.path)) for e in entries
               if not e.name.startswith(".") and _is_dir(e)]
    check_class_count(source, [name for name, _ in folders], min_classes)
    return folders


def missing_source(source: str | os.PathLike) -> ToolkitError:
    return ToolkitError(f"source folder {source} does not exist; run `toolkit crawl` first "
                        "or give a folder of class folders")


def check_class_count(source: str | os.PathLike, class_names: list[str], min_classes: int = 2) -> None:
    """SOURCE's class folders (their names, sorted) are enough: at least `min_classes`."""
    if not class_names:
        raise ToolkitError(f"{source} holds no class folders; put each class's images in "
                           f"a folder of its own (e.g. {source}/cat/, {source}/dog/)")
    if len(class_names) < min_classes:
        raise ToolkitError(f"{source} holds one class folder ({class_names[0]}); a classifier "
                           "needs at least two")


def list_files(folder: Path) -> list[Path]:
    """Every file under `folder`, sorted, following links but never around a loop."""
    found: list[Path] = []
    seen: set[tuple[int, int]] = set()

    def walk(d: Path) -> None:
        try:
            st = d.stat()
        except OSError:
            return
        if (st.st_dev, st.st_ino) in seen:
            return
        seen.add((st.st_dev, st.st_ino))
        try:
            entries = sorted(os.scandir(d), key=lambda e: e.name)
        except OSError:
            return
        for e in entries:
            if _is_dir(e):
                if not e.name.startswith("."):
                    walk(Path(e.path))
            else:
                found.append(Path(e.path))

    walk(folder)
    return found


def inside(path: Path, root: Path) -> bool:
    """Whether `path`, its links followed, lies inside the (resolved) folder `root`. A dangling
    link or a link loop counts as inside: reading it fails, and says so, as for any file."""
    try:
        return path.resolve(strict=True).is_relative_to(root)
    except (OSError, RuntimeError):
        return True


def printable(name: str) -> str:
    """A file name that can be printed and stored: undecodable bytes shown as \\xNN."""
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def _is_dir(entry: os.DirEntry) -> bool:
    try:
        return entry.is_dir()  # follows links; a link loop is not a dir
    except OSError:
        return False


def find_usable(source: str | os.PathLike, *, checks: images.Checks = images.Checks(),
                threshold: int = dedupe.DEFAULT_THRESHOLD, workers: int | None = None,
                progress: bool = False, min_classes: int = 2,
                pixels: PixelSink | None = None) -> tuple[list[str], list[InputFile]]:
    """Find, verify and dedupe every file under SOURCE's class folders: what pack considers.

    Returns the class names and every file found; a file whose `status` is still "" is
    usable and unique. With `pixels`, each usable file's pixels go there as it is verified.
    """
    class_names, files = list_inputs(source, min_classes)
    _decode_all(files, checks, pixels, workers, progress)
    _drop_duplicates(files, threshold)
    return class_names, files


def list_inputs(source: str | os.PathLike, min_classes: int = 2) -> tuple[list[str], list[InputFile]]:
    """The class names and every file under SOURCE's class folders, in the order pack numbers
    them (by class, then by path), hidden files marked: what is to be verified, unread."""
    class_names, files = iter_inputs(source, min_classes)
    return class_names, list(files)


def iter_inputs(source: str | os.PathLike, min_classes: int = 2
                ) -> tuple[list[str], Iterator[InputFile]]:
    """:func:`list_inputs`' files one at a time (a class's paths in memory at once, not every
    file's): what a pack of any size lists. A missing or empty SOURCE is an error at once."""
    folders = class_folders(source, min_classes)

    def files() -> Iterator[InputFile]:
        for label, (_, folder) in enumerate(folders):
            root = folder.resolve()  # a class folder may be a link itself
            for path in list_files(folder):
                f = InputFile(label, path, printable(str(path.relative_to(source))))
                if f.path.name.startswith("."):
                    f.status = HIDDEN
                elif not inside(f.path, root):
                    f.status = OUTSIDE
                yield f

    return [name for name, _ in folders], files()


def _decode_all(files: list[InputFile], checks: images.Checks, pixels: PixelSink | None,
                workers: int | None, progress: bool) -> None:
    """Verify every file not yet ruled out, and hand its pixels to `pixels` (if any).

    Pillow decodes and resizes outside the GIL, so threads use every core without
    copying pixels between processes.
    """
    def work(index: int) -> tuple[int, str, str, images.ImageInfo | None]:
        f = files[index]
        try:
            info, decoded = images.decode(images.read_file(f.path, checks), checks,
                                          pixels.size if pixels else None,
                                          pixels.fit if pixels else "crop")
        except images.Unusable as e:
            return index, e.reason, e.detail, None
        if pixels is not None:
            pixels.put(index, decoded)
        return index, "", "", info

    todo = [i for i, f in enumerate(files) if not f.status]
    executor = ThreadPoolExecutor(max_workers=workers or os.cpu_count() or 1)
    try:
        results = executor.map(work, todo)
        for index, status, detail, info in tqdm(results, total=len(todo), desc="decode",
                                                unit="img", disable=not progress):
            files[index].status, files[index].detail, files[index].info = status, detail, info
    finally:
        executor.shutdown(wait=True, cancel_futures=True)


def _drop_duplicates(files: list[InputFile], threshold: int) -> None:
    usable = [f for f in files if f.info is not None and not f.status]
    candidates = [dedupe.Candidate(f.label, f.info.sha256, f.info.phash,
                                   f.info.width * f.info.height, f.name) for f in usable]
    for index, dropped in dedupe.find_duplicates(candidates, threshold).items():
        f, twin = usable[index], usable[dropped.twin]
        f.status, f.detail = dropped.reason, twin.name
