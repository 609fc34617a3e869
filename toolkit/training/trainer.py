"""Train a strategy on an archive or a sharded dataset: the public API (train, resume) and a
run's steps.

The parts live beside it: inputs.py (what the fit reads), batches.py, streams.py (a
dataset's shards as tf.data), features.py (the frozen-feature cache),
checkpoints.py, distribution.py, precision.py and runs.py (the run folder);
comparison.py trains several strategies with it.

What the original notebook got wrong, done right here:
- the frozen part of the backbone runs once per image; its output is cached on disk
  (keyed by archive, backbone, weights, cut and precision) and shared by every later run;
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

import logging
import os
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import keras
import numpy as np

from ..core.errors import OptionError, ToolkitError
from ..core.locks import holding
from ..data.npz import Archive
from ..data.streams import ShardData, load_data
from ..reports.metrics import EVALUATION_FIELDS, CalibrationSummary, RunMetrics
from . import interrupts, precision
from .batches import Inputs, validation_split
from .checkpoints import Checkpointer, read_state
from .config import LEARNING_RATES, TrainConfig
from .distribution import distribution_strategy, is_chief, multiworker_workarounds
from .inputs import prepare_inputs
from .interrupts import Interrupted, interruptible  # noqa: F401 (Interrupted: the API's name)
from .runs import (
    Clock,
    Resolved,
    discard,
    new_run_folder,
    read_config,
    save_run,
    write_config,
    write_pages,
)

log = logging.getLogger("toolkit")


@dataclass
class Run:
    """A finished run: its folder, numbers, and the trained end-to-end model."""

    folder: Path | None  # None on a multiworker worker that is not the chief
    config: TrainConfig
    metrics: RunMetrics
    history: dict
    report: str
    model: object = field(repr=False, default=None)


# --------------------------------------------------------------------------- public API

_DEFAULT = TrainConfig  # a dataclass keeps its fields' defaults as class attributes


def train(data: str | os.PathLike = _DEFAULT.data, strategy: str = _DEFAULT.strategy, *,
          backbone: str = _DEFAULT.backbone, weights: str = _DEFAULT.weights,
          epochs: int = _DEFAULT.epochs, batch_size: int = _DEFAULT.batch_size,
          learning_rate: float | None = _DEFAULT.learning_rate, seed: int = _DEFAULT.seed,
          validation_split: float = _DEFAULT.validation_split, patience: int = _DEFAULT.patience,
          trainable: Sequence[str] | None = _DEFAULT.trainable, head: str = _DEFAULT.head,
          views: int = _DEFAULT.views, augment_mode: str = _DEFAULT.augment_mode,
          precision: str = _DEFAULT.precision, distribute: str = _DEFAULT.distribute,
          deterministic: bool | None = _DEFAULT.deterministic,
          cache_dir: str | os.PathLike | None = _DEFAULT.cache_dir,
          out: str | os.PathLike | None = None, verbose: int | str = "auto",
          progress: bool = False) -> Run:
    """Train `strategy` on the archive `data`; write everything into the run folder `out`.

    Bad values raise :class:`~toolkit.errors.OptionError` naming the parameter, before
    anything is written.

    Args (the command line's flags are the same names with dashes):
        data: what `pack` made: an .npz archive, or a dataset folder (`--format tfrecord`),
            whose shards are streamed (memory stays flat in the number of images).
        strategy: cnn (the small CNN), extract (frozen backbone + head), finetune (+ the
            backbone's last block trained) or augment (finetune with augmentation).
        backbone: the keras.applications base of extract/finetune/augment (config.BACKBONES).
        weights: "imagenet" (Keras' download and cache), "none" (random) or a weights file.
        epochs: the most epochs; early stopping on validation loss may end sooner.
        batch_size: images per batch, per replica when distributed.
        learning_rate: Adam's step; None is 1e-3 for cnn/extract and 1e-4 for finetune/augment.
        seed: same seed, same result (split, initial weights, batch order, augmentation).
        validation_split: stratified fraction of the training set held out for validation.
        patience: epochs without a better validation loss before stopping.
        trainable: backbone layers to fine-tune (names or fnmatch patterns); None: the last block.
        head: "flatten" (the study's) or "pool" (global average pooling first).
        views: augment, cached mode: feature views per training image (the original + views-1).
        augment_mode: "online" (on every batch), "cached" (fixed views) or "auto" (online on a GPU).
        precision: "auto" (mixed where it is faster: a GPU, a CPU whose bfloat16 units speed
            this model up), "float32", or "mixed" (float16 on a GPU, bfloat16 on a CPU).
        distribute: "none", "mirrored" (every local GPU) or "multiworker" (TF_CONFIG's machines).
        deterministic: deterministic TensorFlow ops; None: on for a CPU, off for a GPU.
        cache_dir: where frozen features are cached; None: $TOOLKIT_CACHE_DIR or ~/.cache/toolkit.
        out: the run folder (new or empty); None: runs/<strategy>-<backbone>-<time>.
        verbose: Keras' fit verbosity.
        progress: progress bars while computing frozen features.
    """
    config = TrainConfig.from_arguments(locals())  # every parameter but out, verbose, progress
    config.check()
    data = load_data(config.data)  # fail on a bad archive or dataset before making a run folder
    if config.distribute == "multiworker" and "TF_CONFIG" not in os.environ:
        raise OptionError("distribute", "multiworker", "needs TF_CONFIG (the cluster and this "
                          "worker's task) in the environment of every worker")
    resolved = _resolve(config)
    worker = not is_chief(config.distribute)
    if worker:
        out = tempfile.mkdtemp(prefix="toolkit-worker-")  # only the chief keeps a run folder
    created = out is None or not Path(out).exists()
    folder = new_run_folder(out, config)
    write_config(folder, config, resolved)
    try:
        with holding(folder, f"the run {folder}"), interruptible(folder):
            run = _execute(config, resolved, folder, {}, verbose, progress, data)
    except ToolkitError:
        # an error before the first checkpoint (a bad weights file, no network for imagenet)
        # leaves nothing to resume, so it leaves nothing behind either
        if not (folder / "checkpoint" / "state.json").exists():
            discard(folder, created)
        raise
    finally:
        if worker:  # a worker's folder is scratch, whatever happens
            shutil.rmtree(folder, ignore_errors=True)
    if worker:
        run.folder = None
    return run


def resume(folder: str | os.PathLike, *, verbose: int | str = "auto", progress: bool = False) -> Run:
    """Continue an interrupted run from its last checkpoint."""
    folder = Path(folder)
    with holding(folder, f"the run {folder}"):  # two resumes of one run would mix checkpoints
        return _resume_held(folder, verbose, progress)


def _resume_held(folder: Path, verbose: int | str, progress: bool) -> Run:
    config, resolved = read_config(folder)
    config.check()
    if config.distribute == "multiworker":
        raise ToolkitError("a multiworker run cannot be resumed (only its chief kept "
                           "checkpoints); start it again on every worker")
    if resolved is None:  # a run folder from before `auto`: resolved once
        resolved = _resolve(config)
        write_config(folder, config, resolved)
    state = read_state(folder)
    if state.get("finished"):
        raise ToolkitError(f"run {folder} already finished; nothing to resume")
    with interruptible(folder):
        return _execute(config, resolved, folder, state, verbose, progress)


# --------------------------------------------------------------------------- a run

@dataclass
class _Plan:
    """What a run decides before it builds anything: devices, rows, batch size, mode, and the
    precision it resolved to when it began."""

    gpu: bool
    distribution: object          # a tf.distribute.Strategy
    replicas: int
    chief: bool
    train_rows: np.ndarray
    val_rows: np.ndarray
    global_batch: int
    online: bool                  # augment on every batch, inside the model
    learning_rate: float
    precision: precision.Precision


def _execute(config: TrainConfig, resolved: Resolved, folder: Path, state: dict, verbose,
             progress: bool, data: Archive | ShardData | None = None) -> Run:

    clock = Clock(state.get("seconds", {}))
    archive = load_data(config.data) if data is None else data  # shards are checked once
    plan = _plan(config, archive, resolved)
    split, fitted, cached = _build(config, archive, plan)

    clock.start("features")
    inputs = prepare_inputs(config, archive, split, cached, plan.precision.policy, plan.train_rows,
                            plan.val_rows, plan.global_batch, plan.replicas, plan.distribution, progress)
    clock.start("training")
    checkpoints = Checkpointer(folder / "checkpoint", config.patience, state, [inputs.train],
                               clock, write=plan.chief)
    probabilities, calibrated = _fit_and_predict(config, archive, plan, fitted, state, checkpoints,
                                                 inputs, clock, verbose)
    evaluation, metrics = _metrics(config, archive, plan, split, checkpoints, probabilities,
                                   calibrated.summary, clock)
    report = ""
    if plan.chief:
        report = save_run(folder, config, archive, split.model, evaluation, metrics,
                          checkpoints.history)
        calibrated.calibration.save(folder)
        write_pages(folder, archive, calibrated.test_probabilities)
        checkpoints.finish()
    return Run(folder, config, metrics, checkpoints.history, report, split.model)


def _plan(config: TrainConfig, archive: Archive, resolved: Resolved) -> _Plan:
    """Seed everything, pick the devices, split off validation, size the global batch."""
    import tensorflow as tf

    gpu = bool(tf.config.list_physical_devices("GPU"))
    _seed(config, gpu)
    distribution = distribution_strategy(config.distribute)
    replicas = distribution.num_replicas_in_sync
    train_rows, val_rows = validation_split(archive.y_train, config.validation_split, config.seed)
    global_batch = config.batch_size * replicas
    if global_batch > len(train_rows):
        log.warning("batch size %d is larger than the %d training images: each epoch is one "
                    "batch of all of them", global_batch, len(train_rows))
        global_batch = len(train_rows)
    if global_batch < replicas:
        raise OptionError("distribute", config.distribute, f"{len(train_rows)} training images "
                          f"cannot be shared by {replicas} replicas")
    global_batch -= global_batch % replicas  # a batch the replicas share evenly
    online = config.strategy == "augment" and (
        config.augment_mode == "online" or (config.augment_mode == "auto" and gpu))
    return _Plan(gpu, distribution, replicas, is_chief(config.distribute), train_rows, val_rows,
                 global_batch, online, config.learning_rate or LEARNING_RATES[config.strategy],
                 resolved.precision)


def _build(config: TrainConfig, archive: Archive, plan: _Plan):
    """(split, the model that is fitted, whether it fits on cached features), compiled.

    On cached features only the frozen pass computes in the run's precision policy; the
    trainable part trains in float32 (in bfloat16 it cost accuracy: README, Performance 7).
    """
    cached = config.strategy != "cnn" and not plan.online
    policy = plan.precision.policy
    with precision.scope("float32" if cached else policy), plan.distribution.scope():
        split = _build_split(config, archive)
        fitted = split.trainer if cached else split.model
        fitted.compile(optimizer=keras.optimizers.Adam(plan.learning_rate),
                       loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    if cached and policy != "float32":
        split = _with_frozen_pass_in(policy, split, config, archive, plan)
    return split, fitted, cached


def _build_split(config: TrainConfig, archive: Archive):
    from .. import models

    return models.build(config.strategy, archive.image_shape, len(archive.class_names),
                        backbone=config.backbone, weights=config.weights,
                        trainable=tuple(config.trainable or ()) or None,
                        head_kind=config.head, seed=config.seed)


def _with_frozen_pass_in(policy: str, split, config: TrainConfig, archive: Archive, plan: _Plan):
    """`split` with its frozen part computing under `policy`, and an end-to-end model made of
    that part and the trainer: the model saved predicts what the cached path predicted."""
    with precision.scope(policy), plan.distribution.scope():  # weights: set just below
        lower = _build_split(replace(config, weights="none"), archive).lower
    lower.set_weights(split.lower.get_weights())
    image = keras.Input(archive.image_shape, name="image")
    x = split.model.get_layer("augment")(image) if config.strategy == "augment" else image
    model = keras.Model(image, split.trainer(lower(x)), name=split.model.name)
    return replace(split, model=model, lower=lower)


def _resolve(config: TrainConfig) -> Resolved:
    """What `config.precision` means on this machine, for this run and its resumes."""
    import tensorflow as tf

    return Resolved(precision.resolve(
        config.precision, gpu=bool(tf.config.list_physical_devices("GPU")),
        model="cnn" if config.strategy == "cnn" else config.backbone))


def _fit_and_predict(config: TrainConfig, archive: Archive | ShardData, plan: _Plan, fitted,
                     state: dict, checkpoints: Checkpointer, inputs: Inputs, clock: Clock, verbose):
    """Fit from the last checkpoint (if any) to the end, keep the best weights, then predict
    the test set once while fitting the calibration (temperature, unknown threshold) on
    validation. Returns (test probabilities, calibration.Fitted)."""
    from .calibration import calibrate

    if state:
        checkpoints.restore_last(fitted)
    start_epoch = state.get("epoch", -1) + 1
    with multiworker_workarounds(fitted, plan.distribution, inputs.first_batch):
        if start_epoch < config.epochs and not state.get("stopped_early"):
            # shuffle=False: Batches shuffles by (seed, epoch); Keras' own shuffle of the batch
            # order is not seeded per epoch, and would make a resumed run differ
            train_data, steps = inputs.fit_data(start_epoch, config.epochs)
            fitted.fit(train_data, validation_data=inputs.validation, epochs=config.epochs,
                       initial_epoch=start_epoch, steps_per_epoch=steps, verbose=verbose,
                       shuffle=False,
                       # after the checkpoints: a signal at an epoch's end stops once it is saved
                       callbacks=[checkpoints, interrupts.StopOnSignal()])
        checkpoints.restore_best(fitted)

        clock.start("evaluation")
        calibrated = calibrate(fitted, inputs.reference, inputs.validation_images,
                               archive.y_train[plan.val_rows], inputs.test, archive.y_test,
                               seed=config.seed)
        return calibrated.uncalibrated, calibrated


def _metrics(config: TrainConfig, archive: Archive, plan: _Plan, split,
             checkpoints: Checkpointer, probabilities: np.ndarray,
             calibration: CalibrationSummary, clock: Clock) -> tuple[dict, RunMetrics]:
    """(the test-set evaluation, the run's metrics.json)."""
    from .. import models
    from ..reports.report import evaluate_predictions

    evaluation = evaluate_predictions(archive.y_test, probabilities, archive.class_names)
    metrics: RunMetrics = {
        **{k: evaluation[k] for k in EVALUATION_FIELDS},
        "strategy": config.strategy,
        "backbone": None if config.strategy == "cnn" else config.backbone,
        "weights": None if config.strategy == "cnn" else config.weights,
        "parameters": models.parameter_counts(split.model),
        "epochs_run": len(checkpoints.history.get("loss", [])),
        "best_epoch": checkpoints.best_epoch + 1,
        "stopped_early": checkpoints.stopped_early,
        "learning_rate": plan.learning_rate,
        "global_batch_size": plan.global_batch,
        "replicas": plan.replicas,
        "augment_mode": ("online" if plan.online else "cached") if config.strategy == "augment" else None,
        "device": "GPU" if plan.gpu else "CPU",
        "precision": {"policy": plan.precision.policy, "reason": plan.precision.reason},
        "seconds": clock.totals(),
        "calibration": calibration,
    }
    return evaluation, metrics


def _seed(config: TrainConfig, gpu: bool) -> None:
    import tensorflow as tf

    keras.utils.set_random_seed(config.seed)
    deterministic = (not gpu) if config.deterministic is None else config.deterministic
    if deterministic:
        tf.config.experimental.enable_op_determinism()
    else:  # an earlier run in this process (a notebook) may have turned it on
        from tensorflow.python.framework.config import disable_op_determinism

        disable_op_determinism()
