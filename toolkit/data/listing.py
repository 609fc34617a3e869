"""What every step of the sharded pack is given: the pack's settings, and the listing, every file
pack considers as a JSON line, numbered in pack's order, with an index of where each line starts,
so that a step reads only the lines it needs (a chunk to check, a shard's files to write) and no
step carries names or provenance along.
"""

from __future__ import annotations

import itertools
import json
import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from ..core import images
from . import locations, shards
from .pack_source import LocalSource, UrlSource


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


def index_path(listing: str) -> str:
    return f"{listing}.index"


def write(path: str, source: LocalSource | UrlSource) -> tuple[list[str], int]:
    """Every file pack considers, one JSON line each, with the crawl's record of where it came
    from (one class's manifest in memory at a time), and the index of the lines; returns the
    classes and the count. `path` is a path or a URL (:mod:`toolkit.data.locations`)."""
    class_names, files = source.inputs()
    count = offset = 0
    with (locations.writing(path, atomic=False) as f,
          locations.writing(index_path(path), atomic=False) as index):
        for label, mine in itertools.groupby(files, key=lambda file: file.label):
            entries = {e["file"]: e for e in source.manifest(label)}
            for file in mine:
                entry = entries.get(file.in_class, {})
                index.write(OFFSET.pack(offset))
                line = json.dumps({
                    "i": count, "label": label, "path": file.path, "name": file.name,
                    "status": file.status, "manifest_sha256": entry.get("sha256"),
                    "provenance": {k: entry.get(k) for k in shards.PROVENANCE}}).encode("ascii") + b"\n"
                f.write(line)
                offset += len(line)
                count += 1
    return class_names, count


def read_range(path: str, start: int, stop: int) -> Iterator[dict]:
    """The records of files number `start` to `stop` - 1, in order."""
    if start >= stop:
        return
    with open(locations.local_copy(path), "rb") as f:
        f.seek(_offsets(path, [start])[0])
        for _ in range(stop - start):
            yield json.loads(f.readline())


def read_some(path: str, numbers: Iterable[int]) -> dict[int, dict]:
    """The records of the files of these numbers, by number."""
    numbers = sorted(set(numbers))
    found = {}
    with open(locations.local_copy(path), "rb") as f:
        for number, offset in zip(numbers, _offsets(path, numbers)):
            f.seek(offset)
            found[number] = json.loads(f.readline())
    return found


def _offsets(path: str, numbers: list[int]) -> list[int]:
    with open(locations.local_copy(index_path(path)), "rb") as index:
        found = []
        for number in numbers:
            index.seek(number * OFFSET.size)
            found.append(OFFSET.unpack(index.read(OFFSET.size))[0])
        return found
