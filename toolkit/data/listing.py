"""What every step of the sharded pack is given: the pack's settings, and the listing, every file
pack considers as a JSON line, numbered in pack's order, with an index of where each line starts,
so that a step reads only the lines it needs (a chunk to check, a shard's files to write) and no
step carries names or provenance along.
"""

from __future__ import annotations

import itertools
import json
import os
import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from ..collect import manifest
from ..core import images
from ..core.sources import class_folders, iter_inputs
from . import shards


@dataclass(frozen=True)
class Settings:
    """What every step needs to know of the pack."""

    class_names: tuple[str, ...]
    size: int
    fit: str
    seed: int
    test_size: float
    per_class: int
    allow_fewer: bool
    threshold: int
    checks: images.Checks
    images_per_shard: int
    encoding: str = shards.ENCODING


#: Each line's byte offset in the listing, as little-endian uint64, one per file in its order.
OFFSET = struct.Struct("<Q")


def index_path(listing: str | os.PathLike) -> Path:
    return Path(f"{listing}.index")


def write(path: Path, source: str | os.PathLike) -> tuple[list[str], int]:
    """Every file pack considers, one JSON line each, with the crawl's record of where it came
    from (one class's manifest in memory at a time), and the index of the lines; returns the
    classes and the count."""
    class_names, files = iter_inputs(source)
    folders = dict(class_folders(source))
    count = 0
    with open(path, "wb") as f, open(index_path(path), "wb") as index:
        for label, mine in itertools.groupby(files, key=lambda file: file.label):
            folder = folders[class_names[label]]
            crawled = manifest.read_entries(manifest.manifest_path(source, folder.name))
            entries = {e["file"]: e for e in crawled}
            for file in mine:
                entry = entries.get(file.path.relative_to(folder).as_posix(), {})
                index.write(OFFSET.pack(f.tell()))
                f.write(json.dumps({
                    "i": count, "label": label, "path": str(file.path), "name": file.name,
                    "status": file.status, "manifest_sha256": entry.get("sha256"),
                    "provenance": {k: entry.get(k) for k in shards.PROVENANCE}}).encode("ascii") + b"\n")
                count += 1
    return class_names, count


def read_range(path: str | os.PathLike, start: int, stop: int) -> Iterator[dict]:
    """The records of files number `start` to `stop` - 1, in order."""
    if start >= stop:
        return
    with open(path, "rb") as f:
        f.seek(_offsets(path, [start])[0])
        for _ in range(stop - start):
            yield json.loads(f.readline())


def read_some(path: str | os.PathLike, numbers: Iterable[int]) -> dict[int, dict]:
    """The records of the files of these numbers, by number."""
    numbers = sorted(set(numbers))
    found = {}
    with open(path, "rb") as f:
        for number, offset in zip(numbers, _offsets(path, numbers)):
            f.seek(offset)
            found[number] = json.loads(f.readline())
    return found


def _offsets(path: str | os.PathLike, numbers: list[int]) -> list[int]:
    with open(index_path(path), "rb") as index:
        found = []
        for number in numbers:
            index.seek(number * OFFSET.size)
            found.append(OFFSET.unpack(index.read(OFFSET.size))[0])
        return found
