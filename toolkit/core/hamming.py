"""Hamming-radius search over 64-bit hashes in time linear in their number (multi-index hashing).

Cut the 64 bits into bands and give band i a radius r_i with sum(r_i + 1) > threshold: two
hashes within `threshold` bits then differ, by pigeonhole, in at most r_i bits of some band i.
So the hashes whose band i lies within r_i bits of a query's are the only candidates, and
each candidate is verified by its exact popcount: the result is the same as comparing all
pairs, never an approximation. Bands are long (about 21 bits for the default threshold of 8)
so that a bucket is nearly empty; the price is probing each band's neighbour keys
(1 + 21 + 210 = 232 for a radius of 2). A cost model picks the bands for a threshold and a
number of hashes, or comparing all pairs where that is cheaper (few hashes, large thresholds).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

BITS = 64
#: Bands up to this many bits keep their buckets in a direct-address table (2**bits entries);
#: longer ones in a sorted array (a batch) or a dict (the incremental index).
TABLE_BITS = 24
#: Neighbour keys probed together in one batch: len(flips) * len(hashes) stays about this.
BATCH = 1 << 20

# Measured costs in nanoseconds of CPU time (scripts/bench_dedupe.py's machine), for the
# planners only: they choose the fastest exact plan and never change a result.
_BUILD_NS = 100.0         # one hash sorted into one band
_TABLE_NS = 5.0           # one entry of a band's direct-address table, built
_PROBE_NS = 13.0          # one neighbour key of one hash looked up in a direct-address table
_SORTED_PROBE_NS = 150.0  # the same in a sorted array (binary search)
_CANDIDATE_NS = 45.0      # one candidate pair expanded and verified
_CALL_NS = 50_000.0       # one batch of numpy calls
_PAIR_NS = 7.0            # one pair compared by the all-pairs scan
_QUERY_BAND_NS = 15_000.0  # one band of one query: its numpy calls
_QUERY_PROBE_NS = 10.0    # one neighbour key of one query
_SCAN_NS = 3.0            # one stored hash compared by a query's scan
#: The incremental index is planned for this many hashes (a crawl of a million images).
INDEX_SIZE = 1 << 20


def _key_type(width: int) -> type:
    return np.int64 if width < BITS else np.uint64


def _flip_count(width: int, radius: int) -> int:
    """How many band values lie within `radius` bits of one value of `width` bits."""
    return sum(math.comb(width, k) for k in range(min(radius, width) + 1))


@lru_cache(maxsize=64)
def flips(width: int, radius: int) -> np.ndarray:
    """Every XOR mask of `width` bits with at most `radius` bits set (0 first)."""
    masks = [sum(1 << b for b in bits) for k in range(min(radius, width) + 1)
             for bits in itertools.combinations(range(width), k)]
    out = np.array(masks, dtype=_key_type(width))
    out.flags.writeable = False
    return out


@dataclass(frozen=True)
class Bands:
    """Where the 64 bits are cut (`widths`, from the top bit down) and each band's radius."""

    widths: tuple[int, ...]
    radii: tuple[int, ...]

    @classmethod
    def split(cls, threshold: int, count: int) -> Bands:
        """`count` bands (1 to threshold + 1) of near-equal width whose radii cover `threshold`:
        radius floor(threshold / count), one less on the narrowest bands where pigeonhole
        allows it (sum of radius + 1 over the bands must exceed the threshold)."""
        if not 1 <= count <= min(threshold + 1, BITS):
            raise ValueError(f"cannot cut {BITS} bits into {count} bands for threshold {threshold}")
        width, wider = divmod(BITS, count)
        radius = threshold // count
        spare = count * (radius + 1) - (threshold + 1)  # bands that may search one bit less
        return cls(tuple([width + 1] * wider + [width] * (count - wider)),
                   tuple([radius] * (count - spare) + [radius - 1] * spare))

    def __post_init__(self):
        if sum(self.widths) != BITS or len(self.widths) != len(self.radii) or min(self.radii) < 0:
            raise ValueError(f"bad bands {self.widths} / {self.radii}")

    def covers(self, threshold: int) -> bool:
        return sum(r + 1 for r in self.radii) > threshold

    @property
    def shifts(self) -> tuple[int, ...]:
        return tuple(BITS - sum(self.widths[:i + 1]) for i in range(len(self.widths)))

    def probes(self) -> int:
        return sum(_flip_count(w, r) for w, r in zip(self.widths, self.radii))

    def join_cost(self, size: int) -> float:
        """Planned nanoseconds to find every close pair among `size` hashes (each pair of
        buckets is searched once, from one side: half the flips)."""
        cost = 0.0
        for width, radius in zip(self.widths, self.radii):
            probes = _flip_count(width, radius) / 2 * size
            if width <= TABLE_BITS:
                cost += 2 ** width * _TABLE_NS + probes * _PROBE_NS
            else:
                cost += probes * _SORTED_PROBE_NS
            cost += (size * _BUILD_NS + probes * size / 2 ** width * _CANDIDATE_NS
                     + (width + probes / BATCH) * _CALL_NS)
        return cost

    def query_cost(self, size: int) -> float:
        """Planned nanoseconds for one query against `size` stored hashes."""
        return sum(_QUERY_BAND_NS + _flip_count(w, r) * (_QUERY_PROBE_NS * (1 if w <= TABLE_BITS else 30)
                                                        + size / 2 ** w * _CANDIDATE_NS)
                   for w, r in zip(self.widths, self.radii))


def _plans(threshold: int) -> list[Bands]:
    return [Bands.split(threshold, count) for count in range(1, min(threshold + 1, BITS) + 1)
            if _flip_count(BITS // count + 1, threshold // count) < 200_000]


def plan_join(threshold: int, size: int) -> Bands | None:
    """The cheapest exact bands for all close pairs among `size` hashes; None: compare all pairs."""
    if threshold < 0 or threshold >= BITS:
        return None
    best, cost = None, _PAIR_NS * size * (size - 1) / 2 + size / 512 * _CALL_NS
    for bands in _plans(threshold):
        if bands.join_cost(size) < cost:
            best, cost = bands, bands.join_cost(size)
    return best


def plan_index(threshold: int, size: int = INDEX_SIZE) -> Bands | None:
    """The cheapest exact bands for one query against `size` hashes; None: scan them all."""
    if threshold < 0 or threshold >= BITS:
        return None
    best, cost = None, _SCAN_NS * size
    for bands in _plans(threshold):
        if bands.query_cost(size) < cost:
            best, cost = bands, bands.query_cost(size)
    return best


def all_pairs(hashes: np.ndarray, threshold: int, chunk: int = 512) -> Iterator[np.ndarray]:
    """Every pair (i < j) within `threshold` bits by comparing all pairs, `chunk` rows at a
    time: arrays of rows sorted by (i, j)."""
    for start in range(0, len(hashes), chunk):
        block = hashes[start:start + chunk, None] ^ hashes[None, start:]
        rows, cols = np.nonzero(np.bitwise_count(block) <= threshold)
        keep = cols > rows
        yield np.stack([rows[keep] + start, cols[keep] + start], axis=1)


def banded_pairs(hashes: np.ndarray, threshold: int, bands: Bands) -> np.ndarray:
    """Every pair (i < j) within `threshold` bits, found through `bands`; rows sorted."""
    if not bands.covers(threshold):
        raise ValueError(f"bands {bands} do not cover threshold {threshold}")
    hashes = np.ascontiguousarray(hashes, dtype=np.uint64)
    found = [_band_pairs(hashes, threshold, bands, band) for band in range(len(bands.widths))]
    return _as_rows(np.unique(np.concatenate(found)), len(hashes))


def pairs_through_band(hashes: np.ndarray, threshold: int, bands: Bands, band: int) -> np.ndarray:
    """The pairs (i < j) within `threshold` bits whose values of band number `band` lie within
    its radius: one band's share of :func:`banded_pairs` (the union over the bands is every
    close pair), so that a pipeline can search each band on its own worker. Rows sorted."""
    hashes = np.ascontiguousarray(hashes, dtype=np.uint64)
    return _as_rows(np.unique(_band_pairs(hashes, threshold, bands, band)), len(hashes))


def _band_pairs(hashes: np.ndarray, threshold: int, bands: Bands, band: int) -> np.ndarray:
    """One band's close pairs as i * size + j, unsorted, maybe repeated."""
    shift, width, radius = bands.shifts[band], bands.widths[band], bands.radii[band]
    table = _Band(hashes, shift, width)
    found = [np.empty(0, dtype=np.int64), table.pairs_within_buckets(threshold)]
    masks = flips(width, radius)[1:]
    for bit in range(width):
        # a key and key ^ mask are one pair, met once: from the key whose top bit of the mask is clear
        group = masks[(masks >> bit) == 1]
        if len(group):
            found.append(table.pairs_across_buckets(group, bit, threshold))
    return np.concatenate(found)


def _as_rows(pairs: np.ndarray, size: int) -> np.ndarray:
    return np.stack([pairs // max(size, 1), pairs % max(size, 1)], axis=1)


class _Band:
    """One band of every hash, sorted into buckets by its key."""

    def __init__(self, hashes: np.ndarray, shift: int, width: int):
        keys = ((hashes >> np.uint64(shift)) & np.uint64((1 << width) - 1)).astype(_key_type(width))
        self.order = np.argsort(keys)
        self.keys, self.hashes, self.width = keys[self.order], hashes[self.order], width
        if width <= TABLE_BITS:  # 9 bytes a key of the band (18 MiB for 21 bits): most probes miss
            n = len(self.keys)
            first = np.empty(n, dtype=bool)  # the sorted keys' first row of each bucket
            first[:1] = True
            np.not_equal(self.keys[1:], self.keys[:-1], out=first[1:])
            firsts = np.flatnonzero(first)
            row = np.int32 if n < 2**31 else np.int64
            self.counts, self.starts = np.zeros(1 << width, row), np.zeros(1 << width, row)
            self.starts[self.keys[firsts]] = firsts
            self.counts[self.keys[firsts]] = np.diff(firsts, append=n)
            self.occupied = self.counts != 0

    def lookup(self, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(which of `keys` hit a bucket, its first row, its size)"""
        if self.width <= TABLE_BITS:
            hit = np.flatnonzero(self.occupied[keys])
            keys = keys[hit]
            return hit, self.starts[keys], self.counts[keys]
        low = np.searchsorted(self.keys, keys, "left")
        counts = np.searchsorted(self.keys, keys, "right") - low
        hit = np.flatnonzero(counts != 0)
        return hit, low[hit], counts[hit]

    def verified(self, rows: np.ndarray, firsts: np.ndarray, counts: np.ndarray,
                 threshold: int) -> np.ndarray:
        """Pairs (row, each row of its bucket) within `threshold` bits, as i * size + j (i < j)."""
        crowded = np.flatnonzero(counts > 1)
        if len(crowded):  # most buckets hold one row: only the others are expanded
            counts, extra_rows, extra_firsts = counts[crowded], rows[crowded], firsts[crowded]
            ends = np.cumsum(counts - 1)
            extra_cols = np.arange(ends[-1]) - np.repeat(ends - (counts - 1) - extra_firsts - 1, counts - 1)
            rows = np.concatenate([rows, np.repeat(extra_rows, counts - 1)])
            firsts = np.concatenate([firsts, extra_cols])
        cols = firsts
        close = np.flatnonzero(np.bitwise_count(self.hashes[rows] ^ self.hashes[cols]) <= threshold)
        i, j = self.order[rows[close]], self.order[cols[close]]
        return np.minimum(i, j) * len(self.order) + np.maximum(i, j)

    def pairs_within_buckets(self, threshold: int) -> np.ndarray:
        rows = np.flatnonzero(self.keys[1:] == self.keys[:-1])  # each row with a later one in its bucket
        if not len(rows):
            return rows
        _, firsts, counts = self.lookup(self.keys[rows])
        later = firsts + counts - rows - 1
        return self.verified(rows, rows + 1, later, threshold)

    def pairs_across_buckets(self, masks: np.ndarray, bit: int, threshold: int) -> np.ndarray:
        rows = np.flatnonzero((self.keys >> bit) & 1 == 0)
        keys = self.keys[rows]
        step = max(1, BATCH // max(len(rows), 1))
        found = []
        for first in range(0, len(masks), step):
            hit, firsts, counts = self.lookup((keys[None, :] ^ masks[first:first + step, None]).ravel())
            found.append(self.verified(rows[hit % len(rows)] if step > 1 else rows[hit],
                                       firsts, counts, threshold))
        return np.concatenate(found)


def close_pairs(hashes: np.ndarray, threshold: int, chunk: int = 512) -> Iterator[np.ndarray]:
    """Every pair (i < j) of `hashes` within `threshold` bits: arrays of rows sorted by (i, j),
    through the cheapest exact plan (all pairs, `chunk` rows at a time, where it is cheaper)."""
    hashes = np.ascontiguousarray(hashes, dtype=np.uint64)
    bands = plan_join(threshold, len(hashes))
    if bands is None:
        yield from all_pairs(hashes, threshold, chunk)
    else:
        yield banded_pairs(hashes, threshold, bands)


def joining(hashes: np.ndarray, search: Callable[[np.ndarray], Iterable[np.ndarray]],
            equal: bool = True) -> Iterator[np.ndarray]:
    """Pairs (i < j) that join every two hashes `search` finds close into one group (the same
    transitive groups as its pairs over all positions), without listing every close pair: k
    copies of one picture (a placeholder a crawl met k times) give k - 1 pairs, not k(k - 1)/2.
    `search` gets the distinct values; each stands for the first position holding it, to which
    the others holding it are joined (unless not `equal`: a band after the first, in a pipeline)."""
    values, firsts, inverse = np.unique(np.asarray(hashes, dtype=np.uint64), return_index=True,
                                        return_inverse=True)
    first_of = firsts[inverse.reshape(-1)]
    others = np.flatnonzero(first_of != np.arange(len(first_of))) if equal else np.empty(0, np.int64)
    yield np.stack([first_of[others], others], axis=1)
    for pairs in search(values):
        yield np.sort(firsts[pairs], axis=1)


def joining_pairs(hashes: np.ndarray, threshold: int, chunk: int = 512) -> Iterator[np.ndarray]:
    """:func:`joining` of :func:`close_pairs`: the groups of every pair within `threshold` bits."""
    return joining(hashes, lambda values: close_pairs(values, threshold, chunk))


class Index:
    """Hashes added one at a time, found again within `threshold` bits of a query.

    An add costs O(bands), with no rebuild: each band's buckets are a direct-address table
    (or a dict, for a band over TABLE_BITS bits) holding the newest position of each key, and
    a chain from each position to the previous one of its key. A query probes its neighbour
    keys, follows the (nearly empty) chains and verifies each candidate's popcount. Where
    the threshold makes probing dearer than a scan, every stored hash is compared instead.
    """

    def __init__(self, threshold: int, size: int = INDEX_SIZE):
        self.threshold = threshold
        self.bands = plan_index(threshold, size)
        self._count = self._live = 0
        self._hashes = np.zeros(1024, dtype=np.uint64)
        self._alive = np.zeros(1024, dtype=bool)
        self._heads: list[np.ndarray | dict[int, int]] = []
        self._chains: list[np.ndarray] = []
        self._cuts = [(shift, (1 << width) - 1) for shift, width in zip(self.bands.shifts, self.bands.widths)
                      ] if self.bands else []
        for width in self.bands.widths if self.bands else ():
            # np.zeros maps its pages lazily: an index of a few images stays small
            self._heads.append(np.zeros(1 << width, dtype=np.int32) if width <= TABLE_BITS else {})
            self._chains.append(np.zeros(1024, dtype=np.int32))

    def __len__(self) -> int:
        return self._live

    def add(self, value: int) -> int:
        """Store `value`; its position (positions count up from 0)."""
        value, position = int(value), self._count
        if position == len(self._hashes):
            self._hashes, self._alive = _grown(self._hashes), _grown(self._alive)
            self._chains = [_grown(chain) for chain in self._chains]
        self._hashes[position], self._alive[position] = value, True
        for heads, chain, (shift, mask) in zip(self._heads, self._chains, self._cuts):
            key = (value >> shift) & mask
            chain[position] = heads.get(key, 0) if isinstance(heads, dict) else heads[key]
            heads[key] = position + 1  # 0 is the end of a chain
        self._count += 1
        self._live += 1
        return position

    def discard(self, position: int) -> None:
        """Forget the hash stored at `position`."""
        if self._alive[position]:
            self._alive[position] = False
            self._live -= 1

    def equal(self, value: int) -> np.ndarray:
        """Positions (ascending) of the stored hashes equal to `value`."""
        if self.bands is None:
            candidates = np.arange(self._count)
        else:
            shift, mask = self._cuts[0]
            candidates = self._chained(0, np.array([(int(value) >> shift) & mask]))
        return np.sort(candidates[(self._hashes[candidates] == np.uint64(value)) & self._alive[candidates]])

    def within(self, value: int) -> np.ndarray:
        """Positions (ascending) of the stored hashes within `threshold` bits of `value`."""
        value = int(value)
        if self.bands is None:
            candidates = np.arange(self._count)
        else:
            candidates = np.concatenate([
                self._chained(band, flips(width, radius) ^ ((value >> shift) & mask))
                for band, ((shift, mask), width, radius) in enumerate(
                    zip(self._cuts, self.bands.widths, self.bands.radii))])
        close = np.bitwise_count(self._hashes[candidates] ^ np.uint64(value)) <= self.threshold
        return np.unique(candidates[close & self._alive[candidates]])

    def _chained(self, band: int, keys: np.ndarray) -> np.ndarray:
        """Every position stored under `keys` in `band` (dead ones too)."""
        heads, chain = self._heads[band], self._chains[band]
        if isinstance(heads, dict):
            positions = np.array([heads.get(key, 0) for key in keys.tolist()], dtype=np.int64)
        else:
            positions = heads[keys]
        found = [np.empty(0, dtype=np.int64)]
        while True:
            positions = positions[positions != 0] - 1
            if not len(positions):
                return np.concatenate(found)
            found.append(positions)
            positions = chain[positions]


def _grown(array: np.ndarray) -> np.ndarray:
    """`array` in one twice as long (amortised O(1) per add)."""
    out = np.zeros(2 * len(array), dtype=array.dtype)
    out[:len(array)] = array
    return out
