"""What a run's fit and its predictions read: cached frozen features or raw images, from an
`.npz` archive's rows or streamed from a sharded dataset's records (:mod:`.streams`)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from ..data.npz import Archive
from ..data.streams import ShardData
from .batches import Batches, Inputs, Rows
from .calibration import reference_rows
from .features import FeatureCache

if TYPE_CHECKING:
    from .config import TrainConfig


def prepare_inputs(config: TrainConfig, data: Archive | ShardData, split, cached: bool, policy: str,
                   train_rows: np.ndarray, val_rows: np.ndarray, batch: int, replicas: int,
                   distribution, progress: bool) -> Inputs:
    """Cached frozen features when the model has a frozen part (from a dataset, computed in one
    ordered pass over its shards), raw images otherwise (from a dataset, streamed)."""
    y = data.y_train
    if cached:
        cache = FeatureCache(config, data, split.cut, policy)
        source = cache.features(split.lower, data.X_train, "X_train", progress=progress)
        test = cache.features(split.lower, data.X_test, "X_test", progress=progress)
        views = [Rows(source, train_rows)]
        for view in range(1, config.views if config.strategy == "augment" else 1):
            views.append(Rows(cache.features(split.lower, data.X_train, "X_train",
                                             rows=train_rows, view=view, progress=progress), None))
    elif isinstance(data, ShardData):
        from .streams import shard_inputs

        return shard_inputs(config, data, train_rows, val_rows, batch, replicas, distribution)
    else:
        source, test = data.X_train, data.X_test
        views = [Rows(source, train_rows)]
    train_data = Batches(views, y[train_rows], batch, seed=config.seed, replicas=replicas)
    val_data = (Batches([Rows(source, val_rows)], y[val_rows], batch, replicas=replicas)
                if len(val_rows) >= replicas else None)
    val_images = (None if val_data is None  # every validation image, uneven batch or not
                  else Batches(val_data.views, None, batch))
    train = train_data.views[0]  # only the rows the unknown detector keeps are embedded
    reference = Rows(train.array, train.index[reference_rows(len(train), config.seed)])
    return Inputs(train_data, val_data, Batches([Rows(test, None)], None, batch), val_images,
                  Batches([reference], None, batch))

