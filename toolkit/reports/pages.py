"""A run's pages for people - report.html and MODEL_CARD.md - and the facts they show.

The facts are gathered once (:class:`RunFacts`): the run's metrics and settings from its
folder, the test images and their predictions, and where the data came from
(the archive's pack settings and, when the crawl's manifests are still beside the
source folder, the engines, queries, dates and source hosts).
"""

from __future__ import annotations

import collections
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..collect import manifest
from .metrics import RunMetrics, read_metrics

CELL_IMAGES = 60    # most images a run's page shows per confusion-matrix cell
TOP_LOSSES = 12     # the worst test images it shows

TOP_HOSTS = 5


@dataclass
class RunFacts:
    folder: Path
    metrics: RunMetrics
    config: dict
    class_names: list[str]
    train_counts: list[int]
    test_counts: list[int]
    archive: str
    pack: dict                       # the archive's meta: source, size, fit, seed, ...
    crawl: dict[str, dict] = field(default_factory=dict)  # class -> manifest summary
    y_test: np.ndarray | None = None
    probabilities: np.ndarray | None = None  # calibrated, on the test set
    test_images: object = None       # the archive's X_test (read lazily)
    test_paths: list[str] = field(default_factory=list)


def gather(folder: str | os.PathLike, archive, test_probabilities: np.ndarray | None) -> RunFacts:
    """Everything the pages show about the finished run in `folder`."""
    folder = Path(folder)
    metrics = read_metrics(folder)
    n = len(archive.class_names)
    return RunFacts(
        folder=folder, metrics=metrics, config=read_json(folder / "config.json"),
        class_names=list(archive.class_names),
        train_counts=np.bincount(archive.y_train, minlength=n).tolist(),
        test_counts=np.bincount(archive.y_test, minlength=n).tolist(),
        archive=archive.path, pack=dict(archive.meta),
        crawl=crawl_provenance(archive.meta.get("source"), archive.class_names),
        y_test=np.asarray(archive.y_test), probabilities=test_probabilities,
        test_images=_test_images(archive, test_probabilities),
        test_paths=_test_paths(archive))


def _test_images(archive, test_probabilities: np.ndarray | None):
    """The archive's X_test (read lazily), or of a dataset's streamed test split the images the
    page shows (row -> pixels), read in one ordered pass."""
    from ..data.streams import ShardSplit, pixel_batches

    if not isinstance(archive.X_test, ShardSplit):
        return archive.X_test
    rows = shown_rows(np.asarray(archive.y_test), test_probabilities)
    images = [image for batch in pixel_batches(archive.X_test, 64, rows) for image in batch]
    return dict(zip(rows.tolist(), images))


def top_loss_rows(y_test: np.ndarray, probabilities: np.ndarray) -> np.ndarray:
    """The TOP_LOSSES wrong test rows, lowest probability of the true class first."""
    p_true = probabilities[np.arange(len(y_test)), y_test]
    wrong = np.flatnonzero(probabilities.argmax(1) != y_test)
    return wrong[np.argsort(p_true[wrong])][:TOP_LOSSES]


def shown_rows(y_test: np.ndarray, probabilities: np.ndarray | None) -> np.ndarray:
    """The test rows whose images the page shows (each confusion cell's first CELL_IMAGES, the
    TOP_LOSSES worst), sorted: what a dataset's ordered pass reads for it."""
    if probabilities is None:
        return np.zeros(0, dtype=np.int64)
    predicted, keep = probabilities.argmax(1), np.zeros(len(y_test), dtype=bool)
    for i in np.unique(y_test):
        for j in np.unique(predicted):
            keep[np.flatnonzero((y_test == i) & (predicted == j))[:CELL_IMAGES]] = True
    keep[top_loss_rows(y_test, probabilities)] = True
    return np.flatnonzero(keep)


def crawl_provenance(source: str | None, class_names: list[str]) -> dict[str, dict]:
    """Per class: images, engines, queries, first and last date, top hosts, from the crawl's
    manifests (:mod:`toolkit.collect.manifest`) when they are there."""
    out: dict[str, dict] = {}
    if not source or not Path(source).is_dir():
        return out
    for name in class_names:
        path = manifest.manifest_path(source, name)
        if not path.is_file():
            continue
        entries = manifest.read_jsonl(path)
        times = sorted(str(e["time"]) for e in entries if e.get("time"))
        out[name] = {
            "images": len(entries),
            "engines": dict(collections.Counter(str(e.get("engine")) for e in entries)),
            "queries": sorted({str(e["query"]) for e in entries if e.get("query")}),
            "first": times[0][:10] if times else None, "last": times[-1][:10] if times else None,
            "top_hosts": manifest.top_hosts(entries, TOP_HOSTS),
        }
    return out


def known_confusions(metrics: RunMetrics, limit: int = 3) -> list[tuple[str, str, int, float]]:
    """The largest off-diagonal cells: (true, predicted, count, share of the true class)."""
    names, matrix = metrics["class_names"], np.array(metrics["confusion_matrix"])
    cells = [(matrix[i, j], i, j) for i in range(len(names)) for j in range(len(names))
             if i != j and matrix[i, j]]
    cells.sort(reverse=True)
    return [(names[i], names[j], int(c), float(c / max(1, matrix[i].sum())))
            for c, i, j in cells[:limit]]


def _test_paths(archive) -> list[str]:
    """Where each test image came from (its file in its class folder), in the test set's order:
    the archive's `paths_test`, or the path a dataset's records hold (one read, no image decoded)."""
    from ..data.streams import ShardSplit

    n = len(archive.y_test)
    if isinstance(archive.X_test, ShardSplit):
        return archive.X_test.paths()
    try:
        with np.load(archive.path, allow_pickle=False) as data:
            if "paths_test" in data.files:
                return [str(p) for p in data["paths_test"]][:n]
    except (OSError, ValueError):
        pass
    return [f"test image {i}" for i in range(n)]


def read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}
