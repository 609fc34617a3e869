"""Near-duplicate pairs found by band keys, for a pipeline that groups images by key: the
candidates of one band are the images whose band values meet, each checked by popcount.

The 64-bit perceptual hash is cut into `b = ceil((threshold + 1) / 3)` bands (3 bands of
21-22 bits at the default threshold 8). Two hashes within `threshold` bits differ in at most
`r = threshold // b` <= 2 bits of some band (pigeonhole); two band values within 2 bits meet
at a key one bit away from each (or at either value), so each image offers its band value and
its one-bit neighbours, and the pairs that meet are all the pairs within r bits of that band.
Every candidate is then checked on all 64 bits: the result is exactly the pairs within
`threshold` bits, as :func:`toolkit.core.dedupe.near_pairs` finds them, in linear work for
hashes spread over the bands' values.
"""

from __future__ import annotations

import numpy as np


def layout(threshold: int) -> list[tuple[int, int]]:
    """The bands for this threshold as (first bit, width), covering the 64 bits."""
    count = max(1, -(-(threshold + 1) // 3))
    widths = [64 // count + (i < 64 % count) for i in range(count)]
    starts = np.cumsum([0, *widths[:-1]]).tolist()
    return list(zip(starts, widths))


def radius(threshold: int) -> int:
    """Bits in which two near copies differ in some band, at most."""
    return threshold // len(layout(threshold))


def pairs_in_band(ids: np.ndarray, hashes: np.ndarray, band: int, threshold: int
                  ) -> np.ndarray:
    """The pairs (id, id), smaller id first, of the images whose hashes differ in at most
    `threshold` bits and whose values of `band` (an index into :func:`layout`) are within
    :func:`radius` bits: an (n, 2) int64 array, sorted, each pair once."""
    start, width = layout(threshold)[band]
    hashes = np.asarray(hashes, dtype=np.uint64)
    ids = np.asarray(ids, dtype=np.int64)
    values = (hashes >> np.uint64(start)) & np.uint64((1 << width) - 1)
    keys, owners = [values], [np.arange(len(values))]
    if radius(threshold) > 0:  # meeting one bit away from each side: within 2 bits
        for bit in range(width):
            keys.append(values ^ np.uint64(1 << bit))
            owners.append(owners[0])
    keys, owners = np.concatenate(keys), np.concatenate(owners)
    order = np.argsort(keys, kind="stable")
    keys, owners = keys[order], owners[order]
    found = []
    for gap in range(1, len(keys)):  # runs of equal keys: the pairs `gap` apart within a run
        same = keys[:-gap] == keys[gap:]
        if not same.any():
            break
        found.append(np.stack([owners[:-gap][same], owners[gap:][same]], axis=1))
    if not found:
        return np.empty((0, 2), dtype=np.int64)
    pairs = np.concatenate(found)
    pairs = pairs[pairs[:, 0] != pairs[:, 1]]
    close = np.bitwise_count(hashes[pairs[:, 0]] ^ hashes[pairs[:, 1]]) <= threshold
    pairs = np.sort(ids[pairs[close]], axis=1)
    return np.unique(pairs, axis=0)
