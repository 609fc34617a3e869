"""train() on tiny data, with real Keras fits: what each strategy learns and writes, seeded and cached."""

import json

import numpy as np
import pytest

from helpers import LEARNS, NAMES, QUICK, write_archive
from toolkit import models
from toolkit.ship.inference import evaluate
from toolkit.training.trainer import train

pytestmark = pytest.mark.usefixtures("feature_cache")  # each test's feature cache in its tmp_path


def test_cnn_learns_a_toy_set(tmp_path):
    data = write_archive(tmp_path / "shapes.npz", n_per_class=40, size=24)
    run = train(data, "cnn", out=tmp_path / "run", verbose=0, **LEARNS)
    assert run.metrics["accuracy"] >= 0.9, run.metrics
    assert run.metrics["parameters"]["trainable"] == run.metrics["parameters"]["total"]


@pytest.fixture(scope="module")
def trained(shapes, tmp_path_factory):
    """strategy -> its run on shapes (2 epochs, 2 augmented views), trained when a test first
    asks for it: the end-to-end test checks each, and other tests read the same runs."""
    runs = {}

    def run(strategy: str):
        if strategy not in runs:
            folder = tmp_path_factory.mktemp(strategy)
            runs[strategy] = train(shapes, strategy, out=folder / "run", epochs=2, views=2,
                                   cache_dir=str(folder / "cache"), **QUICK)
        return runs[strategy]
    return run


@pytest.mark.parametrize("strategy", ["extract", "finetune", "augment"])
def test_every_transfer_strategy_runs_end_to_end(trained, strategy):
    run = trained(strategy)
    files = {p.name for p in run.folder.iterdir()}
    assert {"model.keras", "config.json", "history.csv", "curves.png", "metrics.json",
            "classification_report.txt", "confusion_matrix.png"} <= files
    metrics = json.loads((run.folder / "metrics.json").read_text())
    assert metrics["epochs_run"] == 2 and set(metrics["per_class"]) == set(NAMES)
    assert {"accuracy", "macro_f1", "seconds", "confusion_matrix"} <= set(metrics)
    report = (run.folder / "classification_report.txt").read_text()
    assert all(name in report for name in NAMES) and "precision" in report
    assert len((run.folder / "history.csv").read_text().splitlines()) == 3
    # the saved end-to-end model gives the report that the cached path gave
    again = evaluate(run.folder)
    assert again.metrics["confusion_matrix"] == run.metrics["confusion_matrix"]


def test_saved_model_reloads_and_predicts_the_same(trained, shapes):
    run = trained("finetune")
    loaded, info = models.load_model(run.folder / "model.keras")
    x = np.load(shapes)["X_test"]
    np.testing.assert_allclose(loaded.predict(x, verbose=0), run.model.predict(x, verbose=0),
                               rtol=1e-5, atol=1e-6)
    assert info["class_names"] == list(NAMES) and info["image_size"] == [32, 32, 3]


def test_same_seed_same_result(tiny, tmp_path):
    a = train(tiny, "extract", out=tmp_path / "a", epochs=3, **QUICK)
    b = train(tiny, "extract", out=tmp_path / "b", epochs=3, **QUICK)
    assert a.history == b.history
    c = train(tiny, "extract", out=tmp_path / "c", epochs=3, seed=7, **QUICK)
    assert c.history != a.history


def test_frozen_features_are_computed_once_and_reused(tiny, tmp_path):
    train(tiny, "finetune", out=tmp_path / "a", epochs=1, **QUICK)
    cached = sorted((tmp_path / "cache" / "features").glob("*.npy"))
    assert len(cached) == 2  # X_train and X_test at the cut
    stamps = [p.stat().st_mtime_ns for p in cached]
    second = train(tiny, "augment", out=tmp_path / "b", epochs=1, views=3, **QUICK)
    after = sorted((tmp_path / "cache" / "features").glob("*.npy"))
    assert len(after) == 4  # + 2 augmented views of the training rows
    assert [p.stat().st_mtime_ns for p in cached] == stamps
    assert second.metrics["augment_mode"] == "cached"
