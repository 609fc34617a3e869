"""What a fit reads: rows of an array read on demand, seeded batches, the validation split, and
the run's inputs (:class:`Inputs`) whichever format they come from."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import keras
import numpy as np

from ..data.npz import row_reader
from ..data.splits import stratified_split


class Rows:
    """Some rows of an array (all rows if `index` is None), read only when asked for."""

    def __init__(self, array: np.ndarray, index: np.ndarray | None):
        self.array = row_reader(array)
        self.index = np.arange(len(array)) if index is None else np.asarray(index)

    def __len__(self) -> int:
        return len(self.index)

    def take(self, positions: np.ndarray) -> np.ndarray:
        return np.asarray(self.array[self.index[positions]])


class Batches(keras.utils.PyDataset):
    """Batches of one or more views of the same samples.

    With a seed, epoch e's order (and which view each sample shows) depends only on
    (seed, e): a resumed run sees exactly the batches an uninterrupted one would.
    With labels and `replicas` > 1, every batch splits evenly over the replicas: Keras 3's
    distributed fit and evaluate fail on a last batch they cannot share, so it loses up to
    replicas - 1 samples (others each epoch, where the order is shuffled).
    """

    def __init__(self, views: Sequence[Rows], labels: np.ndarray | None, batch_size: int,
                 seed: int | None = None, replicas: int = 1):
        super().__init__()
        self.views, self.labels, self.batch_size, self.seed = list(views), labels, batch_size, seed
        n = len(self.views[0])
        self.used = n if labels is None else n - n % replicas
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        n = len(self.views[0])
        if self.seed is None:
            self.order, self.choice = np.arange(n), np.zeros(n, dtype=int)
        else:
            rng = np.random.default_rng([self.seed, epoch])
            self.order = rng.permutation(n)
            self.choice = rng.integers(len(self.views), size=n)

    def __len__(self) -> int:
        return math.ceil(self.used / self.batch_size)

    def __getitem__(self, i: int):
        positions = self.order[:self.used][i * self.batch_size:(i + 1) * self.batch_size]
        choice = self.choice[positions]
        first = self.views[0].take(positions[:1])
        x = np.empty((len(positions), *first.shape[1:]), dtype=first.dtype)
        for v in np.unique(choice):
            mask = choice == v
            x[mask] = self.views[v].take(positions[mask])
        return (x,) if self.labels is None else (x, self.labels[positions])


def validation_split(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded, stratified (train rows, validation rows) of the training set, split as pack
    splits train from test."""
    rows = np.arange(len(labels))
    if fraction == 0:
        return rows, rows[:0]
    train_rows, val_rows = stratified_split(labels, fraction, seed)
    return np.sort(train_rows), np.sort(val_rows)


@dataclass
class Inputs:
    """The run's inputs. `train` has `set_epoch` (the Checkpointer calls it);
    `fit_data(start, epochs)` is what `fit` reads from epoch `start` on, with its steps per
    epoch (None: the input's length); the rest are unlabelled batches that `predict` reads."""

    train: object                    # Batches, or a streams.TrainStream
    validation: object | None        # labelled validation batches for fit, or None
    test: object                     # every test image (or its features)
    validation_images: object | None  # every validation image (or its features)
    reference: object                # the training rows the unknown detector keeps

    def fit_data(self, start_epoch: int, epochs: int) -> tuple[object, int | None]:
        if isinstance(self.train, Batches):
            return self.train, None
        return self.train.epochs(start_epoch, epochs), self.train.steps

    def first_batch(self):
        """A batch of training inputs (multiworker builds the model from one)."""
        return self.train[0] if isinstance(self.train, Batches) else self.train.first_batch()
