"""Review's embedding model: a frozen pretrained backbone, globally average-pooled, and its
per-image cache, so that an image is embedded once whatever reviews it again.

The second use of a backbone beside :func:`toolkit.models.build`: the same bases, the same
preprocessing layer, the same weights (`imagenet`, `none` or a file), no head.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Protocol

import keras
import numpy as np
from tqdm import tqdm

from .. import __version__
from ..core import images
from ..core.errors import ToolkitError
from ..core.files import atomic_path, write_json
from . import Preprocess, backbone_spec, load_backbone
from .cache import cache_root, weights_fingerprint

EMBED_BATCH = 32


class UsableFile(Protocol):
    """A file found usable (:class:`toolkit.core.sources.InputFile`): where it is, its printable
    name, and what decoding it gave (its content's sha256 keys the cache)."""

    path: Path
    name: str
    info: images.ImageInfo


def embed(files: Sequence[UsableFile], *, backbone: str, weights: str = "imagenet", size: int,
          checks: images.Checks = images.Checks(), cache_dir: str | os.PathLike | None = None,
          seed: int = 0, workers: int | None = None, progress: bool = False) -> np.ndarray:
    """Globally pooled backbone features of `files` (usable images, with their `info`),
    float32 (n, channels), of the centre square of side `size`; only images the cache lacks
    are computed."""
    def pixels(f: UsableFile) -> np.ndarray:
        try:
            info, x = images.decode(images.read_file(f.path, checks), checks, size, "crop")
        except images.Unusable as e:
            raise ToolkitError(f"{f.name} changed during the review ({e}); run "
                               "`toolkit review` again") from None
        if info.sha256 != f.info.sha256:  # never cache these pixels under the old content
            raise ToolkitError(f"{f.name} changed during the review; run `toolkit review` "
                               "again")
        return x

    return embed_stream(((f.info.sha256, functools.partial(pixels, f)) for f in files), backbone=backbone,
                        weights=weights, size=size, cache_dir=cache_dir, seed=seed, workers=workers,
                        total=len(files), progress=progress)


def embed_stream(items: Iterable[tuple[str, Callable[[], np.ndarray]]], *, backbone: str, weights: str,
                 size: int, cache_dir: str | os.PathLike | None = None, seed: int = 0,
                 workers: int | None = None, total: int | None = None, progress: bool = False) -> np.ndarray:
    """The embeddings of `items`, (content sha256, a function that decodes its (size, size, 3)
    pixels) read one at a time, as float32 (n, channels): pixels are decoded (in a thread pool,
    the next batch while the backbone runs on this one) only for contents the cache lacks, and
    the backbone is loaded only then; the cache is saved every `EmbeddingCache.SHARD` images."""
    cache = EmbeddingCache(cache_root(cache_dir), backbone, weights, size, seed)
    known = cache.load()
    keys: list[str] = []
    model, batch, queued, unsaved = None, [], set(), []
    pending: list[tuple[str, Future]] = []
    executor = ThreadPoolExecutor(max_workers=workers or os.cpu_count() or 1)

    def run(submitted: list[tuple[str, Future]]) -> None:
        nonlocal model
        if model is None:
            model = pooled_backbone(backbone, weights, size, seed)
        x = np.stack([future.result() for _, future in submitted])
        padded = np.concatenate([x, np.repeat(x[-1:], EMBED_BATCH - len(x), 0)])
        vectors = np.asarray(model.predict_on_batch(padded))[:len(x)].astype(np.float32)
        known.update(zip((sha for sha, _ in submitted), vectors))
        unsaved.extend(sha for sha, _ in submitted)
        bar.update(len(x))
        if len(unsaved) >= cache.SHARD:
            save()

    def save() -> None:
        cache.save(list(unsaved), np.stack([known[sha] for sha in unsaved]))
        unsaved.clear()

    try:
        with tqdm(total=total, desc=f"embed ({backbone})", unit="img", disable=not progress) as bar:
            for sha, pixels in items:
                keys.append(sha)
                if sha in known or sha in queued:
                    bar.update(1)  # cached (or a content seen before): counted, not computed
                    continue
                queued.add(sha)
                batch.append((sha, pixels))
                if len(batch) == EMBED_BATCH:  # decode it while the backbone runs on the one before
                    submitted = [(s, executor.submit(p)) for s, p in batch]
                    batch.clear()
                    if pending:
                        run(pending)
                    pending = submitted
            if pending:
                run(pending)
            if batch:
                run([(s, executor.submit(p)) for s, p in batch])
            if unsaved:
                save()
    finally:
        executor.shutdown(wait=True, cancel_futures=True)
    return np.stack([known[sha] for sha in keys]).astype(np.float32)


class EmbeddingCache:
    """Embeddings by image content (sha256), for one backbone, weights, input size.

    Stored as shards (`<hash>.npz`: `sha256` and `vectors`), each written atomically, so an
    interrupted review keeps every shard it finished.
    """

    SHARD = 256  # images per shard file

    def __init__(self, root: Path, backbone: str, weights: str, size: int, seed: int):
        self.key = {"backbone": backbone, "weights": weights_fingerprint(weights, seed),
                    "size": size, "fit": "crop", "pooling": "average", "toolkit": __version__}
        name = hashlib.sha256(json.dumps(self.key, sort_keys=True).encode()).hexdigest()[:24]
        self.folder = root / "embeddings" / name

    def load(self) -> dict[str, np.ndarray]:
        known: dict[str, np.ndarray] = {}
        for path in sorted(self.folder.glob("*.npz")) if self.folder.is_dir() else []:
            try:
                with np.load(path, allow_pickle=False) as shard:
                    known.update(zip(shard["sha256"].tolist(), shard["vectors"]))
            except (OSError, ValueError, KeyError):
                continue  # a damaged shard is computed again
        return known

    def save(self, shas: list[str], vectors: np.ndarray) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        if not (self.folder / "key.json").exists():  # what the folder's name stands for
            write_json(self.folder / "key.json", self.key)
        name = hashlib.sha256("".join(shas).encode()).hexdigest()[:24]
        with atomic_path(self.folder / f"{name}.npz") as tmp:
            np.savez(tmp, sha256=np.array(shas, dtype=str), vectors=vectors)


def pooled_backbone(backbone: str, weights: str, size: int, seed: int) -> keras.Model:
    """raw 0-255 RGB -> the backbone's preprocessing -> frozen base -> global average pool."""
    keras.utils.set_random_seed(seed)  # only `--weights none` depends on it
    spec = backbone_spec(backbone)
    base = load_backbone(backbone, weights, (size, size, 3))
    base.trainable = False
    inputs = keras.Input((size, size, 3), name="image")
    features = base(Preprocess(spec.preprocess)(inputs), training=False)
    return keras.Model(inputs, keras.layers.GlobalAveragePooling2D()(features), name="embed")
