"""The one splitter of the toolkit: seeded and stratified, for pack's train/test split and
training's validation split."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..core.sources import InputFile


def stratified_split(labels: np.ndarray, fraction: float, seed: int
                     ) -> tuple[np.ndarray, np.ndarray]:
    """Seeded, stratified (kept, held-out) positions of `labels`: each class holds out
    round(n * fraction) of its n items, at least one and never all of them."""
    rng = np.random.default_rng(seed)
    kept: list[int] = []
    held: list[int] = []
    for k in np.unique(labels):
        mine = np.flatnonzero(labels == k)
        mine = mine[rng.permutation(len(mine))]
        n_held = min(max(1, round(len(mine) * fraction)), len(mine) - 1)
        held += mine[:n_held].tolist()
        kept += mine[n_held:].tolist()
    return (np.array(kept, dtype=np.int64)[rng.permutation(len(kept))],
            np.array(held, dtype=np.int64)[rng.permutation(len(held))])


def train_test_split(chosen: Sequence[InputFile], test_size: float, seed: int
                     ) -> tuple[list[InputFile], list[InputFile]]:
    """Pack's stratified train/test split of the files it chose. The split draws from
    `seed + 1`: `seed` already drew which files were chosen."""
    labels = np.array([f.label for f in chosen])
    train, test = stratified_split(labels, test_size, seed + 1)
    return [chosen[i] for i in train], [chosen[i] for i in test]
