"""`toolkit review DIR/` of a packed dataset: every record of both splits judged as review judges
a folder (:func:`toolkit.curate.reviewer.judge`), from the records' own pixels, streamed.

The records are what pack made (resized, encoded), not the source files, which may not be on this
machine: the embeddings are of those pixels, cached by the SHA-256 of the record's image bytes, as
the folder review's cache is keyed by a file's bytes (a record whose bytes equal a source file's
shares its entry, which is harmless: the same bytes are the same pixels), and review.html's
thumbnails are made from the records too. There is no gallery: a
person's decisions apply to the SOURCE folder the dataset was packed from.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import re
import time
from collections.abc import Collection, Iterator
from pathlib import Path

import numpy as np

from ..core import images
from ..core.errors import ToolkitError
from ..core.locks import holding
from ..curate.review_page import HTML_THUMBNAIL_SIDE, REVIEW_HTML, square_jpeg, write_html
from ..curate.reviewer import (
    DEFAULT_BACKBONE,
    DEFAULT_SIZE,
    FOLDS,
    HTML_FINE_PER_CLASS,
    check_class_sizes,
    judge,
)
from ..curate.verdicts import REVIEW_FILE, Review, write_review
from . import shards

#: A record's image is pack's square at the dataset's size: no rule of a crawl's applies to it.
RECORD_CHECKS = images.Checks(min_side=1)


def review_dataset(folder: str | os.PathLike, *, backbone: str = DEFAULT_BACKBONE,
                   weights: str = "imagenet", size: int = DEFAULT_SIZE,
                   cache_dir: str | os.PathLike | None = None, folds: int = FOLDS, seed: int = 0,
                   write: bool = True, progress: bool = False) -> Review:
    """Judge every record of the dataset in `folder` (both splits); write review.json and
    review.html into it. A verdict's `file` is the record's `path` (the file's name in SOURCE)
    and its `sha256` the source file's; the records are judged by class, then in the order
    :func:`toolkit.core.sources.list_files` walks a class folder: for a dataset of every usable
    image of SOURCE (no `--per-class` sampling) with plain names, the order a review of SOURCE
    judges its files, so that the same pixels get the same verdicts.

    Raises :class:`ToolkitError` (nothing written) for a folder that is no dataset, a damaged
    shard (every shard's checksum is checked first, as training does), a class with fewer than
    2 records, and weights that cannot be loaded.
    """
    dataset = shards.read_dataset(folder)
    lock = holding(Path(folder) / REVIEW_FILE, f"the review of {folder}",
                   read_only="copy the dataset, or call review_dataset(write=False)") if write else \
        contextlib.nullcontext()
    with lock:  # two reviews of one dataset would overwrite each other's verdicts
        clock = {"start": time.perf_counter()}
        rows = {split: list(shards.iter_features(dataset, split, ("label", "path", "sha256"), check=True))
                for split in shards.SPLITS}  # one read that checks every shard, before any is trusted
        labels = np.concatenate([shards.check_labels(dataset, split, [row[0] for row in rows[split]])
                                 for split in shards.SPLITS])
        paths = [record_name(row[1]) for split in shards.SPLITS for row in rows[split]]
        shas = [record_sha256(dataset, row[2]) for split in shards.SPLITS for row in rows[split]]
        del rows
        check_unique(dataset, paths)
        check_class_sizes(dataset.class_names, labels.tolist())
        clock["find"] = time.perf_counter()
        vectors = embed_records(dataset, backbone=backbone, weights=weights, size=size,
                                cache_dir=cache_dir, seed=seed, progress=progress)
        clock["embed"] = time.perf_counter()
        order = sorted(range(len(paths)), key=lambda i: (labels[i], walk_order(paths[i])))
        judged = judge(vectors[order], labels[order], dataset.class_names, [paths[i] for i in order],
                       folds=folds, seed=seed)
        for verdict, i in zip(judged, order):
            verdict.sha256 = shas[i]
        clock["judge"] = time.perf_counter()
        result = Review(str(folder), list(dataset.class_names), judged, backbone, weights)
        result.seconds = {"find": clock["find"] - clock["start"],
                          "embed": clock["embed"] - clock["find"],
                          "judge": clock["judge"] - clock["embed"]}
        if write:
            write_review(folder, result)
            write_html(result, [], Path(folder) / REVIEW_HTML, fine_per_class=HTML_FINE_PER_CLASS,
                       thumbnails=lambda names: record_thumbnails(dataset, names), gallery=False)
            result.seconds["write"] = time.perf_counter() - clock["judge"]
        result.seconds["total"] = time.perf_counter() - clock["start"]
        return result


def record_name(raw: bytes) -> str:
    """A record's `path` as a verdict's `file` and a thumbnail's key: as pack writes names
    (:func:`toolkit.core.sources.printable`), bytes that are no UTF-8 shown as \\xNN."""
    return bytes(raw).decode("utf-8", "backslashreplace")


def walk_order(path: str) -> tuple[str, ...]:
    """A sort key of a record's path that is :func:`toolkit.core.sources.list_files`' order
    (each folder's entries sorted by name, a folder walked where its name falls): `cls/sub/x`
    before `cls/sub-a`, which a plain string sort puts the other way round."""
    return tuple(path.split("/"))


def record_sha256(dataset: shards.Dataset, raw: bytes) -> str:
    """A record's `sha256` feature: 64 hex digits, or one error line."""
    value = bytes(raw).decode("ascii", "replace")
    if not re.fullmatch(r"[0-9a-f]{64}", value):
        raise ToolkitError(f"the shards of {dataset.folder} hold a record whose sha256 is {value[:80]!r}, "
                           "not 64 hex digits; pack again")
    return value


def check_unique(dataset: shards.Dataset, paths: list[str]) -> None:
    """review.json is keyed by file: two records of one `path` cannot both have a verdict."""
    seen: set[str] = set()
    for path in paths:
        if path in seen:
            raise ToolkitError(f"{dataset.folder} holds two records of {path}; a review needs each "
                               "record's path to be unique: pack again")
        seen.add(path)


def record_images(dataset: shards.Dataset) -> Iterator[tuple[str, bytes]]:
    """(name, image bytes) of every record, train then test, in dataset.json's order of shards:
    one record in memory at a time. The shards were checked by :func:`review_dataset` first."""
    for split in shards.SPLITS:
        for path, data in shards.iter_features(dataset, split, ("path", "image")):
            yield record_name(path), data


def embed_records(dataset: shards.Dataset, *, backbone: str, weights: str, size: int,
                  cache_dir: str | os.PathLike | None = None, seed: int = 0,
                  progress: bool = False) -> np.ndarray:
    """The pooled backbone's float32 (n, channels) embeddings of every record (train then test),
    of its pixels centre-cropped to `size`, by :func:`toolkit.models.embedder.embed_stream`: one
    read of the shards; only images the cache lacks (by their bytes' SHA-256) are decoded."""
    from ..models.embedder import embed_stream

    def pixels(name: str, data: bytes) -> np.ndarray:
        try:
            return images.decode_pixels(data, RECORD_CHECKS, size, "crop")[1]
        except images.Unusable as e:
            raise ToolkitError(f"the record of {name} in {dataset.folder} holds no usable image ({e}); "
                               "pack again") from None

    items = ((hashlib.sha256(data).hexdigest(), functools.partial(pixels, name, data))
             for name, data in record_images(dataset))
    return embed_stream(items, backbone=backbone, weights=weights, size=size, cache_dir=cache_dir,
                        seed=seed, total=sum(dataset.count(s) for s in shards.SPLITS), progress=progress)


def record_thumbnails(dataset: shards.Dataset, names: Collection[str]) -> dict[str, bytes]:
    """review.html's thumbnails of the records named `names`, from their image bytes (one more
    read of the shards; only the thumbnails are held). A record that cannot be made one is left
    out: the page shows it "(no longer readable)", as a folder review does a file."""
    made = {}
    for name, data in record_images(dataset):
        if name in names:
            with contextlib.suppress(images.Unusable):
                made[name] = square_jpeg(data, HTML_THUMBNAIL_SIDE, RECORD_CHECKS)
    return made
