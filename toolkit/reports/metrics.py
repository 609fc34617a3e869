"""A run's metrics.json: the one definition of its fields, and the functions that write and read it.

Training writes it, `toolkit evaluate --out` writes an evaluation's share of it, and the
pages, the model card, `compare` and the command line read it: each through the names
below, checked here, so a field renamed on one side fails where it is written.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TypedDict

from ..core.errors import ToolkitError
from ..core.files import write_json

FILE = "metrics.json"


class ClassScores(TypedDict):
    precision: float
    recall: float
    f1: float
    support: int


class Evaluation(TypedDict):
    """A model's scores on a test set (what `toolkit evaluate --out` writes)."""

    accuracy: float
    macro_f1: float
    per_class: dict[str, ClassScores]
    test_images: int
    confusion_matrix: list[list[int]]   # rows: true classes, columns: predictions
    class_names: list[str]


class Parameters(TypedDict):
    total: int
    trainable: int
    frozen: int


class PrecisionUsed(TypedDict):
    policy: str   # the Keras dtype policy the run resolved `precision` to
    reason: str


class CalibrationSummary(TypedDict):
    """What the calibration fitted on validation data, and how it did on the test set."""

    temperature: float
    distance_threshold: float | None  # None: never unknown
    neighbours: int
    validation_images: int
    test_ece_before: float
    test_ece_after: float
    test_rejected_as_unknown: float


class RunMetrics(Evaluation):
    """A training run's metrics.json: its evaluation, and how the run went."""

    strategy: str
    backbone: str | None          # None for cnn
    weights: str | None           # None for cnn
    parameters: Parameters
    epochs_run: int
    best_epoch: int               # 1-based
    stopped_early: bool
    learning_rate: float
    global_batch_size: int
    replicas: int
    augment_mode: str | None      # online | cached for augment, else None
    device: str                   # GPU | CPU
    precision: PrecisionUsed
    seconds: dict[str, float]     # per phase (features, training, evaluation, ...) and total
    calibration: CalibrationSummary  # written by toolkit/training/calibration.py


#: The evaluation's fields in the order metrics.json lists them.
EVALUATION_FIELDS = tuple(Evaluation.__annotations__)


def missing_fields(metrics: dict) -> list[str]:
    """The fields `metrics` lacks: of a run's when it names a strategy, else of an evaluation's."""
    schema = RunMetrics if "strategy" in metrics else Evaluation
    return sorted(schema.__required_keys__ - set(metrics))


def write_metrics(folder: str | os.PathLike, metrics: Evaluation | RunMetrics) -> Path:
    """Write `folder`/metrics.json; a field missing is a bug in the writer (ValueError)."""
    lacking = missing_fields(metrics)
    if lacking:
        raise ValueError(f"metrics.json would lack {', '.join(lacking)}")
    path = Path(folder) / FILE
    write_json(path, metrics)
    return path


def read_metrics(folder: str | os.PathLike) -> RunMetrics:
    """The metrics.json of the training run in `folder`, with every field of a run's."""
    path = Path(folder) / FILE
    try:
        metrics = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ToolkitError(f"{path} cannot be read ({e}); train the run again") from None
    if not isinstance(metrics, dict) or "strategy" not in metrics or missing_fields(metrics):
        lacking = missing_fields(metrics) if isinstance(metrics, dict) else []
        raise ToolkitError(f"{path} is not a training run's metrics (it lacks "
                           f"{', '.join(lacking or ['strategy'])}); train the run again")
    return metrics
