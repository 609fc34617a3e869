"""Checkpoints and resume state: weights, optimizer and early-stopping state after every epoch."""

from __future__ import annotations

import contextlib
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import keras
import numpy as np

from ..core.errors import ToolkitError, first_line
from ..core.files import atomic_path, write_json
from .batches import Batches

if TYPE_CHECKING:
    from .runs import Clock


class Checkpointer(keras.callbacks.Callback):
    """Early stopping on validation loss, with its state and the weights saved every epoch.

    `checkpoint/last.npz` holds the weights, the optimizer state and the random layers'
    state (online augmentation draws on from where it was) after the last epoch,
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
                save_arrays(self.folder / "best.npz", self.model.get_weights())
        else:
            self.wait += 1
        if self.wait >= self.patience:
            self.stopped_early = True
            self.model.stop_training = True
        if self.write:
            optimizer = [np.asarray(v) for v in self.model.optimizer.variables]
            seeds = [np.asarray(v) for v in random_state(self.model)]
            save_arrays(self.folder / "last.npz", self.model.get_weights(), optimizer, seeds)
            write_json(self.folder / "state.json", {
                "epoch": epoch, "best": self.best, "best_epoch": self.best_epoch,
                "wait": self.wait, "stopped_early": self.stopped_early, "history": self.history,
                "seconds": self.clock.totals(), "finished": False})

    def restore_last(self, model) -> None:
        weights, optimizer, seeds = load_arrays(self.folder / "last.npz")
        model.set_weights(weights)
        model.optimizer.build(model.trainable_variables)
        if len(optimizer) != len(model.optimizer.variables) or len(seeds) != len(random_state(model)):
            raise ToolkitError(f"checkpoint in {self.folder} does not fit this model")
        for variable, value in zip([*model.optimizer.variables, *random_state(model)],
                                   [*optimizer, *seeds]):
            variable.assign(value)

    def restore_best(self, model) -> None:
        best = self.folder / "best.npz"
        if best.exists():
            model.set_weights(load_arrays(best)[0])

    def finish(self) -> None:
        """Mark the run finished and drop the weight files (the model is saved)."""
        state = read_state(self.folder.parent)
        write_json(self.folder / "state.json", {**state, "finished": True})
        for name in ("last.npz", "best.npz"):
            with contextlib.suppress(OSError):
                (self.folder / name).unlink()


def random_state(model) -> list:
    """The state of the model's random layers (augmentation's seed generators): not among
    its weights, yet what the next epoch's augmentations depend on."""
    return [v for v in model.variables if v.path.endswith("seed_generator_state")]


def save_arrays(path: Path, weights: list, optimizer: list | None = None,
                seeds: list | None = None) -> None:
    arrays = {f"w{i:04d}": np.asarray(w) for i, w in enumerate(weights)}
    arrays.update({f"o{i:04d}": np.asarray(v) for i, v in enumerate(optimizer or [])})
    arrays.update({f"s{i:04d}": np.asarray(v) for i, v in enumerate(seeds or [])})
    with atomic_path(path) as tmp:
        np.savez(tmp, **arrays)


def load_arrays(path: Path) -> tuple[list, list, list]:
    """(weights, optimizer state, random layers' state) saved by save_arrays."""
    try:
        with np.load(path, allow_pickle=False) as data:
            names = sorted(data.files)
            return tuple([data[n] for n in names if n.startswith(kind)] for kind in "wos")
    except (OSError, ValueError) as e:
        raise ToolkitError(f"checkpoint {path} is missing or damaged ({e}); start a new run") from None


def read_state(folder: Path) -> dict:
    """The checkpoint state of the run in `folder` ({} before its first epoch)."""
    path = folder / "checkpoint" / "state.json"
    if not path.exists():
        return {}
    try:
        state = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        state = first_line(e)
    if not isinstance(state, dict):  # written atomically: only a hand or a disk damages it
        detail = state if isinstance(state, str) else "not a JSON object"
        raise ToolkitError(f"{path} is damaged ({detail}); this run cannot be resumed, "
                           "start a new one")
    return state

