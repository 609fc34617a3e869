"""Pack a folder of class folders into a clean, stratified train/test `.npz` archive, with a
report of what became of every file.

The archive's format is :mod:`toolkit.data.npz`'s; which files are usable and unique,
:mod:`toolkit.core.sources`'; the split, :mod:`toolkit.data.splits`'. Pack chooses among the
usable files, applies the decisions of `toolkit review`, and streams the chosen pixels from a
spill file into the archive.
"""

from __future__ import annotations

import collections
import os
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .. import __version__
from ..core import decisions, dedupe, images
from ..core.errors import OptionError, ToolkitError
from ..core.files import write_json_streamed, write_text
from ..core.locks import holding
from ..core.names import class_name_problem
from ..core.sources import HIDDEN, OUTSIDE, InputFile, PixelSink, class_folders, find_usable
from ..core.text import text_table, timestamp
from ..curate.verdicts import Judged, read_review
from .npz import ArchivePart, write_archive
from .splits import choose_and_split, image_rank

#: Status of an input file in the pack report, besides the reasons in images.REASONS.
PACKED, SURPLUS = "packed", "surplus"
DUPLICATE, LABEL_CONFLICT = "duplicate", "label_conflict"
DROPPED_IN_REVIEW, SUSPECT = "dropped_in_review", "suspect"
#: Not a status: a column of the report counting files a review moved into a class.
MOVED_IN_REVIEW = "moved_in_review"
STATUS_WORDS = {
    PACKED: "in the archive",
    SURPLUS: "usable, not picked (over --per-class)",
    HIDDEN: "hidden file, skipped",
    OUTSIDE: "a link out of its class folder, skipped",
    DUPLICATE: "duplicate of a kept image",
    LABEL_CONFLICT: "same picture under another class (label noise), dropped from both",
    DROPPED_IN_REVIEW: "dropped in review (decisions.jsonl)",
    SUSPECT: "undecided suspect of review.json, left out by --drop-suspects",
    **images.REASONS,
}


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
    #: counts() when `files` is not held: a sharded pack of any size tallies its plan on disk
    #: and streams every file's fate from it into report.json (`files` is then empty)
    tallies: list[collections.Counter] | None = None

    def counts(self) -> list[collections.Counter]:
        """Per class (after review's moves): files by status, and `moved_in_review`."""
        if self.tallies is not None:
            return self.tallies
        by_class = [collections.Counter() for _ in self.class_names]
        for f in self.files:
            by_class[f.label][f.status] += 1
            if f.moved_from:
                by_class[f.label][MOVED_IN_REVIEW] += 1
        return by_class

    def usable_counts(self) -> list[int]:
        """Per class: the usable images left after review (packed or surplus). Counted from
        what pack found in the files; a crawl's own count, from its manifests before any
        review, is collect's `usable_counts`."""
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
            "files": [report_entry(self.class_names[f.label], f.name, f.status, f.detail, f.moved_from,
                                   f.info.sha256 if f.info else None, f.info.width if f.info else 0,
                                   f.info.height if f.info else 0) for f in self.files],
        }


def report_entry(class_name: str, name: str, status: str, detail: str = "", moved_from: str = "",
                 sha256: str | None = None, width: int = 0, height: int = 0) -> dict:
    """A file's entry in report.json (its identity once it was decoded: `sha256` not None)."""
    return {"class": class_name, "path": name, "status": status, **({"detail": detail} if detail else {}),
            **({"moved_from": moved_from} if moved_from else {}),
            **({"sha256": sha256, "width": width, "height": height} if sha256 is not None else {})}


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
    for name, _ in class_folders(source):  # a missing or empty SOURCE is the first error
        problem = class_name_problem(name)
        if problem:  # crawl refuses such a name: labels.txt, the model card and terminals print it
            raise ToolkitError(f"class folder {name!r} {problem}; rename it to a plain name (as "
                               "`toolkit crawl` would make it) and pack again")
    made = decisions.read(source)
    judged = read_review(source, needed_for="--drop-suspects") if drop_suspects else None
    with holding(out, f"the archive {out}"):  # two packs into one archive would mix their files
        with tempfile.TemporaryFile(dir=out.parent, prefix=f".{out.name}.", suffix=".spill") as spill:
            spilled = _Spill(spill.fileno(), size * size * 3)
            class_names, files = find_usable(source, checks=checks, threshold=threshold,
                                             workers=workers, progress=progress,
                                             pixels=PixelSink(size, fit, spilled.put))
            report = PackReport(str(source), class_names, files, str(out), per_class)
            _apply_review(files, class_names, made, judged, report)
            train, test = _choose(report, per_class, test_size, seed, allow_fewer)
            meta = {"toolkit": __version__, "created": timestamp(), "source": str(Path(source).resolve()),
                    "size": size, "fit": fit, "seed": seed, "test_size": test_size, "per_class": per_class,
                    "min_side": checks.min_side, "threshold": threshold, "drop_suspects": drop_suspects}
            row_of = {id(f): i for i, f in enumerate(files)}

            def part(chosen: list[InputFile]) -> ArchivePart:
                return ArchivePart([f.label for f in chosen], [f.name for f in chosen],
                                   spilled.rows(row_of[id(f)] for f in chosen))

            write_archive(out, report.class_names, size, part(train), part(test), meta)

        stem = out.with_suffix("")
        write_report(report, Path(f"{stem}.report.txt"), Path(f"{stem}.report.json"))
        return report


def write_report(report: PackReport, text: Path, json: Path, entries: Iterable[dict] | None = None) -> None:
    """The report's two files: the table with its warnings, and every file's fate as JSON.
    `entries`: every file's :func:`report_entry` in pack's order, read as it is written, for a
    report that does not hold its files."""
    write_text(text, report.table() + "".join(f"\nwarning: {w}" for w in report.warnings) + "\n")
    whole = report.to_json()
    write_json_streamed(json, whole, "files", whole["files"] if entries is None else entries)


class _Spill:
    """Decoded pixels parked in a temporary file, a row per input file at row = its index,
    so that what an archive of any size holds never sits in memory at once."""

    def __init__(self, fd: int, row_bytes: int):
        self.fd, self.row_bytes = fd, row_bytes

    def put(self, index: int, pixels: np.ndarray) -> None:
        os.pwrite(self.fd, pixels.tobytes(), index * self.row_bytes)

    def rows(self, indices: Iterable[int]) -> Iterable[bytes]:
        for index in indices:
            yield os.pread(self.fd, self.row_bytes, index * self.row_bytes)


def _apply_review(files: list[InputFile], class_names: list[str],
                  made: dict[str, decisions.Decision], judged: Judged | None,
                  report: PackReport) -> None:
    """Leave out what review dropped and, given `judged`, its undecided suspects; relabel
    what it moved. Images the review did not see as they are now are packed, with a warning."""
    flags = [review_file(f, class_names, made, judged) for f in files]
    report.warnings += review_warnings(flags, report.source)


#: What :func:`review_file` noticed: nothing, an image packed unjudged, or a move to a lost class.
ReviewFlag = tuple[bool, str | None]


def review_file(f: InputFile, class_names: list[str], made: dict[str, decisions.Decision],
                judged: Judged | None) -> ReviewFlag:
    """Apply the review to one usable file (its status or label); returns (packed unjudged,
    the class it was moved to that is no longer a folder)."""
    if f.status:
        return False, None
    decision = made.get(f.name)
    if decision is None:
        if judged is None:
            return False, None
        if judged.unjudged(f.name, f.info.sha256):
            return True, None
        if f.name in judged.suspects:
            f.status = SUSPECT
    elif decision.action == decisions.DROP:
        f.status = DROPPED_IN_REVIEW
    elif decision.action == decisions.MOVE and decision.label not in class_names:
        return False, decision.label
    elif decision.action == decisions.MOVE:
        label = class_names.index(decision.label)
        if label != f.label:
            f.moved_from, f.label = class_names[f.label], label
    return False, None


def review_warnings(flags: Iterable[ReviewFlag], source: str) -> list[str]:
    """The report's warnings about the review, from every file's :func:`review_file` flag."""
    unjudged, lost_classes = 0, collections.Counter()
    for packed_unjudged, lost in flags:
        unjudged += packed_unjudged
        if lost is not None:
            lost_classes[lost] += 1
    warnings = []
    if lost_classes:
        warnings.append(
            f"{sum(lost_classes.values())} image(s) moved in review to a class that is no "
            f"longer a folder of SOURCE ({', '.join(sorted(lost_classes))}) are packed in "
            "their own class; run `toolkit review --serve` to decide again")
    if unjudged:
        warnings.append(
            f"{unjudged} usable image{'s' if unjudged > 1 else ''} came or changed after the "
            f"review and {'are' if unjudged > 1 else 'is'} packed unjudged: run `toolkit review "
            f"{source}` again, then pack")
    return warnings


def _check_pack_arguments(out: Path, per_class: int, test_size: float, size: int, fit: str,
                          threshold: int, force: bool) -> None:
    if out.suffix != ".npz":
        raise OptionError("out", str(out), "the archive name must end in .npz (a folder of shards: "
                          "--format tfrecord)")
    if not out.parent.is_dir():
        raise OptionError("out", str(out), f"folder {out.parent} does not exist; create it first")
    if out.exists() and not force:
        raise ToolkitError(f"{out} already exists; pass --force to replace it")
    check_settings(per_class, test_size, size, fit, threshold)


def check_settings(per_class: int, test_size: float, size: int, fit: str, threshold: int) -> None:
    """The settings every pack checks, whatever it writes."""
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


def _choose(report: PackReport, per_class: int, test_size: float, seed: int, allow_fewer: bool
            ) -> tuple[list[InputFile], list[InputFile]]:
    """Split the usable files by pack's one rule (:mod:`toolkit.data.splits`): (train, test),
    each in rank order; every file not picked is surplus."""
    usable = [f for f in report.files if not f.status]
    for f in usable:
        f.status = SURPLUS
    problem = short_of_images(report.class_names, report.usable_counts(), per_class, allow_fewer)
    if problem:
        raise NotEnoughImages(problem, report)
    ranks = [image_rank(seed, f.info.sha256, f.name) for f in usable]
    train, test, _ = choose_and_split(usable, ranks, per_class, test_size)
    for f in (*train, *test):
        f.status = PACKED
    report.train_counts = [sum(f.label == k for f in train) for k in range(len(report.class_names))]
    report.test_counts = [sum(f.label == k for f in test) for k in range(len(report.class_names))]
    return train, test


def short_of_images(class_names: list[str], usable: list[int], per_class: int,
                    allow_fewer: bool) -> str | None:
    """Why these usable counts per class cannot be packed (NotEnoughImages' message), or None."""
    short = [(name, n) for name, n in zip(class_names, usable) if n < per_class]
    if short and not allow_fewer:
        counts = ", ".join(f"{name} {n}" for name, n in short)
        return (f"too few usable images for --per-class {per_class}: {counts}; add images (or "
                "`toolkit crawl` again to top up), lower --per-class, or pass --allow-fewer")
    empty = [name for name, n in zip(class_names, usable) if n < 2]
    if empty:
        return (f"class {', '.join(empty)} has fewer than 2 usable images; a class needs one "
                "to train and one to test")
    return None
