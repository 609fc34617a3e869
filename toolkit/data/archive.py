"""Pack a folder of class folders into a clean, stratified train/test `.npz` archive,
and load such an archive back with every check a training run needs.

The archive holds `X_train` (n, size, size, 3) uint8, `y_train` int64, `X_test`, `y_test`,
`class_names` (label i = the i-th class folder in sorted order), `paths_train` and
`paths_test` (where every row came from) and `meta` (a JSON string). Nothing in it needs
pickle: `np.load(path)` reads it as it is.
"""

from __future__ import annotations

import collections
import json
import math
import os
import struct
import tempfile
import zipfile
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import numpy as np
from tqdm import tqdm

from .. import __version__
from ..core import dedupe, images
from ..core.errors import OptionError, ToolkitError, first_line
from ..core.files import atomic_path, write_json, write_text
from ..core.text import text_table, timestamp
from ..curate import decisions

IMAGE_KEYS = ("X_train", "X_test")
LABEL_KEYS = ("y_train", "y_test")
REQUIRED_KEYS = (*IMAGE_KEYS, *LABEL_KEYS)

#: Status of an input file in the pack report, besides the reasons in images.REASONS.
PACKED, SURPLUS, HIDDEN = "packed", "surplus", "hidden"
DUPLICATE, LABEL_CONFLICT = "duplicate", "label_conflict"
DROPPED_IN_REVIEW, SUSPECT = "dropped_in_review", "suspect"
#: Not a status: a column of the report counting files a review moved into a class.
MOVED_IN_REVIEW = "moved_in_review"
STATUS_WORDS = {
    PACKED: "in the archive",
    SURPLUS: "usable, not picked (over --per-class)",
    HIDDEN: "hidden file, skipped",
    DUPLICATE: "duplicate of a kept image",
    LABEL_CONFLICT: "same picture under another class (label noise), dropped from both",
    DROPPED_IN_REVIEW: "dropped in review (decisions.jsonl)",
    SUSPECT: "undecided suspect of review.json, left out by --drop-suspects",
    **images.REASONS,
}


# --------------------------------------------------------------------------- finding files

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


def class_folders(source: str | os.PathLike, min_classes: int = 2) -> list[tuple[str, Path]]:
    """The class folders of SOURCE as (class name, path), sorted by name: label i is the i-th.
    A classifier needs two; review's reference folder may hold one (`min_classes`)."""
    source = Path(source)
    if not source.exists():
        raise ToolkitError(f"source folder {source} does not exist; run `toolkit crawl` first "
                           "or give a folder of class folders")
    if not source.is_dir():
        raise ToolkitError(f"source {source} is not a folder; give a folder of class folders")
    try:
        entries = sorted(os.scandir(source), key=lambda e: e.name)
    except OSError as e:
        raise ToolkitError(f"cannot read {source}: {e.strerror}") from None
    folders = [(printable(e.name), Path(e.path)) for e in entries
               if not e.name.startswith(".") and _is_dir(e)]
    if not folders:
        raise ToolkitError(f"{source} holds no class folders; put each class's images in "
                           f"a folder of its own (e.g. {source}/cat/, {source}/dog/)")
    if len(folders) < min_classes:
        raise ToolkitError(f"{source} holds one class folder ({folders[0][0]}); a classifier "
                           "needs at least two")
    return folders


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


def printable(name: str) -> str:
    """A file name that can be printed and stored: undecodable bytes shown as \\xNN."""
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def _is_dir(entry: os.DirEntry) -> bool:
    try:
        return entry.is_dir()  # follows links; a link loop is not a dir
    except OSError:
        return False


# --------------------------------------------------------------------------- the report

@dataclass
class PackReport:
    """Per class: files found, packed, and every other file by reason."""

    source: str
    class_names: list[str]
    files: list[InputFile]
    out: str | None = None
    per_class: int = 0
    train_counts: list[int] = field(default_factory=list)
    test_counts: list[int] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def counts(self) -> list[collections.Counter]:
        """Per class (after review's moves): files by status, and `moved_in_review`."""
        by_class = [collections.Counter() for _ in self.class_names]
        for f in self.files:
            by_class[f.label][f.status] += 1
            if f.moved_from:
                by_class[f.label][MOVED_IN_REVIEW] += 1
        return by_class

    def usable_counts(self) -> list[int]:
        return [c[PACKED] + c[SURPLUS] for c in self.counts()]

    def table(self) -> str:
        """The report as a plain-text table, one row per class, a column per outcome."""
        counts = self.counts()
        outcomes = [s for s in (*STATUS_WORDS, MOVED_IN_REVIEW) if any(c[s] for c in counts)]

        def found(c: collections.Counter) -> int:
            return sum(c.values()) - c[MOVED_IN_REVIEW]

        rows = [[name, found(c), *(c[s] for s in outcomes)]
                for name, c in zip(self.class_names, counts)]
        total = collections.Counter()
        for c in counts:
            total.update(c)
        table = text_table(["class", "found", *outcomes], rows,
                           total=["total", found(total), *(total[s] for s in outcomes)])
        words = {**STATUS_WORDS, MOVED_IN_REVIEW: "moved into this class in review (also "
                                                  "counted under its outcome)"}
        legend = [f"  {s}: {words[s]}" for s in outcomes]
        return "\n".join([table, "", *legend])

    def to_json(self) -> dict:
        return {
            "source": self.source,
            "out": self.out,
            "class_names": self.class_names,
            "per_class": self.per_class,
            "train_counts": self.train_counts,
            "test_counts": self.test_counts,
            "warnings": self.warnings,
            "counts": {name: dict(c) for name, c in zip(self.class_names, self.counts())},
            "files": [{"class": self.class_names[f.label], "path": f.name, "status": f.status,
                       **({"detail": f.detail} if f.detail else {}),
                      **({"moved_from": f.moved_from} if f.moved_from else {}),
                       **({"sha256": f.info.sha256, "width": f.info.width,
                           "height": f.info.height} if f.info else {})}
                      for f in self.files],
        }


class NotEnoughImages(ToolkitError):
    """A class has fewer usable images than asked for; carries the report that shows why."""

    def __init__(self, message: str, report: PackReport):
        super().__init__(message)
        self.report = report


# --------------------------------------------------------------------------- pack

def pack(source: str | os.PathLike, out: str | os.PathLike, *, per_class: int = 400,
         test_size: float = 0.2, size: int = 224, fit: str = "crop", seed: int = 42,
         checks: images.Checks = images.Checks(), threshold: int = dedupe.DEFAULT_THRESHOLD,
         allow_fewer: bool = False, force: bool = False, drop_suspects: bool = False,
         workers: int | None = None, progress: bool = False) -> PackReport:
    """Clean, dedupe, resize and split SOURCE's class folders into the archive `out`.

    Decisions made in `toolkit review` (SOURCE/decisions.jsonl) are honoured: a dropped
    image is left out, a moved one is packed under its new class; with `drop_suspects`,
    every suspect of SOURCE/review.json that no decision kept is left out too.

    Writes `out` and, beside it, `<stem>.report.txt` and `<stem>.report.json`, all
    atomically. Raises :class:`ToolkitError` (nothing written) on bad arguments, and
    :class:`NotEnoughImages` when a class has fewer than `per_class` usable images and
    `allow_fewer` is not set.
    """
    out = Path(out)
    _check_pack_arguments(out, per_class, test_size, size, fit, threshold, force)
    class_folders(source)  # a missing or empty SOURCE is the first error
    made = decisions.read(source)
    judged = decisions.read_review(source) if drop_suspects else None
    with tempfile.TemporaryFile(dir=out.parent, prefix=f".{out.name}.", suffix=".spill") as spill:
        class_names, files = find_usable(source, checks=checks, threshold=threshold, size=size,
                                         fit=fit, spill_fd=spill.fileno(), workers=workers,
                                         progress=progress)
        report = PackReport(str(source), class_names, files, str(out), per_class)
        _apply_review(files, class_names, made, judged, report)
        chosen = _choose(report, per_class, seed, allow_fewer)
        train, test = _split(chosen, test_size, seed, report)
        for f in chosen:
            f.status = PACKED
        meta = {"toolkit": __version__, "created": timestamp(), "source": str(Path(source).resolve()),
                "size": size, "fit": fit, "seed": seed, "test_size": test_size, "per_class": per_class,
                "min_side": checks.min_side, "threshold": threshold, "drop_suspects": drop_suspects}
        _write_archive(out, report.class_names, train, test, files, spill.fileno(), size, meta)

    stem = out.with_suffix("")
    write_text(f"{stem}.report.txt", report.table() + "".join(
        f"\nwarning: {w}" for w in report.warnings) + "\n")
    write_json(f"{stem}.report.json", report.to_json())
    return report


def find_usable(source: str | os.PathLike, *, checks: images.Checks = images.Checks(),
                threshold: int = dedupe.DEFAULT_THRESHOLD, size: int | None = None,
                fit: str = "crop", spill_fd: int | None = None, workers: int | None = None,
                progress: bool = False, min_classes: int = 2) -> tuple[list[str], list[InputFile]]:
    """Find, verify and dedupe every file under SOURCE's class folders: what pack considers.

    Returns the class names and every file found; a file whose `status` is still "" is
    usable and unique. `pack` picks from exactly these and `review` judges exactly these.
    With `spill_fd`, each usable file's pixels (`size`, `fit`) are written there at
    row = its index in the list.
    """
    folders = class_folders(source, min_classes)
    files = [InputFile(label, path, printable(str(path.relative_to(source))))
             for label, (_, folder) in enumerate(folders) for path in list_files(folder)]
    for f in files:
        if f.path.name.startswith("."):
            f.status = HIDDEN
    _decode_all(files, spill_fd, size * size * 3 if size else 0, checks, size, fit, workers,
                progress)
    _drop_duplicates(files, threshold)
    return [name for name, _ in folders], files


def _apply_review(files: list[InputFile], class_names: list[str],
                  made: dict[str, decisions.Decision], judged: decisions.Judged | None,
                  report: PackReport) -> None:
    """Leave out what review dropped and, given `judged`, its undecided suspects; relabel
    what it moved. Images the review did not see as they are now are packed, with a warning."""
    unjudged, lost_classes = 0, collections.Counter()
    for f in files:
        if f.status:
            continue
        decision = made.get(f.name)
        if decision is None:
            if judged is None:
                continue
            if judged.unjudged(f.name, f.info.sha256):
                unjudged += 1
            elif f.name in judged.suspects:
                f.status = SUSPECT
        elif decision.action == decisions.DROP:
            f.status = DROPPED_IN_REVIEW
        elif decision.action == decisions.MOVE and decision.label not in class_names:
            lost_classes[decision.label] += 1
        elif decision.action == decisions.MOVE:
            label = class_names.index(decision.label)
            if label != f.label:
                f.moved_from, f.label = class_names[f.label], label
    if lost_classes:
        report.warnings.append(
            f"{sum(lost_classes.values())} image(s) moved in review to a class that is no "
            f"longer a folder of SOURCE ({', '.join(sorted(lost_classes))}) are packed in "
            "their own class; run `toolkit review --serve` to decide again")
    if unjudged:
        report.warnings.append(
            f"{unjudged} usable image{'s' if unjudged > 1 else ''} came or changed after the "
            f"review and {'are' if unjudged > 1 else 'is'} packed unjudged: run `toolkit review "
            f"{report.source}` again, then pack")


def _check_pack_arguments(out: Path, per_class: int, test_size: float, size: int, fit: str,
                          threshold: int, force: bool) -> None:
    if out.suffix != ".npz":
        raise OptionError("out", str(out), "the archive name must end in .npz")
    if not out.parent.is_dir():
        raise OptionError("out", str(out), f"folder {out.parent} does not exist; create it first")
    if out.exists() and not force:
        raise ToolkitError(f"{out} already exists; pass --force to replace it")
    if per_class < 2:
        raise OptionError("per_class", per_class, "need at least 2 images per class "
                          "(one to train, one to test)")
    if not 0 < test_size < 1:
        raise OptionError("test_size", test_size, "must be a fraction between 0 and 1, e.g. 0.2")
    if size < 8:
        raise OptionError("size", size, "images must be at least 8 pixels on a side")
    if fit not in images.FITS:
        raise OptionError("fit", fit, f"choose one of {', '.join(images.FITS)}")
    if not 0 <= threshold <= 64:
        raise OptionError("threshold", threshold, "perceptual-hash distance is 0..64 bits")


def _decode_all(files: list[InputFile], spill_fd: int | None, row_bytes: int,
                checks: images.Checks, size: int | None, fit: str, workers: int | None,
                progress: bool) -> None:
    """Verify every file and stream its pixels into the spill file (if any), at row = file index.

    Pillow decodes and resizes outside the GIL, so threads use every core without
    copying pixels between processes.
    """
    def work(index: int) -> tuple[int, str, str, images.ImageInfo | None]:
        f = files[index]
        try:
            info, pixels = images.decode(images.read_file(f.path, checks), checks,
                                         size if spill_fd is not None else None, fit)
        except images.Unusable as e:
            return index, e.reason, e.detail, None
        if spill_fd is not None:
            os.pwrite(spill_fd, pixels.tobytes(), index * row_bytes)
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


def _choose(report: PackReport, per_class: int, seed: int, allow_fewer: bool) -> list[InputFile]:
    """Pick `per_class` usable files per class at random (seeded); the rest are surplus."""
    rng = np.random.default_rng(seed)
    usable = [[f for f in report.files if f.label == k and not f.status]
              for k in range(len(report.class_names))]
    short = [(name, len(u)) for name, u in zip(report.class_names, usable) if len(u) < per_class]
    for f in (f for u in usable for f in u):
        f.status = SURPLUS
    if short and not allow_fewer:
        counts = ", ".join(f"{name} {n}" for name, n in short)
        raise NotEnoughImages(f"too few usable images for --per-class {per_class}: {counts}; "
                              "add images (or `toolkit crawl` again to top up), lower "
                              "--per-class, or pass --allow-fewer", report)
    empty = [name for name, u in zip(report.class_names, usable) if len(u) < 2]
    if empty:
        raise NotEnoughImages(f"class {', '.join(empty)} has fewer than 2 usable images; "
                              "a class needs one to train and one to test", report)
    return [u[i] for u in usable for i in sorted(rng.permutation(len(u))[:per_class])]


def stratified_split(labels: np.ndarray, fraction: float, seed: int
                     ) -> tuple[np.ndarray, np.ndarray]:
    """Seeded, stratified (kept, held-out) positions of `labels`: each class holds out
    round(n * fraction) of its n items, at least one and never all of them. The one splitter
    of the toolkit: pack's train/test split and training's validation split."""
    rng = np.random.default_rng(seed)
    kept: list[int] = []
    held: list[int] = []
    for k in np.unique(labels):
        mine = np.flatnonzero(labels == k)
        mine = mine[rng.permutation(len(mine))]
        n_held = min(max(1, round(len(mine) * fraction)), len(mine) - 1)
        held += mine[:n_held].tolist()
        kept += mine[n_held:].tolist()
    return (np.array(kept, dtype=np.int64)[rng.permutation(len(kept))],
            np.array(held, dtype=np.int64)[rng.permutation(len(held))])


def _split(chosen: list[InputFile], test_size: float, seed: int, report: PackReport
           ) -> tuple[list[InputFile], list[InputFile]]:
    """Stratified train/test split of the chosen files; counts per class into the report."""
    labels = np.array([f.label for f in chosen])
    train, test = stratified_split(labels, test_size, seed + 1)
    for k in range(len(report.class_names)):
        report.train_counts.append(int(np.sum(labels[train] == k)))
        report.test_counts.append(int(np.sum(labels[test] == k)))
    return [chosen[i] for i in train], [chosen[i] for i in test]


def _write_archive(out: Path, class_names: list[str], train: list[InputFile],
                   test: list[InputFile], files: list[InputFile], spill_fd: int, size: int,
                   meta: dict) -> None:
    """Write the .npz atomically, streaming image rows from the spill file into the zip.

    Peak memory stays at one image row, whatever the archive's size.
    """
    index = {id(f): i for i, f in enumerate(files)}
    row_bytes = size * size * 3

    def rows(chosen: list[InputFile]) -> Iterable[bytes]:
        for f in chosen:
            yield os.pread(spill_fd, row_bytes, index[id(f)] * row_bytes)

    with atomic_path(out) as tmp, zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED,
                                                  allowZip64=True) as zf:
        for key, chosen in (("X_train", train), ("X_test", test)):
            _write_rows(zf, key, (len(chosen), size, size, 3), np.uint8, rows(chosen))
        small = {
            "y_train": np.array([f.label for f in train], dtype=np.int64),
            "y_test": np.array([f.label for f in test], dtype=np.int64),
            "class_names": np.array(class_names, dtype=str),
            "paths_train": np.array([f.name for f in train], dtype=str),
            "paths_test": np.array([f.name for f in test], dtype=str),
            "meta": np.array(json.dumps(meta, ensure_ascii=False)),
        }
        for key, array in small.items():
            with zf.open(f"{key}.npy", "w", force_zip64=True) as member:
                np.lib.format.write_array(member, array, allow_pickle=False)


def _write_rows(zf: zipfile.ZipFile, key: str, shape: tuple[int, ...], dtype: type,
                rows: Iterable[bytes]) -> None:
    with zf.open(f"{key}.npy", "w", force_zip64=True) as member:
        write_npy_header(member, shape, dtype)
        for row in rows:
            member.write(row)


def write_npy_header(stream: BinaryIO, shape: tuple[int, ...], dtype) -> None:
    """The .npy header of a C-order array whose rows the caller writes after it, one by one:
    an array of any size is written without ever being held in memory."""
    np.lib.format.write_array_header_2_0(stream, {
        "descr": np.lib.format.dtype_to_descr(np.dtype(dtype)), "fortran_order": False,
        "shape": tuple(shape)})


# --------------------------------------------------------------------------- loading

@dataclass
class Archive:
    """A validated archive: images as raw 0-255 RGB uint8, labels 0..n_classes-1."""

    X_train: np.ndarray
    y_train: np.ndarray
    X_test: np.ndarray
    y_test: np.ndarray
    class_names: list[str]
    meta: dict
    path: str

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.X_train.shape[1:])


def load_archive(path: str | os.PathLike) -> Archive:
    """Open and check an archive; raise ToolkitError naming the first problem found.

    Image arrays stored uncompressed (as pack writes them) are memory-mapped rather than
    read, so a training run holds only the rows it is using.
    """
    path = Path(path)
    if not path.exists():
        raise ToolkitError(f"archive {path} does not exist; make one with "
                           f"`toolkit pack --out {path}`")
    if not zipfile.is_zipfile(path):
        raise ToolkitError(f"{path} is not an .npz archive (not a zip file, or truncated); "
                           "make one with `toolkit pack`")
    try:
        _check_members(path)
        with np.load(path, allow_pickle=False) as npz:
            keys = set(npz.files)
            missing = [k for k in REQUIRED_KEYS if k not in keys]
            if missing:
                raise ToolkitError(f"{path} lacks {', '.join(missing)}; an archive needs "
                                   f"{', '.join(REQUIRED_KEYS)} (make one with `toolkit pack`)")
            arrays = {k: (_memmap_member(path, k) if k in IMAGE_KEYS else None)
                      for k in (*REQUIRED_KEYS, "class_names", "meta") if k in keys}
            arrays = {k: npz[k] if a is None else a for k, a in arrays.items()}
    except ToolkitError:
        raise
    except zipfile.BadZipFile:
        raise ToolkitError(f"{path} is not an .npz archive (not a zip file, or truncated); "
                           "make one with `toolkit pack`") from None
    except ValueError as e:
        if "pickle" in str(e):
            raise ToolkitError(f"{path} holds object arrays, which need pickle to load; "
                               "refusing (pickles can run code). Store plain arrays") from None
        raise ToolkitError(f"{path} is damaged: {first_line(e, 100)}") from None
    except Exception as e:  # numpy and zipfile raise many types on damaged data
        raise ToolkitError(f"{path} is damaged or truncated ({type(e).__name__}: {first_line(e, 100)}); "
                           "pack it again") from None
    return _validated(path, arrays)


def _validated(path: Path, a: dict[str, np.ndarray]) -> Archive:
    def bad(msg: str) -> ToolkitError:
        return ToolkitError(f"{path}: {msg}")

    for k in IMAGE_KEYS:
        x = a[k]
        if x.dtype != np.uint8:
            raise bad(f"{k} has dtype {x.dtype}; images must be uint8 RGB 0-255")
        if x.ndim != 4 or x.shape[-1] != 3:
            raise bad(f"{k} has shape {x.shape}; images must be (n, height, width, 3)")
    if a["X_train"].shape[1:] != a["X_test"].shape[1:]:
        raise bad(f"X_train images are {a['X_train'].shape[1:]} but X_test images are "
                  f"{a['X_test'].shape[1:]}")
    for xk, yk in zip(IMAGE_KEYS, LABEL_KEYS):
        y = a[yk]
        if y.ndim != 1 or y.dtype.kind not in "iu":
            raise bad(f"{yk} must be a 1-D integer array, not {y.dtype} {y.shape}")
        if len(y) != len(a[xk]):
            raise bad(f"{yk} has {len(y)} labels for {len(a[xk])} images in {xk}")
        if len(y) == 0:
            raise bad(f"{yk} is empty")
    labels = np.concatenate([a["y_train"], a["y_test"]])
    if labels.min() < 0:
        raise bad(f"labels must be 0..n_classes-1; found {labels.min()}")
    if "class_names" in a:
        names = a["class_names"]
        if names.dtype.kind != "U" or names.ndim != 1:
            raise bad("class_names must be a 1-D string array")
        class_names = [str(n) for n in names]
        if labels.max() >= len(class_names):
            raise bad(f"label {labels.max()} is outside the {len(class_names)} class_names "
                      f"({', '.join(class_names)})")
    else:
        class_names = [str(i) for i in range(int(labels.max()) + 1)]
    missing = sorted(set(range(len(class_names))) - set(a["y_train"].tolist()))
    if missing:
        raise bad(f"class {', '.join(class_names[i] for i in missing)} has no training "
                  "images; class_names disagree with the labels")
    if len(class_names) < 2:
        raise bad("a classifier needs at least two classes")
    meta = {}  # an archive made elsewhere may have none: its images count as cropped
    if "meta" in a:
        try:
            meta = json.loads(str(a["meta"]))
        except ValueError as e:
            raise bad(f"meta is damaged (not JSON: {e}); pack it again") from None
        if not isinstance(meta, dict):
            raise bad("meta is damaged (not a JSON object); pack it again")
        if meta.get("fit", "crop") not in images.FITS:
            raise bad(f"meta says fit {meta['fit']!r}, not one of {', '.join(images.FITS)}; "
                      "pack it again")
    return Archive(a["X_train"], a["y_train"].astype(np.int64), a["X_test"],
                   a["y_test"].astype(np.int64), class_names, meta, str(path))


#: The most bytes the meta member may declare: far above any real archive's JSON, far below what
#: a lying header could make the loader allocate. (Every other member's size follows the images'.)
META_BYTES = 64 * 2**20


def _check_members(path: Path) -> None:
    """Check what each member declares before any is read, so that a small file cannot make the
    loader allocate what its headers claim: the size in the zip directory must be what the
    member's .npy header declares (rows x row bytes), and the members must agree (one label a
    row, at most one class name a training image, a small meta)."""
    declared: dict[str, tuple[tuple[int, ...], np.dtype]] = {}
    with zipfile.ZipFile(path) as zf:
        for info in zf.infolist():
            key = info.filename.removesuffix(".npy")
            if not info.filename.endswith(".npy") or key not in (*REQUIRED_KEYS, "class_names", "meta"):
                continue
            with zf.open(info) as member:
                version = np.lib.format.read_magic(member)
                read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                               else np.lib.format.read_array_header_2_0)
                shape, _, dtype = read_header(member, max_header_size=10_000)
                header_bytes = member.tell()
            if dtype.hasobject:
                raise ValueError("object arrays need pickle")
            data_bytes = math.prod(shape) * dtype.itemsize
            if info.file_size != header_bytes + data_bytes:
                raise ToolkitError(f"{path} is damaged: {key} declares {shape} {dtype} "
                                   f"({data_bytes:,} bytes) but holds {info.file_size - header_bytes:,}; "
                                   "pack it again")
            if key == "meta" and data_bytes > META_BYTES:
                raise ToolkitError(f"{path} is damaged: {key} declares {data_bytes:,} bytes, more "
                                   f"than any archive's; pack it again")
            declared[key] = shape, dtype
    for x_key, y_key in zip(IMAGE_KEYS, LABEL_KEYS):
        if x_key in declared and y_key in declared:
            rows, labels = declared[x_key][0][:1], declared[y_key][0]
            if labels != rows:
                raise ToolkitError(f"{path}: {y_key} declares shape {labels} for {x_key}'s "
                                   f"{rows[0] if rows else 0} images; pack it again")
    if "class_names" in declared and "X_train" in declared:
        names, rows = declared["class_names"][0], declared["X_train"][0][:1]
        if len(names) != 1 or not rows or names[0] > rows[0]:
            raise ToolkitError(f"{path}: class_names declares shape {names}, more names than the "
                               f"{rows[0] if rows else 0} training images; pack it again")


def _memmap_member(path: Path, key: str) -> np.ndarray | None:
    """Memory-map an uncompressed .npy member of a zip; None if it is compressed."""
    with zipfile.ZipFile(path) as zf:
        info = zf.getinfo(f"{key}.npy")
    if info.compress_type != zipfile.ZIP_STORED:
        return None
    with open(path, "rb") as f:
        f.seek(info.header_offset)
        local = f.read(30)
        if local[:4] != b"PK\x03\x04":
            return None
        name_len, extra_len = struct.unpack("<HH", local[26:30])
        f.seek(info.header_offset + 30 + name_len + extra_len)
        version = np.lib.format.read_magic(f)
        read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                       else np.lib.format.read_array_header_2_0)
        shape, fortran, dtype = read_header(f)
        if dtype.hasobject:
            raise ValueError("object arrays need pickle")
        offset = f.tell()
    if offset + math.prod(shape) * dtype.itemsize > os.path.getsize(path):
        raise OSError(f"{key} is cut short")
    return np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=shape,
                     order="F" if fortran else "C")


class RowFile:
    """Rows of an array stored in a file, read with pread when asked for.

    Unlike a memory map, what has been read does not stay in the process's resident
    memory, so a pass over a dataset of any size runs in the memory of one batch.
    """

    def __init__(self, array: np.memmap):
        self.path, self.offset = array.filename, array.offset
        self.shape, self.dtype = array.shape, array.dtype
        self.row_bytes = math.prod(self.shape[1:]) * self.dtype.itemsize

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, rows) -> np.ndarray:
        rows = np.arange(self.shape[0])[rows] if not isinstance(rows, np.ndarray) else rows
        out = np.empty((len(rows), *self.shape[1:]), dtype=self.dtype)
        flat = out.reshape(len(rows), -1).view(np.uint8)
        with open(self.path, "rb", buffering=0) as f:
            for i, row in enumerate(rows.tolist()):
                f.seek(self.offset + row * self.row_bytes)
                f.readinto(memoryview(flat[i]))
        return out


def row_reader(array: np.ndarray):
    """A :class:`RowFile` for a memory-mapped array, the array itself otherwise."""
    return RowFile(array) if isinstance(array, np.memmap) and array.flags.c_contiguous else array
