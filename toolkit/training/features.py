"""The frozen-feature cache: the frozen part of a model runs once per image, on disk.

Each cached array is one .npy, named by what it depends on (archive, backbone, weights,
cut, precision, rows, augmented view), so a second run - or another strategy cutting at
the same layer - computes nothing.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from tqdm import tqdm

from .. import __version__
from ..core.files import atomic_path, write_json
from ..data.npz import Archive, write_npy_header
from ..data.streams import ShardData, ShardSplit, pixel_batches
from ..models.cache import cache_root, weights_fingerprint

if TYPE_CHECKING:
    from .config import TrainConfig

FEATURE_BATCH = 32  # images per forward pass of the frozen part


class FeatureCache:
    """Outputs of a model's frozen part, one .npy per (archive, backbone, weights, cut, precision,
    view).

    Files are written atomically and memory-mapped when read, so a run holds only the
    batches it is using, and a second run (or strategy) on the same data computes nothing.
    """

    def __init__(self, config: TrainConfig, archive: Archive | ShardData, cut: str, policy: str):
        self.cut, self.policy = cut, policy  # policy: the dtype policy the frozen part computes in
        self.folder = cache_root(config.cache_dir) / "features"
        self.config, self.archive = config, archive

    def key(self, array: str, rows: np.ndarray | None, view: int) -> dict:
        c = self.config
        return {"archive": file_fingerprint(self.archive.identity_file), "array": array,
                "backbone": c.backbone, "weights": weights_fingerprint(c.weights, c.seed),
                "cut": self.cut, "shape": list(self.archive.image_shape), "precision": self.policy,
                "rows": None if rows is None else hashlib.sha256(np.asarray(rows).tobytes()).hexdigest(),
                "view": view, "view_seed": c.seed if view else None, "toolkit": __version__}

    def features(self, lower, images: np.ndarray | ShardSplit, array: str, *, rows: np.ndarray | None = None,
                 view: int = 0, progress: bool = False) -> np.ndarray:
        from keras import backend

        key = self.key(array, rows, view)
        name = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:32]
        path = self.folder / f"{name}.npy"
        rows = np.arange(len(images)) if rows is None else np.asarray(rows)
        shape = (len(rows), *lower.output.shape[1:])
        dtype = backend.standardize_dtype(lower.output.dtype)
        if path.exists():
            with contextlib.suppress(ValueError, OSError):
                cached = read_features(path)
                if cached.shape == shape and cached.dtype == dtype:
                    return cached
        self.folder.mkdir(parents=True, exist_ok=True)
        stored = STORED_AS.get(dtype, dtype)
        label = f"{self.config.backbone} {array}" + (f" view {view}" if view else "")
        # batches are appended to the file, not written through a memory map, whose dirty
        # pages would count as the process's memory until the whole file was written
        with atomic_path(path) as tmp, open(tmp, "wb") as out:
            write_npy_header(out, shape, stored)
            for batch in forward(lower, images, rows, augment_seed=self.config.seed * 1000 + view
                                 if view else None, desc=label, progress=progress):
                out.write(np.ascontiguousarray(batch, dtype=dtype).view(stored).tobytes())
        write_json(path.with_suffix(".json"), {**key, "dtype": dtype})
        return read_features(path)


#: dtypes numpy cannot read back from a .npy (ml_dtypes' bfloat16 is saved as a void `|V2`),
#: stored as their raw bits; the sidecar .json records the real dtype.
STORED_AS = {"bfloat16": "uint16"}


def read_features(path: Path) -> np.ndarray:
    """A cached .npy, memory-mapped, in the dtype its sidecar .json records."""
    import ml_dtypes

    features = np.load(path, mmap_mode="r")
    sidecar = json.loads(path.with_suffix(".json").read_text())
    dtype = sidecar.get("dtype", features.dtype.name) if isinstance(sidecar, dict) else None
    return features.view(ml_dtypes.bfloat16) if dtype == "bfloat16" else features


def forward(lower, images: np.ndarray | ShardSplit, rows: np.ndarray, augment_seed: int | None,
            desc: str, progress: bool) -> Iterator[np.ndarray]:
    """Run `lower` over images[rows] in batches, optionally augmented; yield the outputs. A
    sharded dataset's split is read in one ordered pass."""
    from .. import models

    augment = models.augmentation(augment_seed) if augment_seed is not None else None
    with tqdm(total=len(rows), desc=desc, unit="img", disable=not progress) as bar:
        for n, x in _padded_batches(images, rows):
            if augment is not None:
                x = augment(x.astype("float32"), training=True)
            yield np.asarray(lower.predict_on_batch(x))[:n]
            bar.update(n)


def _padded_batches(images: np.ndarray | ShardSplit, rows: np.ndarray) -> Iterator[tuple[int, np.ndarray]]:
    """(images in it, a batch of FEATURE_BATCH images of `rows`): a short last batch is padded
    with its last image, so that the frozen part sees one input shape (one trace of the graph)."""
    for x in pixel_batches(images, FEATURE_BATCH, rows):
        n = len(x)
        yield n, np.concatenate([x, np.repeat(x[-1:], FEATURE_BATCH - n, axis=0)]) if n < FEATURE_BATCH else x


def file_fingerprint(path: str) -> str:
    st = os.stat(path)
    return f"{os.path.realpath(path)}:{st.st_size}:{st.st_mtime_ns}"
