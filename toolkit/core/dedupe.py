"""Exact and near duplicates by content hash and perceptual-hash distance.

One policy, used by `pack` on a folder and by `crawl` while it downloads:
- pictures whose perceptual hashes differ in at most `threshold` bits (or whose bytes are
  identical) are the same picture;
- the same picture under two labels is label noise: every copy is dropped;
- within one label, the largest copy is kept and the others are dropped.

Grouping is transitive (connected components), so what survives holds no near-duplicate
pair at all, and none can straddle a train/test split.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from . import hamming

#: Bits of the 64-bit perceptual hash in which two copies of one picture may differ.
#: Resized, recompressed, recoloured or slightly cropped copies differ in 0-8 bits;
#: on 1,350 real flower photos, the closest distinct pictures differ in 12.
DEFAULT_THRESHOLD = 8


@dataclass(frozen=True)
class Candidate:
    """What the policy needs to know of one image."""

    label: int
    sha256: str
    phash: int
    pixels: int
    key: str  # a stable name (a path) that breaks ties


@dataclass(frozen=True)
class Dropped:
    """Why a candidate was dropped: `duplicate` (of `twin`) or `label_conflict` (with `twin`)."""

    reason: str
    twin: int


def near_pairs(hashes: np.ndarray, threshold: int, chunk: int = 512) -> Iterator[tuple[int, int]]:
    """Yield index pairs (i < j) whose hashes differ in at most `threshold` bits, sorted by
    (i, j). Linear in the number of hashes at the usual thresholds (see toolkit.core.hamming);
    `chunk` rows at a time where comparing all pairs is cheaper."""
    for pairs in hamming.close_pairs(np.asarray(hashes, dtype=np.uint64), threshold, chunk):
        for i, j in pairs.tolist():
            yield i, j


def find_duplicates(candidates: Sequence[Candidate], threshold: int = DEFAULT_THRESHOLD
                    ) -> dict[int, Dropped]:
    """Apply the policy; return {index: Dropped} for every candidate that must go."""
    parent = list(range(len(candidates)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    def union(i: int, j: int) -> None:
        ri, rj = root(i), root(j)
        if ri != rj:
            parent[max(ri, rj)] = min(ri, rj)

    first_with_sha: dict[str, int] = {}
    for i, c in enumerate(candidates):
        union(i, first_with_sha.setdefault(c.sha256, i))
    for pairs in hamming.joining_pairs(np.array([c.phash for c in candidates], dtype=np.uint64), threshold):
        for i, j in pairs.tolist():
            union(i, j)

    groups: dict[int, list[int]] = {}
    for i in range(len(candidates)):
        groups.setdefault(root(i), []).append(i)

    dropped: dict[int, Dropped] = {}
    for members in groups.values():
        if len(members) == 1:
            continue
        best = min(members, key=lambda i: (-candidates[i].pixels, candidates[i].key))
        conflict = len({candidates[i].label for i in members}) > 1
        for i in members:
            if conflict:
                twin = next(j for j in members if candidates[j].label != candidates[i].label)
                dropped[i] = Dropped("label_conflict", twin)
            elif i != best:
                dropped[i] = Dropped("duplicate", best)
    return dropped


class HashIndex:
    """Incremental lookup of the images kept so far, for deciding one download at a time:
    an add costs O(bands) and a match O(probes), however many images are kept."""

    def __init__(self, threshold: int = DEFAULT_THRESHOLD):
        self.threshold = threshold
        self._owner_by_sha: dict[str, str] = {}
        self._owners: list[str] = []  # by position in the index (removed ones stay, unused)
        self._near = hamming.Index(threshold)

    def __len__(self) -> int:
        return len(self._near)

    def match(self, sha256: str, phash: int) -> str | None:
        """The owner (a label) of a kept image that this one duplicates (the first kept of
        several), or None."""
        if sha256 in self._owner_by_sha:
            return self._owner_by_sha[sha256]
        close = self._near.within(phash)
        return self._owners[int(close[0])] if close.size else None

    def add(self, sha256: str, phash: int, owner: str) -> None:
        self._owner_by_sha.setdefault(sha256, owner)
        self._near.add(phash)
        self._owners.append(owner)

    def remove(self, sha256: str, phash: int) -> None:
        """Undo the most recent :meth:`add` of this image (a write that failed)."""
        same = self._near.equal(phash)
        if same.size:
            self._near.discard(int(same[-1]))
        self._owner_by_sha.pop(sha256, None)
