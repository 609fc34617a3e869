"""The toolkit's splitters: pack's one rule for which images a class keeps and which it holds out
(decided per image, so that the `.npz` pack and the Beam pipeline choose alike), and training's
seeded, stratified validation split of an archive's rows."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

#: Where pack's rule puts an image.
TRAIN, TEST, SURPLUS = "train", "test", "surplus"

#: An image's place in its class's seeded order: (a 64-bit hash of the seed and its content, its
#: name); the smaller comes first. Content decides, so that renaming a file does not move it.
Rank = tuple[int, str]


class Rankable(Protocol):
    label: int
    name: str


def image_rank(seed: int, sha256: str, name: str) -> Rank:
    """The image's rank for this seed: a seeded hash per image, so that no global shuffle is
    needed (a pipeline computes it where the image is)."""
    digest = hashlib.blake2b(f"{seed}:{sha256}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big"), name


def held_out(n: int, fraction: float) -> int:
    """How many of a class's n images are held out: round(n * fraction), at least one, never all."""
    return min(max(1, round(n * fraction)), n - 1)


@dataclass(frozen=True)
class ClassPlan:
    """Where a class's cut-offs fall: the images of rank up to `test_last` are its test set,
    those after it up to `kept_last` its training set, and the rest are surplus."""

    test_last: Rank
    kept_last: Rank
    train: int
    test: int


def class_plan(smallest: Iterable[Rank], per_class: int, fraction: float) -> ClassPlan:
    """The plan of a class from its `per_class` smallest ranks (all of them, if it has fewer; at
    least two): what a per-class combine of ranks gives a pipeline."""
    kept = sorted(smallest)[:per_class]
    n_test = held_out(len(kept), fraction)
    return ClassPlan(kept[n_test - 1], kept[-1], len(kept) - n_test, n_test)


def place(rank: Rank, plan: ClassPlan) -> str:
    """TEST, TRAIN or SURPLUS: where the rule puts the image of this rank."""
    if rank <= plan.test_last:
        return TEST
    return TRAIN if rank <= plan.kept_last else SURPLUS


def choose_and_split(files: Sequence[Rankable], ranks: Sequence[Rank], per_class: int,
                     fraction: float) -> tuple[list, list, list]:
    """Pack's rule over whole lists: (train, test, surplus), each in rank order. Every class
    keeps its `per_class` first images by rank and holds out round(kept * fraction) of the first."""
    by_class: dict[int, list[Rank]] = {}
    for f, rank in zip(files, ranks):
        by_class.setdefault(f.label, []).append(rank)
    plans = {label: class_plan(r, per_class, fraction) for label, r in by_class.items()}
    placed: dict[str, list] = {TRAIN: [], TEST: [], SURPLUS: []}
    for rank, f in sorted(zip(ranks, files), key=lambda pair: pair[0]):
        placed[place(rank, plans[f.label])].append(f)
    return placed[TRAIN], placed[TEST], placed[SURPLUS]


def stratified_split(labels: np.ndarray, fraction: float, seed: int
                     ) -> tuple[np.ndarray, np.ndarray]:
    """Seeded, stratified (kept, held-out) positions of `labels`: each class holds out
    round(n * fraction) of its n items, at least one and never all of them. (Training's
    validation split of an archive's rows, which carry no content hash.)"""
    rng = np.random.default_rng(seed)
    kept: list[int] = []
    held: list[int] = []
    for k in np.unique(labels):
        mine = np.flatnonzero(labels == k)
        mine = mine[rng.permutation(len(mine))]
        n_held = held_out(len(mine), fraction)
        held += mine[:n_held].tolist()
        kept += mine[n_held:].tolist()
    return (np.array(kept, dtype=np.int64)[rng.permutation(len(kept))],
            np.array(held, dtype=np.int64)[rng.permutation(len(held))])
