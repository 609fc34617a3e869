"""Metrics, the classification report, the confusion matrix, and the plots of a run."""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

# matplotlib's Figure API, not pyplot: no global backend or figure state, nothing to close
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from sklearn.metrics import classification_report, confusion_matrix

from ..core.files import atomic_path, write_text
from .metrics import Evaluation, RunMetrics, write_metrics


def evaluate_predictions(y_true: np.ndarray, probabilities: np.ndarray,
                         class_names: Sequence[str]) -> Evaluation:
    """Accuracy, macro F1, per-class precision/recall/F1/support and the confusion matrix."""
    y_pred = np.argmax(probabilities, axis=1)
    labels = list(range(len(class_names)))
    scores = classification_report(y_true, y_pred, labels=labels, target_names=list(class_names),
                                   output_dict=True, zero_division=0)
    return {
        "accuracy": float(np.mean(y_pred == y_true)),
        "macro_f1": float(scores["macro avg"]["f1-score"]),
        "per_class": {name: {"precision": scores[name]["precision"], "recall": scores[name]["recall"],
                             "f1": scores[name]["f1-score"], "support": int(scores[name]["support"])}
                      for name in class_names},
        "confusion_matrix": confusion_matrix(y_true, y_pred, labels=labels).tolist(),
        "class_names": list(class_names),
        "test_images": len(y_true),
    }


def classification_text(evaluation: dict) -> str:
    """The per-class table (precision, recall, F1, support), as sklearn prints it."""
    names = evaluation["class_names"]
    width = max(12, *(len(n) for n in names))
    lines = [f"{'':>{width}}  precision     recall   f1-score    support", ""]
    for name in names:
        s = evaluation["per_class"][name]
        lines.append(f"{name:>{width}}  {s['precision']:9.3f}  {s['recall']:9.3f}  "
                     f"{s['f1']:9.3f}  {s['support']:9d}")
    total = evaluation["test_images"]
    lines += ["", f"{'accuracy':>{width}}  {'':9}  {'':9}  {evaluation['accuracy']:9.3f}  {total:9d}",
              f"{'macro f1':>{width}}  {'':9}  {'':9}  {evaluation['macro_f1']:9.3f}  {total:9d}"]
    return "\n".join(lines)


def confusion_text(evaluation: dict) -> str:
    """The confusion matrix with class names; rows are true classes, columns predictions."""
    names = evaluation["class_names"]
    corner = "true/predicted"
    first = max(len(corner), *(len(n) for n in names))
    width = max(5, *(len(n) for n in names))
    lines = [f"{corner:<{first}}  " + "  ".join(f"{n:>{width}}" for n in names)]
    for name, row in zip(names, evaluation["confusion_matrix"]):
        lines.append(f"{name:<{first}}  " + "  ".join(f"{v:>{width}d}" for v in row))
    return "\n".join(lines)


def plot_curves(history: dict[str, list[float]], path: str | os.PathLike, title: str = "") -> None:
    """Accuracy and loss per epoch, train against validation."""
    epochs = range(1, len(history.get("loss", [])) + 1)
    figure = Figure(figsize=(10, 4))
    axes = figure.subplots(1, 2)
    for axis, metric in zip(axes, ("accuracy", "loss")):
        for prefix, label in (("", "train"), ("val_", "validation")):
            if history.get(prefix + metric):
                axis.plot(epochs, history[prefix + metric], marker=".", label=label)
        axis.set_xlabel("epoch")
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
        axis.set_ylabel(metric)
        axis.grid(alpha=0.3)
        axis.legend()
    figure.suptitle(title)
    _save(figure, path)


def plot_confusion(evaluation: dict, path: str | os.PathLike, title: str = "") -> None:
    names = evaluation["class_names"]
    matrix = np.array(evaluation["confusion_matrix"])
    size = max(4, 0.6 * len(names) + 2)
    figure = Figure(figsize=(size + 1, size))
    axis = figure.subplots()
    image = axis.imshow(matrix, cmap="Blues")
    axis.set_xticks(range(len(names)), names, rotation=45, ha="right")
    axis.set_yticks(range(len(names)), names)
    axis.set_xlabel("predicted")
    axis.set_ylabel("true")
    for (i, j), value in np.ndenumerate(matrix):
        axis.text(j, i, str(value), ha="center", va="center",
                  color="white" if value > matrix.max() / 2 else "black")
    figure.colorbar(image, ax=axis)
    axis.set_title(title or f"accuracy {evaluation['accuracy']:.3f}")
    _save(figure, path)


def plot_comparison(rows: Sequence[dict], path: str | os.PathLike) -> None:
    """Accuracy and macro F1 per strategy, and the training time beside them."""
    names = [r["strategy"] for r in rows]
    x = np.arange(len(rows))
    figure = Figure(figsize=(11, 4))
    left, right = figure.subplots(1, 2)
    left.bar(x - 0.2, [r["accuracy"] for r in rows], 0.4, label="accuracy")
    left.bar(x + 0.2, [r["macro_f1"] for r in rows], 0.4, label="macro F1")
    left.set_xticks(x, names)
    left.set_ylim(0, 1)
    left.legend()
    left.set_title("test set")
    right.bar(x, [r["seconds"] for r in rows], 0.5, color="tab:gray")
    right.set_xticks(x, names)
    right.set_ylabel("seconds")
    right.set_title("training time")
    _save(figure, path)


def write_run_report(folder: str | os.PathLike, evaluation: Evaluation, history: dict,
                     metrics: Evaluation | RunMetrics, title: str) -> str:
    """Write a run's report files; return the text to print."""
    text = (f"{title}\n\n{classification_text(evaluation)}\n\nconfusion matrix\n"
            f"{confusion_text(evaluation)}\n")
    write_text(os.path.join(folder, "classification_report.txt"), text)
    write_metrics(folder, metrics)
    plot_confusion(evaluation, os.path.join(folder, "confusion_matrix.png"), title)
    if history.get("loss"):
        plot_curves(history, os.path.join(folder, "curves.png"), title)
    return text


def _save(figure: Figure, path: str | os.PathLike) -> None:
    figure.tight_layout()
    with atomic_path(path) as tmp:
        figure.savefig(tmp, dpi=110, format="png")
