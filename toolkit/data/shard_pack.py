"""Pack SOURCE into a folder of TFRecord shards with the Beam pipeline: check the arguments, list
the files, run the pipeline (here, one worker process per core, or on a cluster), then turn what
it wrote into pack's report and the dataset's `dataset.json`, and put the folder in place whole.

The choices are pack's own (:mod:`toolkit.data.packer`): same files, labels and split as the
`.npz` for the same folder and seed. Apache Beam is the `scale` extra.
"""

from __future__ import annotations

import collections
import contextlib
import io
import json
import logging
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from .. import __version__
from ..core import dedupe, images
from ..core.errors import OptionError, ToolkitError, first_line
from ..core.text import timestamp
from . import listing, locations, malloc, shards
from .pack_out import Work, out_at, refuse_overlap
from .pack_source import source_at
from .packer import (
    MOVED_IN_REVIEW,
    PACKED,
    SURPLUS,
    NotEnoughImages,
    PackReport,
    check_settings,
    report_entry,
    review_warnings,
    short_of_images,
    write_report,
)

DIRECT = "DirectRunner"
#: The names that run the pipeline on this machine, on Beam's FnApiRunner (see :func:`_run`).
LOCAL_RUNNERS = (DIRECT, "direct", "FnApiRunner")


def pack_shards(source: str | os.PathLike, out: str | os.PathLike, *, per_class: int = 400,
                test_size: float = 0.2, size: int = 224, fit: str = "crop", seed: int = 42,
                checks: images.Checks = images.Checks(), threshold: int = dedupe.DEFAULT_THRESHOLD,
                allow_fewer: bool = False, force: bool = False, drop_suspects: bool = False,
                workers: int | None = None, runner: str = DIRECT,
                beam_options: Sequence[tuple[str, str]] = (),
                images_per_shard: int = shards.IMAGES_PER_SHARD,
                encoding: str = shards.ENCODING) -> PackReport:
    """Clean, dedupe, resize and split SOURCE's class folders into the folder `out` of TFRecord
    shards, as :func:`toolkit.data.packer.pack` does into an archive.

    `workers`: processes of Beam's direct runner [default: one per core]; 1 runs in this
    process. `runner` and `beam_options` ((KEY, VALUE) pairs, Beam's pipeline options) run it
    elsewhere: SOURCE and `out` must then be paths every worker reads and writes alike, or URLs
    (gs://bucket/folder, ...: :mod:`toolkit.data.locations`).
    `encoding`: the records' images as JPEG at quality 95 (the default: a quarter of PNG's bytes)
    or as PNG (lossless: the .npz's pixels exactly, at 12 times JPEG's encoding time).
    Writes `out/` whole (shards, dataset.json, report.txt, report.json) or nothing; raises
    :class:`NotEnoughImages` as pack does, before any shard is written.
    """
    source, out = locations.checked(source), locations.checked(out)
    refuse_overlap(source, out)
    check_settings(per_class, test_size, size, fit, threshold)
    target = out_at(out)
    target.check(force)
    if workers is not None and workers < 1:
        raise OptionError("workers", workers, "need at least one")
    if images_per_shard < 1:
        raise OptionError("images_per_shard", images_per_shard, "need at least one")
    if encoding not in shards.ENCODINGS:
        raise OptionError("encoding", encoding, f"choose {' or '.join(shards.ENCODINGS)}")
    options = pipeline_options(runner, workers or os.cpu_count() or 1, beam_options)
    if locations.is_url(source) or locations.is_url(out):
        locations.use_options(options)
    src = source_at(source)
    src.class_names()  # a missing or empty SOURCE is the first error
    made = src.decisions()
    judged = src.review("--drop-suspects") if drop_suspects else None
    with target.lock():
        work = target.start()
        try:
            class_names, count = listing.write(work.listing, src)
            settings = listing.Settings(tuple(class_names), size, fit, seed, test_size, per_class,
                                        allow_fewer, threshold, checks, images_per_shard, encoding)
            _run(options, settings, work, count, made, judged)
            parts = locations.glob(work.folder, "plan-*.jsonl")
            plan = _Plan([locations.local_copy(part) for part in parts], count)
            report = _report(source, target, class_names, per_class, allow_fewer, plan)
            written = list(_read_lines(work.folder, "shards"))
            _check_written(report, written)
            image = {"size": size, "fit": fit, "encoding": encoding,
                     **({"quality": shards.JPEG_QUALITY} if encoding == "jpeg" else {})}
            chosen = {"source": src.resolved(), "per_class": per_class, "test_size": test_size,
                      "seed": seed, "min_side": checks.min_side, "threshold": threshold,
                      "drop_suspects": drop_suspects, "allow_fewer": allow_fewer,
                      "images_per_shard": images_per_shard}
            shards.write_dataset(work.local, class_names, image, chosen,
                                 [shards.Shard(**w["shard"]) for w in written], __version__, timestamp())
            write_report(report, work.local / "report.txt", work.local / "report.json",
                         plan.entries(class_names))
            target.commit(work)
        finally:
            target.discard(work)
        return report


def pipeline_options(runner: str, workers: int, beam_options: Sequence[tuple[str, str]]):
    """Beam's options for this run: the direct runner with `workers` processes (one: in this
    process), or `runner` with the user's options, each checked to be one Beam knows."""
    PipelineOptions = locations.import_beam().options.pipeline_options.PipelineOptions
    flags = [f"--runner={runner}", "--default_sdk_harness_log_level=ERROR"]
    if runner in LOCAL_RUNNERS:
        flags += (["--direct_running_mode=multi_processing", f"--direct_num_workers={workers}"]
                  if workers > 1 else ["--direct_running_mode=in_memory"])
    mine = [f"--{key}={value}" for key, value in beam_options]
    parsers: list = []  # the parser of every option Beam knows, as it builds it
    PipelineOptions(flags).get_all_options(add_extra_args_fn=parsers.append)
    for flag in mine:
        try:
            with contextlib.redirect_stderr(io.StringIO()):  # argparse prints its usage there
                _, unknown = parsers[0].parse_known_args([flag])
        except SystemExit:  # argparse's way to say that a value is not of the option's type
            unknown = None
        if unknown or unknown is None:
            problem = "not one of Apache Beam's pipeline options" if unknown else "not a value it takes"
            raise OptionError("beam_option", flag.removeprefix("--"),
                              f"{problem} (`python -m apache_beam.examples.wordcount --help` lists them)")
    return PipelineOptions(flags + mine)


def _run(options, settings, work: Work, count: int, made: dict, judged) -> None:
    """Run the pipeline. Here, it runs on Beam's FnApiRunner, named: Beam's DirectRunner would
    hand it to the Prism runner instead, a program it downloads from GitHub on first use (a pack
    must not reach the internet, and `--workers` would then mean nothing). Beam's log lines and
    its workers' (which write to the standard error they inherit) go to a log file in the work
    folder (on this machine), not to the terminal. Its processes here get two malloc arenas each,
    and this one, when it runs the steps itself, hands its free memory back
    (:mod:`toolkit.data.malloc`)."""
    chosen = options.get_all_options()
    runner = chosen["runner"]
    local = runner in LOCAL_RUNNERS
    in_process = chosen["direct_running_mode"] != "multi_processing"
    with _stderr_to(work.log) if local else contextlib.nullcontext(), \
            malloc.returning_memory(trim=in_process) if local else contextlib.nullcontext():
        import apache_beam as beam
        from apache_beam.runners.portability.fn_api_runner import FnApiRunner

        from . import pipeline

        try:
            p = beam.Pipeline(runner=FnApiRunner() if local else None, options=options)
        except ValueError as e:  # an unknown runner
            raise OptionError("runner", runner, first_line(e)) from None
        with p:
            pipeline.build(p, settings, work.listing, count, work.folder, work.shards, made, judged)


@contextlib.contextmanager
def _stderr_to(path: Path):
    saved, log = os.dup(2), os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    quiet = logging.getLogger("apache_beam")
    level = quiet.level
    try:
        os.dup2(log, 2)
        quiet.setLevel(logging.ERROR)
        yield
    finally:
        quiet.setLevel(level)
        os.dup2(saved, 2)
        os.close(saved)
        os.close(log)


def _read_lines(work: str, prefix: str) -> Iterator[dict]:
    """The records a pipeline step wrote as JSON lines, one at a time."""
    for part in locations.glob(work, f"{prefix}-*.jsonl"):
        with locations.open_read(part) as f:
            for line in f:
                if line.strip():
                    yield json.loads(line)


class _Plan:
    """What the pipeline made of every file (lines in its order, in several files), read twice
    and never held: once for the report's counts, then line by line in pack's order of files
    into report.json, through an index of where each file's line is (12 bytes a file)."""

    def __init__(self, parts: list[str], count: int):
        self.parts, self.count = parts, count
        self.part = np.full(count, -1, dtype=np.int32)
        self.offset = np.zeros(count, dtype=np.int64)

    def lines(self) -> Iterator[dict]:
        """Every line once, in the order of the files, indexing each as it goes."""
        for number, part in enumerate(self.parts):
            with open(part, "rb") as f:
                for offset, line in _with_offsets(f):
                    r = json.loads(line)
                    self.part[r["i"]], self.offset[r["i"]] = number, offset
                    yield r

    def missing(self) -> int:
        return int(np.count_nonzero(self.part < 0))

    def entries(self, class_names: list[str]) -> Iterator[dict]:
        """Every file's report entry, in pack's order of files."""
        files = [open(part, "rb") for part in self.parts]
        try:
            for number, offset in zip(self.part.tolist(), self.offset.tolist()):
                files[number].seek(offset)
                r = json.loads(files[number].readline())
                yield report_entry(class_names[r["label"]], r["name"], r["status"], r["detail"],
                                   r.get("moved_from", ""), r.get("sha256"), r.get("width", 0),
                                   r.get("height", 0))
        finally:
            for f in files:
                f.close()


def _with_offsets(f) -> Iterator[tuple[int, bytes]]:
    offset = 0
    for line in f:
        if line.strip():
            yield offset, line
        offset += len(line)


def _report(source, out, class_names: list[str], per_class: int, allow_fewer: bool,
            plan: _Plan) -> PackReport:
    """Pack's report from the plan, counted (every file's entry is streamed from the plan into
    report.json); NotEnoughImages as pack raises it."""
    counted: collections.Counter = collections.Counter()  # (label, status or MOVED_IN_REVIEW)
    first: dict[tuple[int, str], tuple[int, int]] = {}  # where pack's count in file order meets it
    flags: list = []
    packed = {split: [0] * len(class_names) for split in shards.SPLITS}
    for r in plan.lines():
        seen = [(r["status"], 0)] + ([(MOVED_IN_REVIEW, 1)] if r.get("moved_from") else [])
        for key, after in seen:
            counted[r["label"], key] += 1
            first[r["label"], key] = min(first.get((r["label"], key), (r["i"], after)), (r["i"], after))
        if any(r.get("flag", ())):
            flags.append(tuple(r["flag"]))
        if r["status"] == PACKED:
            packed[r["split"]][r["label"]] += 1
    if plan.missing():
        raise RuntimeError(f"the pipeline's plan lacks {plan.missing()} of {plan.count} files")
    report = PackReport(str(source), class_names, [], str(out), per_class,
                        tallies=_tallies(len(class_names), counted, first))
    report.warnings += review_warnings(flags, str(source))
    problem = short_of_images(class_names, report.usable_counts(), per_class, allow_fewer)
    if problem:  # nothing is packed: what was to be is surplus, as pack says
        report.tallies = _tallies(len(class_names), counted, first, {PACKED: SURPLUS})
        raise NotEnoughImages(problem, report)
    report.train_counts, report.test_counts = packed["train"], packed["test"]
    return report


def _tallies(classes: int, counted: collections.Counter, first: dict, renamed: dict[str, str] | None = None
             ) -> list[collections.Counter]:
    """Each class's counts as pack counts its files in order (report.json keeps that order)."""
    merged: dict[tuple[int, str], tuple[int, tuple[int, int]]] = {}  # (label, key): (count, first)
    for (label, key), n in counted.items():
        new = (label, (renamed or {}).get(key, key))
        total, at = merged.get(new, (0, first[label, key]))
        merged[new] = (total + n, min(at, first[label, key]))
    tallies = [collections.Counter() for _ in range(classes)]
    for (label, key), (n, _) in sorted(merged.items(), key=lambda item: item[1][1]):
        tallies[label][key] = n
    return tallies


def _check_written(report: PackReport, written: list[dict]) -> None:
    changed = sorted(name for w in written for name in w["changed"])
    if changed:
        raise ToolkitError(f"{len(changed)} file(s) changed while they were packed ({changed[0]}"
                           f"{', ...' if len(changed) > 1 else ''}); pack again")
    packed = sum(report.train_counts) + sum(report.test_counts)
    if sum(w["shard"]["images"] for w in written) != packed:
        raise RuntimeError("the shards do not hold every packed image")
