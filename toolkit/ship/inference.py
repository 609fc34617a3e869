"""Use a saved model: the test-set report again, and labels for new images."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..core import images
from ..core.errors import ToolkitError
from ..core.sources import list_files, printable
from ..data.streams import load_data, pixel_batches

UNKNOWN = "unknown"  # the label of an image unlike every class


def find_model(run_or_model: str | os.PathLike) -> Path:
    """A run folder's model.keras, or the .keras file itself."""
    path = Path(run_or_model)
    if path.is_dir():
        path = path / "model.keras"
        if not path.exists():
            raise ToolkitError(f"{run_or_model} holds no model.keras (nor export.json); is the "
                               f"run finished? (an interrupted run continues with `toolkit train "
                               f"--resume {run_or_model}`)")
    elif not path.exists():
        raise ToolkitError(f"{run_or_model} does not exist; give a run folder, an export "
                           "folder or a .keras file")
    return path


def load_classifier(run_or_model: str | os.PathLike, *, trust_saved_model: bool = False):
    """A run folder, a .keras file or an export folder, as a :class:`serving.Classifier`:
    an export runs in its own runtime (LiteRT, TensorFlow, onnxruntime), the rest in Keras
    (in safe mode: a .keras file is data). A SavedModel export is code, and loads only with
    `trust_saved_model` (:func:`export_folder.load_export`)."""
    from .. import models
    from ..models.serving import keras_classifier
    from ..training.calibration import Calibration
    from .export_folder import is_export, load_export

    if is_export(run_or_model):
        return load_export(run_or_model, trust_saved_model=trust_saved_model)
    model_path = find_model(run_or_model)
    model, info = models.load_model(model_path)
    return keras_classifier(str(model_path), model, info, Calibration.load(model_path.parent))


@dataclass
class Evaluation:
    model: str
    data: str
    metrics: dict
    report: str


def evaluate(run_or_model: str | os.PathLike, data: str | os.PathLike | None = None, *,
             batch_size: int = 64, out: str | os.PathLike | None = None,
             trust_saved_model: bool = False) -> Evaluation:
    """The test-set report of a saved or exported model on `data` (an .npz archive or a dataset
    folder; default: the data it trained on).

    With `out`, the report files (classification_report.txt, metrics.json,
    confusion_matrix.png) are written into that folder.
    """
    from ..reports.report import evaluate_predictions, write_run_report

    classifier = load_classifier(run_or_model, trust_saved_model=trust_saved_model)
    data = data or classifier.data
    if not data:
        raise ToolkitError(f"{classifier.source} does not say which archive it was trained on; "
                           "pass --data ARCHIVE")
    archive = load_data(data)  # an .npz, or a dataset folder read by an ordered pass
    _check_input(classifier.image_shape, archive.image_shape, str(data))
    names = classifier.class_names
    if names and list(names) != archive.class_names:
        raise ToolkitError(f"{data} has classes {', '.join(archive.class_names)} but the model "
                           f"was trained on {', '.join(names)}")
    probabilities = _predict_batches(classifier, archive.X_test, batch_size)
    evaluation = evaluate_predictions(archive.y_test, probabilities, archive.class_names)
    title = f"{classifier.source} on {Path(str(data)).name} (test set)"
    if out is not None:
        Path(out).mkdir(parents=True, exist_ok=True)
        text = write_run_report(out, evaluation, {}, evaluation, title)
    else:
        from ..reports.report import classification_text, confusion_text
        text = (f"{title}\n\n{classification_text(evaluation)}\n\nconfusion matrix\n"
                f"{confusion_text(evaluation)}\n")
    return Evaluation(classifier.source, str(data), evaluation, text)


@dataclass
class Prediction:
    path: str
    label: str | None          # a class, or "unknown"
    probability: float | None  # the top class's (calibrated) probability
    probabilities: dict[str, float] | None
    error: str = ""
    closest: str | None = None  # the top class, also when the label is "unknown"


def predict(run_or_model: str | os.PathLike, inputs: list[str | os.PathLike], *,
            batch_size: int = 32, unknown: bool = True,
            trust_saved_model: bool = False) -> list[Prediction]:
    """Label every image in `inputs` (files, or folders searched recursively).

    Images are decoded, oriented, converted and resized exactly as `pack` does; a file
    that is not a usable image gets a Prediction with `error` set instead of a label.
    Probabilities are calibrated (the run's temperature); with `unknown`, an image unlike
    every class is labelled "unknown" (its scores are still given).
    """
    classifier = load_classifier(run_or_model, trust_saved_model=trust_saved_model)
    size = int(classifier.image_shape[0])
    names = classifier.class_names
    calibration = classifier.calibration
    paths = _expand(inputs)
    checks = images.Checks(min_side=1)
    results: list[Prediction] = []
    batch: list[tuple[str, np.ndarray]] = []

    def flush() -> None:
        if not batch:
            return
        probabilities, embeddings = classifier(np.stack([pixels for _, pixels in batch]))
        rejected = np.zeros(len(batch), dtype=bool)
        if calibration is not None:
            probabilities = calibration.probabilities(probabilities)
            if unknown:
                rejected = calibration.unknown(embeddings)
        for (name, _), p, out in zip(batch, probabilities, rejected):
            k = int(np.argmax(p))
            results.append(Prediction(name, UNKNOWN if out else names[k], float(p[k]),
                                      {n: float(v) for n, v in zip(names, p)}, closest=names[k]))
        batch.clear()

    for path in paths:
        name = printable(str(path))
        try:
            _, pixels = images.decode(images.read_file(path, checks), checks, size=size,
                                      fit=classifier.fit)
        except images.Unusable as e:
            flush()
            results.append(Prediction(name, None, None, None, str(e)))
            continue
        batch.append((name, pixels))
        if len(batch) == batch_size:
            flush()
    flush()
    return results


def _expand(inputs: list[str | os.PathLike]) -> list[Path]:
    if not inputs:
        raise ToolkitError("no image given; name image files or folders")
    paths: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            paths += [p for p in list_files(path) if not p.name.startswith(".")]
        elif path.exists() or path.is_symlink():
            paths.append(path)
        else:
            raise ToolkitError(f"{item} does not exist")
    return paths


def _check_input(expected: tuple, image_shape: tuple[int, int, int], data: str) -> None:
    if tuple(expected) != tuple(image_shape):
        raise ToolkitError(f"the model takes {expected[0]}x{expected[1]} images but {data} holds "
                           f"{image_shape[0]}x{image_shape[1]}; pack with --size {expected[0]}")


def _predict_batches(classifier, x, batch_size: int) -> np.ndarray:
    return np.concatenate([classifier(batch)[0] for batch in pixel_batches(x, batch_size)])
