"""A usable file as the sharded pack's pipeline steps carry it (:class:`Usable`), its bytes
between them, and a batch of them as one element (:func:`encode_batch`).

Beam's local runner holds what a step hands the next in memory (the pack's memory grew about 2 KB
a file over its steps before this encoding: docs/scale.md), so the bytes a file costs between
steps are what the pack's memory grows by with the number of images. Beam's own encoding of the
tuple is 170 bytes, and more where a 64-bit hash does not fit its signed varint (it falls back to
pickle); :meth:`Usable.encode` is about 100: fixed-size fields, then the strings, each after its
length. The steps hand each other batches of a chunk's files, not one element a file: the local
runner's cost per element (its wrappers, its lists) is then spread over a hundred files.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from typing import NamedTuple

#: number, label, perceptual hash, width, height, rank, SHA-256, shard, shards, review's flag
#: (packed unjudged, whether it names a lost class)
_FIXED = struct.Struct("<qiQIIQ32sII??")
_TEXTS = ("name", "status", "detail", "moved_from", "split")


class Usable(NamedTuple):
    """A usable file: its number in the listing, label, name, hashes, size and rank (the hash
    of :func:`toolkit.data.splits.image_rank`; its name is the rank's tie-break), then what
    the steps decide: status, the duplicate it lost to or the problem (`detail`), the class
    review moved it from, review's flag (:func:`toolkit.data.packer.review_file`), and where
    it is packed."""

    i: int
    label: int
    name: str
    sha256: str
    phash: int
    width: int
    height: int
    rank: int
    status: str = ""
    detail: str = ""
    moved_from: str = ""
    flag: tuple = (False, None)
    split: str = ""
    shard: int = 0
    shards: int = 0

    def encode(self) -> bytes:
        packed_unjudged, lost = self.flag
        parts = [_FIXED.pack(self.i, self.label, self.phash, self.width, self.height, self.rank,
                             bytes.fromhex(self.sha256), self.shard, self.shards, packed_unjudged,
                             lost is not None)]
        for text in [getattr(self, name) for name in _TEXTS] + [lost or ""]:
            data = text.encode("utf-8", "surrogateescape")
            parts.append(_varint(len(data)) + data)
        return b"".join(parts)

    @classmethod
    def decode(cls, data: bytes) -> Usable:
        (i, label, phash, width, height, rank, digest, shard, shards, packed_unjudged,
         names_lost) = _FIXED.unpack_from(data)
        at, texts = _FIXED.size, []
        for _ in range(len(_TEXTS) + 1):
            length, at = _read_varint(data, at)
            texts.append(data[at:at + length].decode("utf-8", "surrogateescape"))
            at += length
        name, status, detail, moved_from, split, lost = texts
        return cls(i, label, name, digest.hex(), phash, width, height, rank, status, detail, moved_from,
                   (packed_unjudged, lost if names_lost else None), split, shard, shards)


def encode_batch(files: Iterable[Usable]) -> bytes:
    """Files as one element: each file's bytes after their length."""
    parts = []
    for f in files:
        data = f.encode()
        parts.append(_varint(len(data)) + data)
    return b"".join(parts)


def decode_batch(data: bytes) -> list[Usable]:
    files, at = [], 0
    while at < len(data):
        length, at = _read_varint(data, at)
        files.append(Usable.decode(data[at:at + length]))
        at += length
    return files


def _varint(n: int) -> bytes:
    """`n` in 7-bit groups, low first, the high bit set on all but the last."""
    out = bytearray()
    while n >= 0x80:
        out.append(0x80 | (n & 0x7F))
        n >>= 7
    out.append(n)
    return bytes(out)


def _read_varint(data: bytes, at: int) -> tuple[int, int]:
    n, shift = 0, 0
    while data[at] & 0x80:
        n |= (data[at] & 0x7F) << shift
        shift += 7
        at += 1
    return n | (data[at] << shift), at + 1
