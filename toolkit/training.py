"""Train a strategy on an archive: frozen-feature cache, checkpoints, the run folder.

What the original notebook got wrong, done right here:
- the frozen part of the backbone runs once per image; its output is cached on disk
  (keyed by archive, backbone, weights and cut) and shared by every later run;
- the backbone's preprocessing is inside the model, which takes raw 0-255 RGB;
- validation is a seeded, stratified part of the training set; the test set is used once;
- early stopping on validation loss restores the best weights;
- every epoch is checkpointed, and `resume` ends where an uninterrupted run would.

`augment` cannot be cached exactly. On a GPU the augmentation layers run inside the model
on every batch (`augment_mode="online"`); on a CPU, where that means hours, the frozen part
is computed for a fixed number of views of each training image (the original and
`views - 1` augmented copies) and each epoch draws one view per image (`"cached"`).
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import datetime
import hashlib
import json
import logging
import math
import os
import shutil
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import keras
import numpy as np
from tqdm import tqdm

from . import __version__, precision
from .archive import Archive, load_archive, row_reader
from .errors import ToolkitError
from .files import atomic_path, write_json, write_text

log = logging.getLogger("toolkit")

STRATEGIES = ("cnn", "extract", "finetune", "augment")
LEARNING_RATES = {"cnn": 1e-3, "extract": 1e-3, "finetune": 1e-4, "augment": 1e-4}
FEATURE_BATCH = 32  # images per forward pass of the frozen part


@dataclass
class TrainConfig:
    """Everything a run depends on; saved as the run's config.json."""

    data: str
    strategy: str = "finetune"
    backbone: str = "vgg16"
    weights: str = "imagenet"
    epochs: int = 50
    batch_size: int = 128
    learning_rate: float | None = None
    seed: int = 42
    validation_split: float = 0.2
    patience: int = 5
    trainable: list[str] | None = None
    head: str = "flatten"           # flatten (the study's) | pool
    views: int = 4
    augment_mode: str = "auto"      # auto | cached | online
    precision: str = "auto"         # auto | float32 | mixed
    precision_policy: str | None = None  # what `precision` resolved to (kept by resume)
    precision_reason: str | None = None
    distribute: str = "none"        # none | mirrored | multiworker
    deterministic: bool | None = None
    cache_dir: str | None = None

    def check(self) -> None:
        problems = {
            self.strategy not in STRATEGIES: f"--strategy {self.strategy}: choose from {', '.join(STRATEGIES)}",
            self.epochs < 1: f"--epochs {self.epochs}: must be at least 1",
            self.batch_size < 1: f"--batch-size {self.batch_size}: must be at least 1",
            not 0 <= self.validation_split < 1: f"--validation-split {self.validation_split}: must be in [0, 1)",
            self.patience < 1: f"--patience {self.patience}: must be at least 1",
            self.views < 1: f"--views {self.views}: must be at least 1",
            self.augment_mode not in ("auto", "cached", "online"): f"--augment-mode {self.augment_mode}: auto, cached or online",
            self.precision not in precision.PRECISIONS: f"--precision {self.precision}: {', '.join(precision.PRECISIONS)}",
            self.head not in ("flatten", "pool"): f"--head {self.head}: flatten or pool",
            self.distribute not in ("none", "mirrored", "multiworker"): f"--distribute {self.distribute}: none, mirrored or multiworker",
            self.learning_rate is not None and not self.learning_rate > 0: f"--learning-rate {self.learning_rate}: must be positive",
        }
        for bad, message in problems.items():
            if bad:
                raise ToolkitError(message)

    @classmethod
    def from_json(cls, data: dict) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


@dataclass
class Run:
    """A finished run: its folder, numbers, and the trained end-to-end model."""

    folder: Path | None  # None on a multiworker worker that is not the chief
    config: TrainConfig
    metrics: dict
    history: dict
    report: str
    model: object = field(repr=False, default=None)


# --------------------------------------------------------------------------- public API

def train(data: str | os.PathLike = "animal.npz", strategy: str = "finetune", *,
          out: str | os.PathLike | None = None, verbose: int | str = "auto",
          progress: bool = False, **options) -> Run:
    """Train `strategy` on the archive `data`; write everything into the run folder `out`.

    Options are the fields of :class:`TrainConfig` (backbone, weights, epochs, ...).
    `verbose` is Keras' fit verbosity; `progress` shows bars for feature extraction.
    """
    config = TrainConfig(data=str(Path(data).resolve()), strategy=strategy, **options)
    config.check()
    load_archive(config.data)  # fail on a bad archive before making a run folder
    if config.distribute == "multiworker" and "TF_CONFIG" not in os.environ:
        raise ToolkitError("--distribute multiworker needs TF_CONFIG (the cluster and this "
                           "worker's task) in the environment of every worker")
    _resolve_precision(config)
    worker = not _is_chief(config)
    if worker:
        out = tempfile.mkdtemp(prefix="toolkit-worker-")  # only the chief keeps a run folder
    created = out is None or not Path(out).exists()
    folder = _new_run_folder(out, config)
    write_json(folder / "config.json", asdict(config))
    try:
        with _interruptible(folder):
            run = _execute(config, folder, {}, verbose, progress)
    except ToolkitError:
        # an error before the first checkpoint (a bad weights file, no network for imagenet)
        # leaves nothing to resume, so it leaves nothing behind either
        if not (folder / "checkpoint" / "state.json").exists():
            _discard(folder, created)
        raise
    if worker:
        shutil.rmtree(folder, ignore_errors=True)
        run.folder = None
    return run


def resume(folder: str | os.PathLike, *, verbose: int | str = "auto", progress: bool = False) -> Run:
    """Continue an interrupted run from its last checkpoint."""
    folder = Path(folder)
    try:
        config = TrainConfig.from_json(json.loads((folder / "config.json").read_text()))
    except (OSError, ValueError, TypeError) as e:
        raise ToolkitError(f"{folder} is not a run folder (no readable config.json: {e})") from None
    if config.distribute == "multiworker":
        raise ToolkitError("a multiworker run cannot be resumed (only its chief kept "
                           "checkpoints); start it again on every worker")
    if config.precision_policy is None:  # a run folder from before `auto`
        _resolve_precision(config)
    state = _read_state(folder)
    if state.get("finished"):
        raise ToolkitError(f"run {folder} already finished; nothing to resume")
    with _interruptible(folder):
        return _execute(config, folder, state, verbose, progress)


class Interrupted(KeyboardInterrupt):
    """Ctrl-C during a run; `folder` is what `resume` continues."""

    def __init__(self, folder: Path):
        super().__init__(str(folder))
        self.folder = folder


@contextlib.contextmanager
def _interruptible(folder: Path) -> Iterator[None]:
    try:
        yield
    except KeyboardInterrupt:
        raise Interrupted(folder) from None


@dataclass
class Comparison:
    folder: Path
    rows: list[dict]

    def table(self) -> str:
        head = f"{'strategy':<10} {'accuracy':>9} {'macro F1':>9} {'epochs':>7} {'seconds':>9}"
        lines = [head, "-" * len(head)]
        for r in self.rows:
            lines.append(f"{r['strategy']:<10} {r['accuracy']:>9.3f} {r['macro_f1']:>9.3f} "
                         f"{r['epochs']:>7d} {r['seconds']:>9.1f}")
        return "\n".join(lines)


def compare(data: str | os.PathLike = "animal.npz", strategies: Sequence[str] = STRATEGIES, *,
            out: str | os.PathLike | None = None, verbose: int | str = "auto",
            progress: bool = False, **options) -> Comparison:
    """Train several strategies on one archive; one table and one plot of the results."""
    from .report import plot_comparison

    unknown = [s for s in strategies if s not in STRATEGIES]
    if unknown or not strategies:
        raise ToolkitError(f"--strategies {','.join(unknown) or '(none)'}: choose from "
                           f"{', '.join(STRATEGIES)}")
    folder = Path(out) if out else _timestamped(Path("runs"), "compare")
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for strategy in strategies:
        run = train(data, strategy, out=folder / strategy, verbose=verbose, progress=progress,
                    **options)
        rows.append({"strategy": strategy, "accuracy": run.metrics["accuracy"],
                     "macro_f1": run.metrics["macro_f1"], "epochs": run.metrics["epochs_run"],
                     "seconds": run.metrics["seconds"]["total"], "run": str(run.folder)})
    comparison = Comparison(folder, rows)
    write_text(folder / "comparison.txt", comparison.table() + "\n")
    write_json(folder / "comparison.json", rows)
    plot_comparison(rows, folder / "comparison.png")
    return comparison


# --------------------------------------------------------------------------- a run

def _execute(config: TrainConfig, folder: Path, state: dict, verbose, progress: bool) -> Run:
    import tensorflow as tf

    from . import models
    from .report import evaluate_predictions

    clock = Clock(state.get("seconds", {}))
    archive = load_archive(config.data)
    gpu = bool(tf.config.list_physical_devices("GPU"))
    _seed(config, gpu)
    distribution = _distribution(config.distribute)
    replicas = distribution.num_replicas_in_sync
    chief = _is_chief(config)
    train_rows, val_rows = validation_split(archive.y_train, config.validation_split, config.seed)
    global_batch = config.batch_size * replicas
    if global_batch > len(train_rows):
        log.warning("batch size %d is larger than the %d training images: each epoch is one "
                    "batch of all of them", global_batch, len(train_rows))
        global_batch = len(train_rows)
    online = config.strategy == "augment" and (
        config.augment_mode == "online" or (config.augment_mode == "auto" and gpu))
    learning_rate = config.learning_rate or LEARNING_RATES[config.strategy]

    cached = config.strategy != "cnn" and not online
    # on cached features only the frozen pass computes in the run's precision; the trainable
    # part trains in float32 (in bfloat16 it cost accuracy: README, Performance 5)
    with precision.scope("float32" if cached else config.precision_policy), distribution.scope():
        split = _build(config, archive)
        fitted = split.trainer if cached else split.model
        fitted.compile(optimizer=keras.optimizers.Adam(learning_rate),
                       loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    if cached and config.precision_policy != "float32":
        split = _with_frozen_pass_in(config.precision_policy, split, config, archive)

    clock.start("features")
    train_data, val_data, test_source = _inputs(config, archive, split, cached, train_rows,
                                                val_rows, global_batch, progress)
    clock.start("training")
    checkpoints = Checkpointer(folder / "checkpoint", config.patience, state, [train_data],
                               clock, write=chief)
    if state:
        checkpoints.restore_last(fitted)
    start_epoch = state.get("epoch", -1) + 1
    with _multiworker_workarounds(fitted, distribution, train_data):
        if start_epoch < config.epochs and not state.get("stopped_early"):
            # shuffle=False: Batches shuffles by (seed, epoch); Keras' own shuffle of the batch
            # order is not seeded per epoch, and would make a resumed run differ
            fitted.fit(train_data, validation_data=val_data, epochs=config.epochs,
                       initial_epoch=start_epoch, callbacks=[checkpoints], verbose=verbose,
                       shuffle=False)
        checkpoints.restore_best(fitted)

        clock.start("evaluation")
        probabilities = fitted.predict(Batches([Rows(test_source, None)], None, global_batch),
                                       verbose=0)
    evaluation = evaluate_predictions(archive.y_test, probabilities, archive.class_names)

    metrics = {
        **{k: evaluation[k] for k in ("accuracy", "macro_f1", "per_class", "test_images",
                                      "confusion_matrix", "class_names")},
        "strategy": config.strategy,
        "backbone": None if config.strategy == "cnn" else config.backbone,
        "weights": None if config.strategy == "cnn" else config.weights,
        "parameters": models.parameter_counts(split.model),
        "epochs_run": len(checkpoints.history.get("loss", [])),
        "best_epoch": checkpoints.best_epoch + 1,
        "stopped_early": checkpoints.stopped_early,
        "learning_rate": learning_rate,
        "global_batch_size": global_batch,
        "replicas": replicas,
        "augment_mode": ("online" if online else "cached") if config.strategy == "augment" else None,
        "device": "GPU" if gpu else "CPU",
        "precision": {"policy": config.precision_policy, "reason": config.precision_reason},
        "seconds": clock.totals(),
    }
    report = ""
    if chief:
        report = _save_run(folder, config, archive, split.model, evaluation, metrics,
                           checkpoints.history)
        checkpoints.finish()
    return Run(folder, config, metrics, checkpoints.history, report, split.model)


def _build(config: TrainConfig, archive: Archive):
    from . import models

    return models.build(config.strategy, archive.image_shape, len(archive.class_names),
                        backbone=config.backbone, weights=config.weights,
                        trainable=tuple(config.trainable or ()) or None,
                        head_kind=config.head, seed=config.seed)


def _with_frozen_pass_in(policy: str, split, config: TrainConfig, archive: Archive):
    """`split` with its frozen part computing under `policy`, and an end-to-end model made of
    that part and the trainer: the model saved predicts what the cached path predicted."""
    with precision.scope(policy):
        lower = _build(config, archive).lower
    lower.set_weights(split.lower.get_weights())
    image = keras.Input(archive.image_shape, name="image")
    x = split.model.get_layer("augment")(image) if config.strategy == "augment" else image
    model = keras.Model(image, split.trainer(lower(x)), name=split.model.name)
    return dataclasses.replace(split, model=model, lower=lower)


def _inputs(config: TrainConfig, archive: Archive, split, cached: bool, train_rows: np.ndarray,
            val_rows: np.ndarray, batch: int, progress: bool):
    """(training batches, validation batches or None, test rows): cached frozen features
    when the model has a frozen part, raw images otherwise."""
    y = archive.y_train
    if cached:
        cache = FeatureCache(config, archive, split.cut)
        source = cache.features(split.lower, archive.X_train, "X_train", progress=progress)
        test = cache.features(split.lower, archive.X_test, "X_test", progress=progress)
        views = [Rows(source, train_rows)]
        for view in range(1, config.views if config.strategy == "augment" else 1):
            views.append(Rows(cache.features(split.lower, archive.X_train, "X_train",
                                             rows=train_rows, view=view, progress=progress), None))
    else:
        source, test = archive.X_train, archive.X_test
        views = [Rows(source, train_rows)]
    train_data = Batches(views, y[train_rows], batch, seed=config.seed)
    val_data = Batches([Rows(source, val_rows)], y[val_rows], batch) if len(val_rows) else None
    return train_data, val_data, test


def _save_run(folder: Path, config: TrainConfig, archive: Archive, model, evaluation: dict,
              metrics: dict, history: dict) -> str:
    """Write the model and the report files; return the report text."""
    from . import models
    from .report import write_run_report

    models.save_model(model, folder / "model.keras", {
        "class_names": archive.class_names, "image_size": list(archive.image_shape),
        "fit": archive.meta.get("fit", "crop"), "strategy": config.strategy,
        "backbone": metrics["backbone"], "weights": metrics["weights"], "data": config.data,
        "toolkit": __version__,
        "created": datetime.datetime.now().astimezone().isoformat(timespec="seconds")})
    _write_history(folder / "history.csv", history)
    title = (config.strategy + ("" if config.strategy == "cnn" else f" / {config.backbone}")
             + f" on {Path(config.data).name}")
    return write_run_report(folder, evaluation, history, metrics, title)


class Clock:
    """Seconds per phase (features, training, evaluation), carried across resumes."""

    def __init__(self, previous: dict[str, float]):
        self.previous = dict(previous)
        self.spent: dict[str, float] = {}
        self.begun = time.monotonic()
        self.phase, self.phase_begun = "setup", self.begun

    def start(self, phase: str) -> None:
        now = time.monotonic()
        self.spent[self.phase] = self.spent.get(self.phase, 0.0) + now - self.phase_begun
        self.phase, self.phase_begun = phase, now

    def totals(self) -> dict[str, float]:
        self.start(self.phase)
        phases = set(self.previous) | set(self.spent)
        totals = {p: round(self.previous.get(p, 0.0) + self.spent.get(p, 0.0), 2)
                  for p in phases if p != "total"}
        totals["total"] = round(sum(totals.values()), 2)
        return totals


def validation_split(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded, stratified (train rows, validation rows) of the training set."""
    rows = np.arange(len(labels))
    if fraction == 0:
        return rows, rows[:0]
    from sklearn.model_selection import train_test_split
    try:
        train_rows, val_rows = train_test_split(rows, test_size=fraction, stratify=labels,
                                                random_state=seed)
    except ValueError as e:
        raise ToolkitError(f"cannot hold out a stratified validation set of {fraction:g} "
                           f"({e}); use more images or --validation-split 0") from None
    return np.sort(train_rows), np.sort(val_rows)


def _resolve_precision(config: TrainConfig) -> None:
    """Fix what `config.precision` means on this machine, for this run and its resumes."""
    import tensorflow as tf

    chosen = precision.resolve(config.precision, gpu=bool(tf.config.list_physical_devices("GPU")),
                               model="cnn" if config.strategy == "cnn" else config.backbone)
    config.precision_policy, config.precision_reason = chosen.policy, chosen.reason


def _seed(config: TrainConfig, gpu: bool) -> None:
    import tensorflow as tf

    keras.utils.set_random_seed(config.seed)
    deterministic = (not gpu) if config.deterministic is None else config.deterministic
    if deterministic:
        tf.config.experimental.enable_op_determinism()


def _distribution(name: str):
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


def _is_chief(config: TrainConfig) -> bool:
    """Whether this process writes the run folder: always, except in a multiworker run,
    where only TF_CONFIG's chief (or worker 0 of a chiefless cluster) does."""
    if config.distribute != "multiworker":
        return True
    try:
        spec = json.loads(os.environ.get("TF_CONFIG", "{}"))
        task, cluster = spec.get("task", {}), spec.get("cluster", {})
    except (ValueError, AttributeError):
        return True
    kind, index = task.get("type", "chief"), int(task.get("index", 0))
    return kind == "chief" or (kind == "worker" and index == 0 and "chief" not in cluster)


@contextlib.contextmanager
def _multiworker_workarounds(model, distribution, batches: Batches) -> Iterator[None]:
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
        model._symbolic_build(data_batch=batches[0])
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


# --------------------------------------------------------------------------- data

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
    """

    def __init__(self, views: Sequence[Rows], labels: np.ndarray | None, batch_size: int,
                 seed: int | None = None):
        super().__init__()
        self.views, self.labels, self.batch_size, self.seed = list(views), labels, batch_size, seed
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
        return math.ceil(len(self.views[0]) / self.batch_size)

    def __getitem__(self, i: int):
        positions = self.order[i * self.batch_size:(i + 1) * self.batch_size]
        choice = self.choice[positions]
        first = self.views[0].take(positions[:1])
        x = np.empty((len(positions), *first.shape[1:]), dtype=first.dtype)
        for v in np.unique(choice):
            mask = choice == v
            x[mask] = self.views[v].take(positions[mask])
        return (x,) if self.labels is None else (x, self.labels[positions])


class FeatureCache:
    """Outputs of a model's frozen part, one .npy per (archive, backbone, weights, cut, view).

    Files are written atomically and memory-mapped when read, so a run holds only the
    batches it is using, and a second run (or strategy) on the same data computes nothing.
    """

    def __init__(self, config: TrainConfig, archive: Archive, cut: str):
        self.cut = cut
        root = config.cache_dir or os.environ.get("TOOLKIT_CACHE_DIR") or os.path.join(
            os.path.expanduser("~"), ".cache", "toolkit")
        self.folder = Path(root) / "features"
        self.config, self.archive = config, archive

    def key(self, array: str, rows: np.ndarray | None, view: int) -> dict:
        c = self.config
        return {"archive": _file_fingerprint(self.archive.path), "array": array,
                "backbone": c.backbone, "weights": _weights_fingerprint(c.weights, c.seed),
                "cut": self.cut, "shape": list(self.archive.image_shape), "precision": c.precision_policy,
                "rows": None if rows is None else hashlib.sha256(np.asarray(rows).tobytes()).hexdigest(),
                "view": view, "view_seed": c.seed if view else None, "toolkit": __version__}

    def features(self, lower, images: np.ndarray, array: str, *, rows: np.ndarray | None = None,
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
                cached = _read_features(path)
                if cached.shape == shape and cached.dtype == dtype:
                    return cached
        self.folder.mkdir(parents=True, exist_ok=True)
        label = f"{self.config.backbone} {array}" + (f" view {view}" if view else "")
        stored = np.dtype(_STORED.get(dtype, dtype))
        header = {"descr": np.lib.format.dtype_to_descr(stored),
                  "fortran_order": False, "shape": shape}
        # batches are appended to the file, not written through a memory map, whose dirty
        # pages would count as the process's memory until the whole file was written
        with atomic_path(path) as tmp, open(tmp, "wb") as out:
            np.lib.format.write_array_header_2_0(out, header)
            for batch in _forward(lower, images, rows, augment_seed=self.config.seed * 1000 + view
                                  if view else None, desc=label, progress=progress):
                out.write(np.ascontiguousarray(batch, dtype=dtype).view(stored).tobytes())
        write_json(path.with_suffix(".json"), {**key, "dtype": dtype})
        return _read_features(path)


#: dtypes numpy cannot read back from a .npy (ml_dtypes' bfloat16 is saved as a void `|V2`),
#: stored as their raw bits; the sidecar .json records the real dtype.
_STORED = {"bfloat16": "uint16"}


def _read_features(path: Path) -> np.ndarray:
    """A cached .npy, memory-mapped, in the dtype its sidecar .json records."""
    import ml_dtypes

    features = np.load(path, mmap_mode="r")
    dtype = json.loads(path.with_suffix(".json").read_text()).get("dtype", features.dtype.name)
    return features.view(ml_dtypes.bfloat16) if dtype == "bfloat16" else features


def _forward(lower, images: np.ndarray, rows: np.ndarray, augment_seed: int | None, desc: str,
             progress: bool) -> Iterator[np.ndarray]:
    """Run `lower` over images[rows] in batches, optionally augmented; yield the outputs."""
    from . import models

    augment = models.augmentation(augment_seed) if augment_seed is not None else None
    images = row_reader(images)
    with tqdm(total=len(rows), desc=desc, unit="img", disable=not progress) as bar:
        for start in range(0, len(rows), FEATURE_BATCH):
            chunk = rows[start:start + FEATURE_BATCH]
            n = len(chunk)
            # a short last batch is padded: one input shape, one trace of the graph
            x = np.asarray(images[np.pad(chunk, (0, FEATURE_BATCH - n), mode="edge")])
            if augment is not None:
                x = augment(x.astype("float32"), training=True)
            yield np.asarray(lower.predict_on_batch(x))[:n]
            bar.update(n)


def _file_fingerprint(path: str) -> str:
    st = os.stat(path)
    return f"{os.path.realpath(path)}:{st.st_size}:{st.st_mtime_ns}"


def _weights_fingerprint(weights: str, seed: int) -> str:
    if weights == "none":
        return f"none:seed{seed}"
    if weights == "imagenet":
        return "imagenet"
    return "file:" + _file_fingerprint(weights)


# --------------------------------------------------------------------------- checkpoints

class Checkpointer(keras.callbacks.Callback):
    """Early stopping on validation loss, with its state and the weights saved every epoch.

    `checkpoint/last.npz` holds the weights and optimizer state after the last epoch,
    `checkpoint/best.npz` the best weights so far, `checkpoint/state.json` the rest;
    each is replaced atomically, so a kill at any moment leaves a consistent checkpoint.
    """

    def __init__(self, folder: Path, patience: int, state: dict, datasets: Sequence[Batches],
                 clock: Clock, write: bool = True):
        super().__init__()
        self.folder, self.patience, self.datasets, self.write = folder, patience, datasets, write
        self.clock = clock
        self.best = state.get("best", math.inf)
        self.best_epoch = state.get("best_epoch", -1)
        self.wait = state.get("wait", 0)
        self.history: dict[str, list[float]] = state.get("history", {})
        self.stopped_early = state.get("stopped_early", False)
        if write:
            folder.mkdir(parents=True, exist_ok=True)

    def on_epoch_begin(self, epoch, logs=None):
        for dataset in self.datasets:
            dataset.set_epoch(epoch)

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        for name, value in logs.items():
            self.history.setdefault(name, []).append(float(value))
        current = logs.get("val_loss", logs.get("loss", math.inf))
        if current < self.best:
            self.best, self.best_epoch, self.wait = float(current), epoch, 0
            if self.write:
                _save_arrays(self.folder / "best.npz", self.model.get_weights())
        else:
            self.wait += 1
        if self.wait >= self.patience:
            self.stopped_early = True
            self.model.stop_training = True
        if self.write:
            optimizer = [np.asarray(v) for v in self.model.optimizer.variables]
            _save_arrays(self.folder / "last.npz", self.model.get_weights(), optimizer)
            write_json(self.folder / "state.json", {
                "epoch": epoch, "best": self.best, "best_epoch": self.best_epoch,
                "wait": self.wait, "stopped_early": self.stopped_early, "history": self.history,
                "seconds": self.clock.totals(), "finished": False})

    def restore_last(self, model) -> None:
        weights, optimizer = _load_arrays(self.folder / "last.npz")
        model.set_weights(weights)
        model.optimizer.build(model.trainable_variables)
        if len(optimizer) != len(model.optimizer.variables):
            raise ToolkitError(f"checkpoint in {self.folder} does not fit this model")
        for variable, value in zip(model.optimizer.variables, optimizer):
            variable.assign(value)

    def restore_best(self, model) -> None:
        best = self.folder / "best.npz"
        if best.exists():
            model.set_weights(_load_arrays(best)[0])

    def finish(self) -> None:
        """Mark the run finished and drop the weight files (the model is saved)."""
        state = _read_state(self.folder.parent)
        write_json(self.folder / "state.json", {**state, "finished": True})
        for name in ("last.npz", "best.npz"):
            with contextlib.suppress(OSError):
                (self.folder / name).unlink()


def _save_arrays(path: Path, weights: list, optimizer: list | None = None) -> None:
    arrays = {f"w{i:04d}": np.asarray(w) for i, w in enumerate(weights)}
    arrays.update({f"o{i:04d}": np.asarray(v) for i, v in enumerate(optimizer or [])})
    with atomic_path(path) as tmp:
        np.savez(tmp, **arrays)


def _load_arrays(path: Path) -> tuple[list, list]:
    try:
        with np.load(path, allow_pickle=False) as data:
            names = sorted(data.files)
            return ([data[n] for n in names if n.startswith("w")],
                    [data[n] for n in names if n.startswith("o")])
    except (OSError, ValueError) as e:
        raise ToolkitError(f"checkpoint {path} is missing or damaged ({e}); start a new run") from None


def _read_state(folder: Path) -> dict:
    path = folder / "checkpoint" / "state.json"
    if not path.exists():
        return {}
    try:
        return json.loads(path.read_text())
    except ValueError:
        return {}


# --------------------------------------------------------------------------- run folder

def _new_run_folder(out: str | os.PathLike | None, config: TrainConfig) -> Path:
    if out is None:
        name = config.strategy if config.strategy == "cnn" else f"{config.strategy}-{config.backbone}"
        return _timestamped(Path("runs"), name)
    folder = Path(out)
    if (folder / "config.json").exists():
        raise ToolkitError(f"{folder} already holds a run; continue it with --resume {folder} "
                           "or choose another --out")
    if folder.exists() and any(folder.iterdir()):
        raise ToolkitError(f"--out {folder} is not empty; choose a new folder")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _discard(folder: Path, created: bool) -> None:
    """Remove what a failed run wrote: the folder if the run made it, else its contents."""
    if created:
        shutil.rmtree(folder, ignore_errors=True)
        return
    for child in folder.iterdir():
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child, ignore_errors=True)
        else:
            child.unlink(missing_ok=True)


def _timestamped(parent: Path, name: str) -> Path:
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    for n in range(1000):
        folder = parent / (f"{name}-{stamp}" + (f"-{n}" if n else ""))
        try:
            folder.mkdir(parents=True)
            return folder
        except FileExistsError:
            continue
    raise ToolkitError(f"cannot create a run folder under {parent}")


def _write_history(path: Path, history: dict[str, list[float]]) -> None:
    names = sorted(history)
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["epoch", *names])
        for i in range(len(history.get("loss", []))):
            writer.writerow([i + 1, *(f"{history[n][i]:.6g}" for n in names)])
