"""The sharded pack as an Apache Beam pipeline: pack's steps as transforms, so that the same pack
runs on Beam's direct runner here or on a cluster (Dataflow, Flink, Spark).

    chunks of the listing -> decode and check -> near duplicates (exact ones among them) by band
    -> transitive groups -> dedupe's policy per group -> review's decisions -> per-class ranks
    combined into the split rule's cut-offs -> shard keys -> each shard written by one worker

Records are small: a usable file is about 100 bytes between steps
(:class:`toolkit.data.wire.Usable`: its number, label, name, hashes, size, rank), and the steps
hand each other one element a chunk of the listing (a batch of its usable files), not one a file; a
file that is not usable goes straight to the plan. Every file passes through two steps' memory
only: the decoded files wait there for the near duplicates, and the reviewed ones for the split
rule (each branch is reviewed on its own, and each plan is written where it is made, so that no
merge of branches holds them a third time). Where the records of every file meet (a band's hashes,
a shard's files), a combine packs them into bytes, fixed-size rows, so that no step holds an object
per image (the direct runner holds a shuffle in memory). A step that needs a file's path or
provenance reads its line of the listing by number (:mod:`toolkit.data.listing`); pixels never go
through a shuffle: the writer of a shard reads, decodes and encodes its files itself. The driver
(:mod:`toolkit.data.shard_pack`) reads what became of every file and the shards written.
"""

from __future__ import annotations

import collections
import heapq
import json
import struct
from collections.abc import Iterable, Iterator
from dataclasses import asdict
from pathlib import Path

import apache_beam as beam
import numpy as np

from ..core import dedupe, hamming, images
from ..core.sources import InputFile
from ..curate.verdicts import Judged
from . import listing, locations, records, shards, splits
from .listing import Settings
from .packer import PACKED, SURPLUS, review_file, short_of_images
from .wire import Usable, decode_batch, encode_batch

#: Files of the listing a worker checks in one go.
CHUNK = 100

#: A band's row: file number, perceptual hash.
BAND_ROW = struct.Struct("<qQ")
#: A rank's row (its name follows): rank hash, the name's length in bytes.
RANK_ROW = struct.Struct("<QI")
#: A shard's row: file number, rank, label, perceptual hash, width, height, SHA-256.
SHARD_ROW = struct.Struct("<qQqQqq32s")


def build(p: beam.Pipeline, settings: Settings, listing_path: str, count: int, work: str, data: str,
          made: dict, judged: Judged | None) -> None:
    """Add the pack's steps to `p`: read the `count` files of the listing at `listing_path`,
    write shards into `data`, and the plan and the shards written into `work`."""
    chunks = [(start, min(start + CHUNK, count)) for start in range(0, count, CHUNK)]
    checked = (p | "Chunks of the listing" >> beam.Create(chunks)
               | "Spread over the workers" >> beam.Reshuffle()
               | "Decode and check" >> beam.ParDo(Check(settings, listing_path)).with_outputs(
                   "unusable", main="usable"))
    groups = (checked.usable | "Band rows" >> beam.FlatMap(band_rows, settings.threshold)
              | "Hashes by band" >> beam.CombinePerKey(Rows())
              | "Near duplicates by band" >> beam.FlatMap(_near_pairs, settings.threshold)
              | "Transitive groups" >> beam.CombineGlobally(Components()))
    deduped = ((checked.usable | "Group members" >> beam.ParDo(
                    _Grouped(), beam.pvalue.AsSingleton(groups)).with_outputs("grouped", main="single")))
    decided = (deduped.grouped | "By group" >> beam.GroupByKey()
               | "Duplicate policy" >> beam.Map(_policy, settings.threshold))
    review = Review(settings.class_names, made, judged)  # in each branch: nothing holds them between
    reviewed = ((deduped.single | "Review decisions" >> beam.ParDo(review),
                 decided | "Review decisions of duplicates" >> beam.ParDo(review))
                | "Files" >> beam.Flatten())
    plans = (reviewed | "Ranks by class" >> beam.FlatMap(_ranks_by_class)
             | "Per-class caps" >> beam.CombinePerKey(SmallestRanks(settings.per_class))
             | "Split rule" >> beam.FlatMap(_plan, settings))
    counts = (reviewed | "Classes" >> beam.FlatMap(_class_counts)
              | "Count" >> beam.CombinePerKey(sum)
              | "Counts" >> beam.combiners.ToDict())
    gate = counts | "Enough images" >> beam.Map(_short, settings)
    placed = reviewed | "Place" >> beam.ParDo(Place(settings), beam.pvalue.AsDict(plans))
    (placed | "Plan as JSON" >> beam.Map(_plan_lines)
     | "Write plan" >> beam.io.WriteToText(f"{work}/plan-decoded", ".jsonl"))
    # (neither name starts the other's: a sink deletes what matches its own names before it commits)
    checked.unusable | "Write plan of the unusable" >> beam.io.WriteToText(f"{work}/plan-unusable", ".jsonl")
    every = (p | "Once" >> beam.Create([None])  # a shard no image falls on is written empty
             | "Every shard" >> beam.FlatMap(_every_shard, beam.pvalue.AsDict(plans), settings))
    ((placed | "Packed" >> beam.FlatMap(_shard_rows), every) | "With every shard" >> beam.Flatten()
     | "Rows by shard" >> beam.CombinePerKey(Rows())
     | "Write shards" >> beam.ParDo(WriteShard(settings, listing_path, data), beam.pvalue.AsSingleton(gate))
     | "Shards as JSON" >> beam.Map(json.dumps)
     | "Write shard list" >> beam.io.WriteToText(f"{work}/shards", ".jsonl"))


class Rows(beam.CombineFn):
    """Fixed-size rows (bytes) of a key, joined into one bytes: a few bytes an image where a
    group of records would hold an object each."""

    def create_accumulator(self) -> bytearray:
        return bytearray()

    def add_input(self, rows: bytearray, row: bytes) -> bytearray:
        rows += row
        return rows

    def merge_accumulators(self, accumulators: Iterable[bytes]) -> bytearray:
        return bytearray(b"".join(accumulators))

    def compact(self, rows: bytearray) -> bytes:
        return bytes(rows)

    def extract_output(self, rows: bytearray) -> bytes:
        return bytes(rows)


class SmallestRanks(Rows):
    """A class's `n` smallest ranks (hash, name), gathered as rows of bytes (hash, the name's
    length, the name: about 30 bytes a file, where Beam's Top holds an object or two per file)."""

    def __init__(self, n: int):
        self.n = n

    def extract_output(self, rows: bytearray) -> list[splits.Rank]:
        ranks, at = [], 0
        while at < len(rows):
            rank, length = RANK_ROW.unpack_from(rows, at)
            at += RANK_ROW.size + length
            ranks.append((rank, bytes(rows[at - length:at]).decode("utf-8")))
        return heapq.nsmallest(self.n, ranks)


# --------------------------------------------------------------------------- decode and check

class Check(beam.DoFn):
    """Decode and verify a chunk of the listing's files as pack does
    (:func:`toolkit.core.images.decode`); rank each usable one: the chunk's usable files are
    one batch. A file that is not usable is its line of the plan at once (the chunk's lines
    are one element, tagged `unusable`)."""

    def __init__(self, settings: Settings, listing_path: str):
        self.settings, self.listing_path = settings, listing_path

    def process(self, chunk: tuple[int, int]) -> Iterator:
        usable, unusable = [], []
        for record in listing.read_range(self.listing_path, *chunk):
            status, detail = record["status"], ""
            if not status:
                try:
                    info, _ = images.decode(locations.read_image(record["path"], self.settings.checks),
                                            self.settings.checks)
                except images.Unusable as e:
                    status, detail = e.reason, e.detail
                else:
                    rank, _ = splits.image_rank(self.settings.seed, info.sha256, record["name"])
                    usable.append(Usable(record["i"], record["label"], record["name"], info.sha256,
                                         info.phash, info.width, info.height, rank))
                    continue
            unusable.append(json.dumps({"i": record["i"], "label": record["label"], "name": record["name"],
                                        "status": status, "detail": detail}))
        if usable:
            yield encode_batch(usable)
        if unusable:
            yield beam.pvalue.TaggedOutput("unusable", "\n".join(unusable))


# --------------------------------------------------------------------------- duplicates

def band_plan(threshold: int) -> hamming.Bands | None:
    """The bands near duplicates are grouped by: core.hamming's plan for a million hashes (3
    bands of 21-22 bits at the default threshold); None: one group, every pair compared."""
    return hamming.plan_join(threshold, hamming.INDEX_SIZE)


def band_rows(batch: bytes, threshold: int) -> Iterator[tuple[int, bytes]]:
    """A batch's rows for each band (files of equal content, equal hashes, are found as pairs at
    distance 0)."""
    rows = b"".join(BAND_ROW.pack(f.i, f.phash) for f in decode_batch(batch))
    bands = band_plan(threshold)
    for band in range(len(bands.widths) if bands else 1):
        yield band, rows


def _near_pairs(group: tuple[int, bytes], threshold: int) -> Iterator[tuple[int, int]]:
    """The pairs one band finds (each band on its own worker) that join close files into groups:
    exact, checked on all 64 bits; k files of one hash are k - 1 pairs, from the first band."""
    band, rows = group
    both = np.frombuffer(rows, dtype=np.dtype([("i", "<i8"), ("phash", "<u8")]))
    ids, hashes = both["i"].astype(np.int64), both["phash"].astype(np.uint64)
    bands = band_plan(threshold)

    def search(values: np.ndarray) -> Iterable[np.ndarray]:  # every pair where no bands pay
        return hamming.all_pairs(values, threshold) if bands is None else [
            hamming.pairs_through_band(values, threshold, bands, band)]

    for pairs in hamming.joining(hashes, search, equal=band == 0):
        for i, j in np.sort(ids[pairs], axis=1).tolist():
            yield i, j


class Components(beam.CombineFn):
    """The transitive groups of the duplicate edges: {file number: its group's smallest number},
    for the files in some group (few: most files have no twin)."""

    def create_accumulator(self) -> list:
        return []

    def add_input(self, edges: list, edge: tuple[int, int]) -> list:
        edges.append(edge)
        return edges

    def merge_accumulators(self, accumulators: Iterable[list]) -> list:
        return [edge for edges in accumulators for edge in edges]

    def extract_output(self, edges: list) -> dict[int, int]:
        parent: dict[int, int] = {}

        def root(i: int) -> int:
            while parent.setdefault(i, i) != i:
                parent[i] = parent[parent[i]]
                i = parent[i]
            return i

        for i, j in edges:
            ri, rj = root(i), root(j)
            if ri != rj:
                parent[max(ri, rj)] = min(ri, rj)
        return {i: root(i) for i in parent}


class _Grouped(beam.DoFn):
    """Send the files of a group to their group (each tagged `grouped`); the batch's others on."""

    def process(self, batch: bytes, groups: dict[int, int]) -> Iterator:
        single = []
        for f in decode_batch(batch):
            group = groups.get(f.i)
            if group is None:
                single.append(f)
            else:
                yield beam.pvalue.TaggedOutput("grouped", (group, f.encode()))
        if single:
            yield encode_batch(single)


def _policy(group: tuple[int, Iterable[bytes]], threshold: int) -> bytes:
    """Dedupe's policy on one group, in the order pack numbers files (the same choices): the
    group as a batch."""
    members = sorted(map(Usable.decode, group[1]))
    candidates = [dedupe.Candidate(f.label, f.sha256, f.phash, f.width * f.height, f.name) for f in members]
    dropped = dedupe.find_duplicates(candidates, threshold)
    return encode_batch(f._replace(status=dropped[index].reason, detail=members[dropped[index].twin].name)
                        if index in dropped else f for index, f in enumerate(members))


# --------------------------------------------------------------------------- review, caps, split

class Review(beam.DoFn):
    """Review's decisions, applied to each file as pack applies them."""

    def __init__(self, class_names: tuple[str, ...], made: dict, judged: Judged | None):
        self.class_names, self.made, self.judged = list(class_names), made, judged

    def process(self, batch: bytes) -> Iterator[bytes]:
        yield encode_batch(map(self._review, decode_batch(batch)))

    def _review(self, u: Usable) -> Usable:
        if u.status:
            return u
        f = InputFile(u.label, Path(), u.name,
                      info=images.ImageInfo(u.sha256, u.phash, u.width, u.height, ""))
        flag = review_file(f, self.class_names, self.made, self.judged)
        return u._replace(status=f.status, label=f.label, moved_from=f.moved_from, flag=flag)


def _ranks_by_class(batch: bytes) -> Iterator[tuple[int, bytes]]:
    """The ranks of a batch's usable files by class, as :class:`SmallestRanks`' rows."""
    rows: dict[int, list[bytes]] = {}
    for f in decode_batch(batch):
        if not f.status:
            name = f.name.encode("utf-8")
            rows.setdefault(f.label, []).append(RANK_ROW.pack(f.rank, len(name)) + name)
    for label, ranks in rows.items():
        yield label, b"".join(ranks)


def _class_counts(batch: bytes) -> Iterator[tuple[int, int]]:
    """A batch's usable files by class: (label, count)."""
    yield from collections.Counter(f.label for f in decode_batch(batch) if not f.status).items()


def _plan(smallest: tuple[int, list], settings: Settings) -> Iterator[tuple[int, splits.ClassPlan]]:
    label, ranks = smallest
    if len(ranks) >= 2:  # a class with fewer fails the gate
        yield label, splits.class_plan(ranks, settings.per_class, settings.test_size)


def _short(counts: dict[int, int], settings: Settings) -> str:
    """Why the pack cannot be written ("" if it can): a class short of images."""
    usable = [counts.get(k, 0) for k in range(len(settings.class_names))]
    return short_of_images(list(settings.class_names), usable, settings.per_class,
                           settings.allow_fewer) or ""


class Place(beam.DoFn):
    """Where the split rule puts a usable file, and its shard: its rank's hash modulo the split's."""

    def __init__(self, settings: Settings):
        self.settings = settings

    def process(self, batch: bytes, plans: dict[int, splits.ClassPlan]) -> Iterator[bytes]:
        totals = _shard_totals(plans, self.settings)
        yield encode_batch(self._place(f, plans, totals) for f in decode_batch(batch))

    @staticmethod
    def _place(f: Usable, plans: dict[int, splits.ClassPlan], totals: dict[str, int]) -> Usable:
        if f.status:
            return f
        plan = plans.get(f.label)
        where = splits.place((f.rank, f.name), plan) if plan else splits.SURPLUS
        if where == splits.SURPLUS:
            return f._replace(status=SURPLUS)
        return f._replace(status=PACKED, split=where, shard=f.rank % totals[where], shards=totals[where])


def _shard_totals(plans: dict[int, splits.ClassPlan], settings: Settings) -> dict[str, int]:
    """Each split's shard count: the number of images a split gets is known from the class plans."""
    return {split: shards.shard_count(sum(getattr(p, split) for p in plans.values()),
                                      settings.images_per_shard) for split in shards.SPLITS}


def _every_shard(_, plans: dict[int, splits.ClassPlan], settings: Settings) -> Iterator[tuple]:
    """Every shard of every split, without rows: `-of-N` names N files, an empty one too."""
    for split, total in _shard_totals(plans, settings).items():
        yield from (((split, index, total), b"") for index in range(total))


def _plan_lines(batch: bytes) -> str:
    """A batch's lines of the plan, as one element."""
    return "\n".join(json.dumps({
        "i": f.i, "label": f.label, "name": f.name, "status": f.status, "detail": f.detail,
        "moved_from": f.moved_from, "flag": f.flag, "split": f.split, "sha256": f.sha256,
        "width": f.width, "height": f.height}) for f in decode_batch(batch))


def _shard_rows(batch: bytes) -> Iterator[tuple[tuple[str, int, int], bytes]]:
    """A batch's packed files by shard, as :class:`WriteShard`'s rows."""
    rows: dict[tuple[str, int, int], list[bytes]] = {}
    for f in decode_batch(batch):
        if f.status == PACKED:
            rows.setdefault((f.split, f.shard, f.shards), []).append(SHARD_ROW.pack(
                f.i, f.rank, f.label, f.phash, f.width, f.height, bytes.fromhex(f.sha256)))
    for shard, packed in rows.items():
        yield shard, b"".join(packed)


# --------------------------------------------------------------------------- shards

class WriteShard(beam.DoFn):
    """Write one shard: its files in rank order, each decoded at the pack's size (the pixels
    :func:`toolkit.core.images.decode` gives, checked to come from the bytes that were verified)
    and encoded, with its path and provenance from its line of the listing. Nothing is written
    when a class is short."""

    def __init__(self, settings: Settings, listing_path: str, data: str):
        self.settings, self.listing_path, self.data = settings, listing_path, data

    def process(self, group: tuple[tuple[str, int, int], bytes], short: str) -> Iterator[dict]:
        if short:
            return
        (split, index, total), rows = group
        members = list(SHARD_ROW.iter_unpack(rows))
        lines = listing.read_some(self.listing_path, (row[0] for row in members))
        members.sort(key=lambda row: (row[1], lines[row[0]]["name"]))  # rank order
        changed: list[str] = []
        written = shards.write_shard(self.data, split, index, total,
                                     self._records(split, members, lines, changed),
                                     len(self.settings.class_names))
        yield {"shard": asdict(written), "changed": changed}

    def _records(self, split: str, members: list[tuple], lines: dict[int, dict], changed: list[str]
                 ) -> Iterator[tuple[int, bytes]]:
        s = self.settings
        for i, _, label, phash, width, height, digest in members:
            line = lines[i]
            try:
                sha256, pixels = images.decode_pixels(locations.read_image(line["path"], s.checks), s.checks,
                                                      s.size, s.fit)
            except images.Unusable:
                sha256, pixels = None, None
            if sha256 != digest.hex():  # not the file that was checked
                changed.append(line["name"])
                continue
            provenance = line["provenance"] if line["manifest_sha256"] == sha256 else {}
            yield label, records.example({
                "image": shards.encode_image(pixels, s.encoding), "label": label,
                "class": s.class_names[label], "split": split, "path": line["name"],
                "sha256": sha256, "phash": f"{phash:016x}", "width": width,
                "height": height, **{k: str(provenance.get(k) or "") for k in shards.PROVENANCE}})
