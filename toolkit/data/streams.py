"""The data a run reads, whichever format holds it: an `.npz` archive (:mod:`.npz`) or a sharded
dataset folder (:mod:`.shards`), whose pixels are read in order, a batch at a time, never whole.

:class:`ShardData` answers what an :class:`~toolkit.data.npz.Archive` answers (class names, image
shape, labels, pack's settings); its `X_train` and `X_test` are :class:`ShardSplit` streams instead
of arrays. :func:`pixel_batches` reads batches of either kind.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..core.errors import ToolkitError
from . import shards
from .npz import Archive, load_archive, row_reader


class ShardSplit:
    """The images of one split of a sharded dataset, in dataset.json's order (row i is its i-th
    record): read by ordered passes, a batch at a time."""

    def __init__(self, dataset: shards.Dataset, split: str):
        self.dataset, self.split = dataset, split
        self.shape = (dataset.count(split), dataset.size, dataset.size, 3)

    def __len__(self) -> int:
        return self.shape[0]

    def __array__(self, *args, **kwargs):
        raise TypeError("a dataset's split is streamed, never loaded whole: read it by batches")

    def images(self, rows: np.ndarray | None = None, *, labels: bool = False):
        """The images of `rows` (sorted row numbers; None: all), in order, as a tf.data.Dataset
        of uint8 (size, size, 3) pixels (with `labels`, (pixels, label) pairs): records are
        filtered by row before any is decoded."""
        import tensorflow as tf

        records = keep_rows(shards.numbered_records(self.dataset, self.split), rows, len(self))
        # a known length: Keras warns of a stream that ends without saying how long it is
        records = records.apply(tf.data.experimental.assert_cardinality(
            len(self) if rows is None else len(rows)))
        parse = shards.parse(self.dataset)
        return records.map(lambda row, record: parse(record) if labels else parse(record)[0],
                           num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)

    def batches(self, size: int, rows: np.ndarray | None = None) -> Iterator[np.ndarray]:
        """Batches of `size` images (the last may be short) of `rows`, in order, as numpy."""
        import tensorflow as tf

        for batch in self.images(rows).batch(size).prefetch(tf.data.AUTOTUNE):
            yield batch.numpy()

    def paths(self) -> list[str]:
        """Each row's `path` (the file's name in its class folder, as an archive's `paths_test`
        holds it), in order: one read of the shards, no image decoded."""
        return [path.decode("utf-8", "surrogateescape")
                for path in shards.read_column(self.dataset, self.split, "path")]

    def __getitem__(self, row: int) -> np.ndarray:
        """One image (a pass up to it): for the few thumbnails a run's page shows."""
        return next(self.batches(1, np.array([int(row)])))[0]


@dataclass
class ShardData:
    """A checked sharded dataset, as a run reads it: what an Archive holds, pixels streamed."""

    dataset: shards.Dataset
    X_train: ShardSplit
    y_train: np.ndarray
    X_test: ShardSplit
    y_test: np.ndarray
    class_names: list[str]
    meta: dict
    path: str

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return (self.dataset.size, self.dataset.size, 3)

    @property
    def identity_file(self) -> str:
        """The file whose path, size and time identify the data (in the feature cache's key)."""
        return str(self.dataset.folder / shards.DATASET_FILE)


def keep_rows(records, rows: np.ndarray | None, n: int):
    """Numbered records (row, record) whose row is one of `rows` (None: all) of a split of n."""
    import tensorflow as tf

    if rows is None:
        return records
    keep = np.zeros(n, dtype=bool)
    keep[np.asarray(rows, dtype=np.int64)] = True
    mask = tf.constant(keep)
    return records.filter(lambda row, record: tf.gather(mask, row))


def load_shards(folder: str | os.PathLike, *, check: bool = True) -> ShardData:
    """Open a dataset folder: dataset.json checked, and in one read of each shard its labels
    read (8 bytes an image) and, with `check`, its checksum checked (a damaged shard is one
    ToolkitError naming it, before a reader meets it); no pixel is read."""
    dataset = shards.read_dataset(folder)
    y_train, y_test = (shards.read_labels(dataset, split, check=check) for split in shards.SPLITS)
    info = dataset.info
    meta = {"toolkit": info.get("toolkit"), "created": info.get("created"), **info.get("settings", {}),
            **info["image"]}
    for name, labels in (("train", y_train), ("test", y_test)):
        if not len(labels):
            raise ToolkitError(f"{dataset.folder} holds no {name} images; pack again")
    return ShardData(dataset, ShardSplit(dataset, "train"), y_train, ShardSplit(dataset, "test"), y_test,
                     list(dataset.class_names), meta, str(Path(folder)))


def load_data(path: str | os.PathLike, *, check: bool = True) -> Archive | ShardData:
    """What `--data` names: a dataset folder (pack --format tfrecord) or an .npz archive."""
    if shards.is_dataset(path):
        return load_shards(path, check=check)
    if Path(path).is_dir():
        raise ToolkitError(f"{path} is a folder without {shards.DATASET_FILE}: --data takes an .npz "
                           "archive or a dataset folder made by `toolkit pack --format tfrecord`")
    return load_archive(path)


def pixel_batches(images, size: int, rows: np.ndarray | None = None) -> Iterator[np.ndarray]:
    """Batches of `size` uint8 images (the last may be short) of an archive's array or a
    :class:`ShardSplit`, in row order (`rows`: sorted row numbers; None: all)."""
    if isinstance(images, ShardSplit):
        yield from images.batches(size, rows)
        return
    reader = row_reader(images)
    rows = np.arange(len(images)) if rows is None else np.asarray(rows)
    for start in range(0, len(rows), size):
        yield np.asarray(reader[rows[start:start + size]], dtype="uint8")
