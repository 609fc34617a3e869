"""A sharded dataset's pixels as a fit reads them (cnn, augment online): tf.data streams of its
records, shuffled while still encoded, decoded a batch ahead, never the whole split in memory.

Each record carries its row number (its shard's first row in dataset.json plus its position),
so the validation rows (the seeded split of the labels, as for an archive) are filtered out of
training and into validation before any image is decoded. Epoch e's order depends only on
(seed, e): the shards' order is a seeded permutation, the records pass through a seeded
shuffle buffer of SHUFFLE_RECORDS encoded records; one stream holds epochs start..end, so a
resumed run reads exactly the batches an uninterrupted one would.

Under `--distribute multiworker` each worker reads its own shards (every n-th, from its index);
with fewer shards than workers, every worker reads every shard and keeps every n-th record.
"""

from __future__ import annotations

import logging
import math
from typing import TYPE_CHECKING

import numpy as np

from ..data import shards
from ..data.streams import ShardData, keep_rows
from .batches import Inputs
from .calibration import reference_rows

if TYPE_CHECKING:
    from .config import TrainConfig

log = logging.getLogger("toolkit")

#: Encoded records held in the shuffle buffer (about 25 KB each at 224 pixels as JPEG).
SHUFFLE_RECORDS = 2048
#: Shards read at once (interleaved) while training.
CYCLE_LENGTH = 4


def worker_shards(n_shards: int, workers: int, index: int) -> list[int] | None:
    """The shards worker `index` of `workers` reads: every `workers`-th from `index`; None
    when there are fewer shards than workers (it then reads all and keeps every n-th record)."""
    if n_shards < workers:
        return None
    return list(range(index, n_shards, workers))


def filled_shards(dataset: shards.Dataset) -> list[int]:
    """The training shards that hold images (by their place among the split's shards): the ones
    workers share, so that no worker gets only empty shards (a shard no image fell on)."""
    return [i for i, s in enumerate(s for s in dataset.shards if s.split == "train") if s.images]


def multiworker(distribution) -> bool:
    import tensorflow as tf

    return (isinstance(distribution, tf.distribute.MultiWorkerMirroredStrategy)
            and distribution.extended._in_multi_worker_mode())


class TrainStream:
    """The training rows of a dataset, shuffled per epoch by (seed, epoch), in batches."""

    def __init__(self, data: ShardData, rows: np.ndarray, batch: int, seed: int, replicas: int,
                 distribution):
        self.data, self.rows, self.batch, self.seed = data, np.asarray(rows), batch, seed
        self.distribution = distribution
        self.used = len(rows) - len(rows) % replicas  # a last batch the replicas share evenly
        self.multiworker = multiworker(distribution)
        # every worker takes the same number of steps: whole global batches only
        self.steps = max(1, self.used // batch) if self.multiworker else math.ceil(self.used / batch)

    def set_epoch(self, epoch: int) -> None:
        """Nothing to do: each epoch's order is part of the stream (the Checkpointer calls it)."""

    def epochs(self, start: int, end: int):
        """Epochs start..end-1 as one stream of `steps` batches each (a DistributedDataset under
        multiworker, each worker's part made by the worker)."""
        import tensorflow as tf

        if self.multiworker:
            def per_worker(context):
                size = context.get_per_replica_batch_size(self.batch)
                per_epoch = self.steps * size * (self.batch // size // context.num_input_pipelines)
                return self._epochs(start, end, context.num_input_pipelines, context.input_pipeline_id,
                                    size, per_epoch)
            return self.distribution.distribute_datasets_from_function(per_worker)
        return self._epochs(start, end, 1, 0, self.batch, self.used).prefetch(tf.data.AUTOTUNE)

    def first_batch(self) -> tuple[np.ndarray, np.ndarray]:
        x, y = next(iter(self.epoch(0, 1, 0, self.batch, self.batch)))
        return x.numpy(), y.numpy()

    def _epochs(self, start: int, end: int, workers: int, index: int, batch: int, take: int):
        stream = self.epoch(start, workers, index, batch, take)
        for epoch in range(start + 1, end):
            stream = stream.concatenate(self.epoch(epoch, workers, index, batch, take))
        return stream

    def epoch(self, epoch: int, workers: int, index: int, batch: int, take: int):
        """One epoch: `take` records of this worker's training rows, shuffled by (seed, epoch)."""
        import tensorflow as tf

        dataset = self.data.dataset
        rng = np.random.default_rng([self.seed, epoch])
        filled = filled_shards(dataset)
        mine = worker_shards(len(filled), workers, index)
        order = [filled[s] for s in rng.permutation(len(filled)).tolist() if mine is None or s in mine]
        records = keep_rows(shards.numbered_records(dataset, "train", order, CYCLE_LENGTH),
                            self.rows, len(self.data.y_train))
        if mine is None and workers > 1:
            records = records.shard(workers, index)
        records = records.shuffle(SHUFFLE_RECORDS, seed=int(rng.integers(2**31)))
        if workers > 1:  # a worker's rows are about 1/workers of them: every epoch the same steps
            records = records.repeat()
        if workers == 1:  # a known length: Keras warns of a stream that ends without one
            records = records.take(take).apply(tf.data.experimental.assert_cardinality(take))
        return _decoded(dataset, records.take(take), batch, drop_remainder=workers > 1)


def _decoded(dataset: shards.Dataset, records, batch: int, drop_remainder: bool = False):
    import tensorflow as tf

    parse = shards.parse(dataset)
    return records.map(lambda row, record: parse(record), num_parallel_calls=tf.data.AUTOTUNE,
                       deterministic=True).batch(batch, drop_remainder=drop_remainder)


def _unsharded(stream):
    """Every worker reads a prediction's or a validation's stream whole, in order."""
    import tensorflow as tf

    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF
    return stream.with_options(options).prefetch(tf.data.AUTOTUNE)


def shard_inputs(config: TrainConfig, data: ShardData, train_rows: np.ndarray, val_rows: np.ndarray,
                 batch: int, replicas: int, distribution) -> Inputs:
    """The fit's and the predictions' inputs of a pixel strategy on a dataset: the training
    stream, validation (ordered, the rows an archive's run validates on) and ordered passes
    for the test set and the unknown detector's training rows."""
    train = TrainStream(data, train_rows, batch, config.seed, replicas, distribution)
    filled = len(filled_shards(data.dataset))
    if train.multiworker and filled < distribution.num_replicas_in_sync:
        log.warning("%d training shards for %d replicas: every worker reads every shard and keeps "
                    "every n-th record", filled, distribution.num_replicas_in_sync)
    validation = val_images = None
    if len(val_rows) >= replicas:
        used = len(val_rows) - len(val_rows) % replicas
        validation = _unsharded(data.X_train.images(val_rows, labels=True).take(used).batch(batch))
        val_images = _unsharded(data.X_train.images(val_rows).batch(batch))
    reference = train_rows[reference_rows(len(train_rows), config.seed)]
    return Inputs(train, validation, _unsharded(data.X_test.images().batch(batch)), val_images,
                  _unsharded(data.X_train.images(reference).batch(batch)))
