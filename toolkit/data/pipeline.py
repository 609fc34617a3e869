"""The sharded pack as an Apache Beam pipeline: pack's steps as transforms, so that the same pack
runs on Beam's direct runner here or on a cluster (Dataflow, Flink, Spark).

    listing -> decode and check -> exact duplicates by sha256 key, near duplicates by band keys
    -> transitive groups -> dedupe's policy per group -> review's decisions -> per-class ranks
    combined into the split rule's cut-offs -> shard keys -> each shard written by one worker

Records are small dicts (a file's name, label, hashes); pixels never go through a shuffle: the
writer of a shard reads, decodes and encodes its files itself. What became of every file (the
plan) and the shards written land in files that the driver reads (:mod:`toolkit.data.shard_pack`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator
from dataclasses import asdict
from pathlib import Path

import apache_beam as beam
import numpy as np

from ..core import dedupe, hamming, images
from ..core.sources import InputFile
from ..curate.verdicts import Judged
from . import shards, splits
from .packer import PACKED, SURPLUS, review_file, short_of_images
from .shard_pack import Settings


def build(p: beam.Pipeline, settings: Settings, listing: str, work: str, data: str,
          made: dict, judged: Judged | None) -> None:
    """Add the pack's steps to `p`: read the `listing` (JSON lines), write shards into `data`,
    and the plan and the shards written into `work`."""
    checked = (p | "Read listing" >> beam.io.ReadFromText(listing) | "Parse" >> beam.Map(_parse)
               | "Spread over the workers" >> beam.Reshuffle()  # the listing is one small file
               | "Decode and check" >> beam.ParDo(Check(settings)))
    usable = checked | "Usable" >> beam.Filter(_usable)
    exact = (usable | "Key by sha256" >> beam.Map(lambda r: (r["sha256"], r["i"]))
             | "Exact duplicates by key" >> beam.GroupByKey() | "Chain" >> beam.FlatMap(_chain))
    near = (usable | "Band keys" >> beam.FlatMap(_band_keys, settings.threshold)
            | "Near duplicates by band keys" >> beam.GroupByKey()
            | "Pairs by popcount" >> beam.FlatMap(_near_pairs, settings.threshold))
    groups = ((exact, near) | "Edges" >> beam.Flatten()
              | "Transitive groups" >> beam.CombineGlobally(Components()))
    deduped = ((checked | "Group members" >> beam.ParDo(
                    _Grouped(), beam.pvalue.AsSingleton(groups)).with_outputs("grouped", main="single")))
    decided = (deduped.grouped | "By group" >> beam.GroupByKey()
               | "Duplicate policy" >> beam.FlatMap(_policy, settings.threshold))
    reviewed = ((deduped.single, decided) | "Files" >> beam.Flatten()
                | "Review decisions" >> beam.ParDo(Review(settings.class_names, made, judged)))
    picked = reviewed | "Usable after review" >> beam.Filter(_usable)
    plans = (picked | "Rank by class" >> beam.Map(lambda r: (r["label"], r["rank"]))
             | "Per-class caps" >> beam.combiners.Top.SmallestPerKey(settings.per_class)
             | "Split rule" >> beam.FlatMap(_plan, settings))
    counts = (picked | "Class" >> beam.Map(lambda r: (r["label"], 1)) | "Count" >> beam.CombinePerKey(sum)
              | "Counts" >> beam.combiners.ToDict())
    gate = counts | "Enough images" >> beam.Map(_short, settings)
    placed = reviewed | "Place" >> beam.ParDo(Place(settings), beam.pvalue.AsDict(plans))
    (placed | "Plan as JSON" >> beam.Map(_plan_line)
     | "Write plan" >> beam.io.WriteToText(f"{work}/plan", ".jsonl"))
    (placed | "Packed" >> beam.Filter(lambda r: r["status"] == PACKED)
     | "Key by shard" >> beam.Map(lambda r: ((r["split"], r["shard"], r["shards"]), r))
     | "By shard" >> beam.GroupByKey()
     | "Write shards" >> beam.ParDo(WriteShard(settings, data), beam.pvalue.AsSingleton(gate))
     | "Shards as JSON" >> beam.Map(json.dumps)
     | "Write shard list" >> beam.io.WriteToText(f"{work}/shards", ".jsonl"))


def _parse(line: str) -> dict:
    """A line of the listing; its path as bytes, which any file name is (Beam's coders write
    text as UTF-8, which a name that is not UTF-8 is not)."""
    record = json.loads(line)
    record["path"] = os.fsencode(record["path"])
    return record


def _usable(record: dict) -> bool:
    return not record["status"]


# --------------------------------------------------------------------------- decode and check

class Check(beam.DoFn):
    """Decode and verify a file as pack does (:func:`toolkit.core.images.decode`); rank it."""

    def __init__(self, settings: Settings):
        self.settings = settings

    def process(self, record: dict) -> Iterator[dict]:
        record = {**record, "detail": "", "moved_from": "", "flag": (False, None)}
        if not record["status"]:
            try:
                info, _ = images.decode(images.read_file(record["path"], self.settings.checks),
                                        self.settings.checks)
            except images.Unusable as e:
                record["status"], record["detail"] = e.reason, e.detail
            else:
                record.update(sha256=info.sha256, phash=info.phash, width=info.width,
                              height=info.height, format=info.format,
                              rank=splits.image_rank(self.settings.seed, info.sha256, record["name"]))
        yield record


# --------------------------------------------------------------------------- duplicates

def _chain(group: tuple[str, Iterable[int]]) -> Iterator[tuple[int, int]]:
    """Files of equal content, as edges from the first of them."""
    ids = sorted(group[1])
    for other in ids[1:]:
        yield ids[0], other


def band_plan(threshold: int) -> hamming.Bands | None:
    """The bands near duplicates are grouped by: core.hamming's plan for a million hashes (3
    bands of 21-22 bits at the default threshold); None: one group, every pair compared."""
    return hamming.plan_join(threshold, hamming.INDEX_SIZE)


def _band_keys(record: dict, threshold: int) -> Iterator[tuple[int, tuple[int, int]]]:
    bands = band_plan(threshold)
    for band in range(len(bands.widths) if bands else 1):
        yield band, (record["i"], record["phash"])


def _near_pairs(group: tuple[int, Iterable[tuple[int, int]]], threshold: int
                ) -> Iterator[tuple[int, int]]:
    """The close pairs one band finds (each band on its own worker): exact, checked on all 64 bits."""
    band, members = group
    ids, hashes = zip(*members)
    ids, hashes = np.array(ids, dtype=np.int64), np.array(hashes, dtype=np.uint64)
    bands = band_plan(threshold)
    if bands is None:
        found = np.concatenate([np.empty((0, 2), dtype=np.int64), *hamming.all_pairs(hashes, threshold)])
    else:
        found = hamming.pairs_through_band(hashes, threshold, bands, band)
    for i, j in np.sort(ids[found], axis=1).tolist():
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
    """Send the files of a group to their group (tagged `grouped`); all others on."""

    def process(self, record: dict, groups: dict[int, int]) -> Iterator:
        group = groups.get(record["i"]) if not record["status"] else None
        if group is None:
            yield record
        else:
            yield beam.pvalue.TaggedOutput("grouped", (group, record))


def _policy(group: tuple[int, Iterable[dict]], threshold: int) -> Iterator[dict]:
    """Dedupe's policy on one group, in the order pack numbers files: the same choices."""
    members = sorted(group[1], key=lambda r: r["i"])
    candidates = [dedupe.Candidate(r["label"], r["sha256"], r["phash"], r["width"] * r["height"],
                                   r["name"]) for r in members]
    dropped = dedupe.find_duplicates(candidates, threshold)
    for index, record in enumerate(members):
        if index in dropped:
            record = {**record, "status": dropped[index].reason,
                      "detail": members[dropped[index].twin]["name"]}
        yield record


# --------------------------------------------------------------------------- review, caps, split

class Review(beam.DoFn):
    """Review's decisions, applied to each file as pack applies them."""

    def __init__(self, class_names: tuple[str, ...], made: dict, judged: Judged | None):
        self.class_names, self.made, self.judged = list(class_names), made, judged

    def process(self, record: dict) -> Iterator[dict]:
        if record["status"]:
            yield record
            return
        f = InputFile(record["label"], Path(os.fsdecode(record["path"])), record["name"],
                      info=images.ImageInfo(record["sha256"], record["phash"], record["width"],
                                            record["height"], record["format"]))
        flag = review_file(f, self.class_names, self.made, self.judged)
        yield {**record, "status": f.status, "label": f.label, "moved_from": f.moved_from, "flag": flag}


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
    """Where the split rule puts a usable file, and its shard: its rank's hash modulo the
    split's shard count (the number of images a split gets is known from the class plans)."""

    def __init__(self, settings: Settings):
        self.settings = settings

    def process(self, record: dict, plans: dict[int, splits.ClassPlan]) -> Iterator[dict]:
        if record["status"]:
            yield record
            return
        plan = plans.get(record["label"])
        where = splits.place(record["rank"], plan) if plan else splits.SURPLUS
        if where == splits.SURPLUS:
            yield {**record, "status": SURPLUS}
            return
        images_in = sum(getattr(p, where) for p in plans.values())
        total = shards.shard_count(images_in, self.settings.images_per_shard)
        yield {**record, "status": PACKED, "split": where, "shard": record["rank"][0] % total,
               "shards": total}


def _plan_line(record: dict) -> str:
    keep = ("i", "label", "name", "path", "status", "detail", "moved_from", "flag", "split",
            "sha256", "phash", "width", "height", "format")
    return json.dumps({**{k: record[k] for k in keep if k in record}, "path": os.fsdecode(record["path"])})


# --------------------------------------------------------------------------- shards

class WriteShard(beam.DoFn):
    """Write one shard: its files in rank order, each decoded at the pack's size (the pixels
    :func:`toolkit.core.images.decode` gives, checked to come from the bytes that were verified)
    and encoded. Nothing is written when a class is short."""

    def __init__(self, settings: Settings, data: str):
        self.settings, self.data = settings, data

    def process(self, group: tuple[tuple[str, int, int], Iterable[dict]], short: str) -> Iterator[dict]:
        if short:
            return
        (split, index, total), members = group
        members = sorted(members, key=lambda r: r["rank"])
        changed: list[str] = []
        written = shards.write_shard(Path(self.data), split, index, total,
                                     self._records(members, changed), len(self.settings.class_names))
        yield {"shard": asdict(written), "changed": changed}

    def _records(self, members: list[dict], changed: list[str]) -> Iterator[tuple[int, bytes]]:
        s = self.settings
        for r in members:
            try:
                sha256, pixels = images.decode_pixels(images.read_file(r["path"], s.checks), s.checks,
                                                      s.size, s.fit)
            except images.Unusable:
                sha256, pixels = None, None
            if sha256 != r["sha256"]:  # not the file that was checked
                changed.append(r["name"])
                continue
            provenance = r["provenance"] if r.get("manifest_sha256") == sha256 else {}
            yield r["label"], shards.example({
                "image": shards.encode_image(pixels, s.encoding), "label": r["label"],
                "class": s.class_names[r["label"]], "split": r["split"], "path": r["name"],
                "sha256": sha256, "phash": f"{r['phash']:016x}", "width": r["width"],
                "height": r["height"], **{k: str(provenance.get(k) or "") for k in shards.PROVENANCE}})
