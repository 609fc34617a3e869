"""Training on more than one device: the tf.distribute strategy, which process is the chief,
and the one workaround Keras 3 needs under MultiWorkerMirroredStrategy."""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable, Iterator


def distribution_strategy(name: str):
    """The tf.distribute strategy for `distribute=name` (TensorFlow's default for none)."""
    import tensorflow as tf

    if name == "mirrored":
        # every local GPU; on a machine without one, every logical CPU device (tests split
        # the CPU in two with tf.config.set_logical_device_configuration)
        devices = (tf.config.list_logical_devices("GPU")
                   or tf.config.list_logical_devices("CPU"))
        return tf.distribute.MirroredStrategy([d.name for d in devices])
    if name == "multiworker":
        return tf.distribute.MultiWorkerMirroredStrategy()
    return tf.distribute.get_strategy()


def is_chief(distribute: str) -> bool:
    """Whether this process writes the run folder: always, except in a multiworker run,
    where only TF_CONFIG's chief (or worker 0 of a chiefless cluster) does."""
    if distribute != "multiworker":
        return True
    try:
        spec = json.loads(os.environ.get("TF_CONFIG", "{}"))
        task, cluster = spec.get("task", {}), spec.get("cluster", {})
        kind, index = task.get("type", "chief"), int(task.get("index", 0))
    except (ValueError, AttributeError, TypeError):
        return True
    return kind == "chief" or (kind == "worker" and index == 0 and "chief" not in cluster)


@contextlib.contextmanager
def multiworker_workarounds(model, distribution, first_batch: Callable[[], tuple]) -> Iterator[None]:
    """Make Keras 3's fit work under MultiWorkerMirroredStrategy (keras-team/keras#20585).

    Keras builds the model from a batch averaged across workers (which fails on a batch of
    integers split over workers) and averages each scalar metric along an axis it lacks.
    Here the model is built from the first local batch, and scalars are averaged whole. Nothing
    changes for any other strategy.
    """
    import tensorflow as tf

    if not (isinstance(distribution, tf.distribute.MultiWorkerMirroredStrategy)
            and distribution.extended._in_multi_worker_mode()):
        yield  # Keras' private names are touched only in a real multi-worker run
        return
    from keras.src.backend.tensorflow import trainer as keras_trainer

    with distribution.scope():
        model._symbolic_build(data_batch=first_batch())
    original = keras_trainer.reduce_per_replica

    def reduce_per_replica(values, strategy, reduction):
        if reduction not in ("auto", "mean"):
            return original(values, strategy, reduction)
        return tf.nest.map_structure(lambda v: strategy.reduce("MEAN", v, axis=None), values)

    model._maybe_symbolic_build = lambda iterator=None, data_batch=None: None
    keras_trainer.reduce_per_replica = reduce_per_replica
    try:
        yield
    finally:
        keras_trainer.reduce_per_replica = original
        del model._maybe_symbolic_build
