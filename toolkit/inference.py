"""Use a saved model: the test-set report again, and labels for new images."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import images
from .archive import list_files, load_archive, printable, row_reader
from .errors import ToolkitError


def find_model(run_or_model: str | os.PathLike) -> Path:
    """A run folder's model.keras, or the .keras file itself."""
    path = Path(run_or_model)
    if path.is_dir():
        path = path / "model.keras"
        if not path.exists():
            raise ToolkitError(f"{run_or_model} holds no model.keras; is the run finished? "
                               f"(an interrupted run continues with `toolkit train --resume "
                               f"{run_or_model}`)")
    elif not path.exists():
        raise ToolkitError(f"{run_or_model} does not exist; give a run folder or a .keras file")
    return path


@dataclass
class Evaluation:
    model: str
    data: str
    metrics: dict
    report: str


def evaluate(run_or_model: str | os.PathLike, data: str | os.PathLike | None = None, *,
             batch_size: int = 64, out: str | os.PathLike | None = None) -> Evaluation:
    """The test-set report of a saved model on `data` (default: the archive it trained on).

    With `out`, the report files (classification_report.txt, metrics.json,
    confusion_matrix.png) are written into that folder.
    """
    from . import models
    from .report import evaluate_predictions, write_run_report

    model_path = find_model(run_or_model)
    model, info = models.load_model(model_path)
    data = data or info.get("data")
    if not data:
        raise ToolkitError(f"{model_path} does not say which archive it was trained on; "
                           "pass --data ARCHIVE")
    archive = load_archive(data)
    _check_input(model, archive.image_shape, str(data))
    names = info.get("class_names")
    if names and list(names) != archive.class_names:
        raise ToolkitError(f"{data} has classes {', '.join(archive.class_names)} but the model "
                           f"was trained on {', '.join(names)}")
    if model.output_shape[-1] != len(archive.class_names):
        raise ToolkitError(f"the model predicts {model.output_shape[-1]} classes; {data} has "
                           f"{len(archive.class_names)}")
    probabilities = _predict_batches(model, archive.X_test, batch_size)
    evaluation = evaluate_predictions(archive.y_test, probabilities, archive.class_names)
    title = f"{model_path} on {Path(str(data)).name} (test set)"
    if out is not None:
        Path(out).mkdir(parents=True, exist_ok=True)
        text = write_run_report(out, evaluation, {}, evaluation, title)
    else:
        from .report import classification_text, confusion_text
        text = (f"{title}\n\n{classification_text(evaluation)}\n\nconfusion matrix\n"
                f"{confusion_text(evaluation)}\n")
    return Evaluation(str(model_path), str(data), evaluation, text)


@dataclass
class Prediction:
    path: str
    label: str | None
    probability: float | None
    probabilities: dict[str, float] | None
    error: str = ""


def predict(run_or_model: str | os.PathLike, inputs: list[str | os.PathLike], *,
            batch_size: int = 32) -> list[Prediction]:
    """Label every image in `inputs` (files, or folders searched recursively).

    Images are decoded, oriented, converted and resized exactly as `pack` does; a file
    that is not a usable image gets a Prediction with `error` set instead of a label.
    """
    from . import models

    model, info = models.load_model(find_model(run_or_model))
    size = int(model.input_shape[1])
    fit = info.get("fit", "crop")
    names = info.get("class_names") or [str(i) for i in range(model.output_shape[-1])]
    paths = _expand(inputs)
    checks = images.Checks(min_side=1)
    results: list[Prediction] = []
    batch: list[tuple[str, np.ndarray]] = []

    def flush() -> None:
        if not batch:
            return
        probabilities = model.predict_on_batch(np.stack([pixels for _, pixels in batch]))
        for (name, _), p in zip(batch, np.asarray(probabilities)):
            k = int(np.argmax(p))
            results.append(Prediction(name, names[k], float(p[k]),
                                      {n: float(v) for n, v in zip(names, p)}))
        batch.clear()

    for path in paths:
        name = printable(str(path))
        try:
            _, pixels = images.decode(images.read_file(path, checks), checks, size=size, fit=fit)
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


def _check_input(model, image_shape: tuple[int, int, int], data: str) -> None:
    expected = tuple(model.input_shape[1:])
    if expected != tuple(image_shape):
        raise ToolkitError(f"the model takes {expected[0]}x{expected[1]} images but {data} holds "
                           f"{image_shape[0]}x{image_shape[1]}; pack with --size {expected[0]}")


def _predict_batches(model, x: np.ndarray, batch_size: int) -> np.ndarray:
    x = row_reader(x)
    out = [np.asarray(model.predict_on_batch(np.asarray(x[i:i + batch_size])))
           for i in range(0, len(x), batch_size)]
    return np.concatenate(out)
