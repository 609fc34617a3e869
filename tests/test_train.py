"""toolkit train / evaluate / predict / compare on tiny data, with real Keras fits."""

import dataclasses
import glob
import inspect
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from conftest import FLOWERS, MOBILENET_WEIGHTS, shapes_dataset
from helpers import (
    NAMES,
    QUICK,
    assert_one_error_line,
    interrupted_after_first_epoch,
    run_cli,
    tree,
    write_archive,
)
from toolkit import models
from toolkit.cli import training as training_commands
from toolkit.core.errors import ToolkitError
from toolkit.ship.inference import evaluate
from toolkit.training.batches import Batches, Rows, validation_split
from toolkit.training.config import TrainConfig
from toolkit.training.trainer import resume, train

GPU = bool(tf.config.list_physical_devices("GPU"))


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    return write_archive(tmp_path_factory.mktemp("data") / "shapes.npz")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """24 images: for tests of an option, not of learning."""
    return write_archive(tmp_path_factory.mktemp("data") / "tiny.npz", n_per_class=8)


@pytest.fixture(autouse=True)
def feature_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TOOLKIT_CACHE_DIR", str(tmp_path / "cache"))


def test_parameter_counts_are_the_studys():
    expected = {"cnn": (2_283_779, 2_283_779), "extract": (17_936_515, 3_221_827),
                "finetune": (17_936_515, 5_581_635), "augment": (17_936_515, 5_581_635)}
    for strategy, (total, trainable) in expected.items():
        split = models.build(strategy, (224, 224, 3), 3, weights="none")
        counts = models.parameter_counts(split.model)
        assert (counts["total"], counts["trainable"]) == (total, trainable), strategy
    base = models.load_backbone("vgg16", "none", (224, 224, 3))
    assert base.count_params() == 14_714_688


def test_extract_really_freezes_the_backbone_and_bn_stays_in_inference():
    split = models.build("extract", (32, 32, 3), 3, weights="none")
    assert not any(w.trainable for w in split.model.get_layer("vgg16").weights)
    split = models.build("finetune", (32, 32, 3), 3, backbone="mobilenet_v2", weights="none")
    base = next(layer for layer in split.model.layers
                if isinstance(layer, keras.Model) and layer.name != "head")
    bns = [layer for layer in base.layers if isinstance(layer, keras.layers.BatchNormalization)]
    assert bns and not any(bn.trainable for bn in bns)
    assert split.cut == "block_15_add"
    x = shapes_dataset(3, 32)[0].astype("float32")
    np.testing.assert_allclose(np.asarray(split.model(x, training=True)),
                               np.asarray(split.model(x, training=False)), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("backbone,cut,trainable", [("vgg16", "block5_conv2", ["block5_conv3"]),
                                                     ("vgg19", "block5_conv3", ["block5_conv4"])])
def test_vgg_finetune_trains_exactly_the_last_conv_layer(backbone, cut, trainable):
    split = models.build("finetune", (32, 32, 3), 3, backbone=backbone, weights="none")
    base = split.model.get_layer(backbone)
    assert split.cut == cut
    assert [layer.name for layer in base.layers if layer.trainable_weights] == trainable


@pytest.mark.parametrize("backbone,weights", [
    ("vgg16", "none"),  # a plain stack
    pytest.param("resnet50", "none", marks=pytest.mark.slow),  # skip connections, BatchNorm
    # MobileNetV2 and EfficientNet give every image the same output at random init: only
    # real weights make their comparison mean something
    pytest.param("mobilenet_v2", str(MOBILENET_WEIGHTS), marks=pytest.mark.skipif(
        not MOBILENET_WEIGHTS.exists(), reason="../shared/weights is absent"), id="mobilenet_v2-imagenet"),
])
def test_cached_path_predicts_what_the_end_to_end_model_predicts(backbone, weights):
    """After training on the cached features, the saved end-to-end model predicts the same."""
    keras.utils.set_random_seed(1)
    split = models.build("finetune", (32, 32, 3), 3, backbone=backbone, weights=weights)
    x, y = shapes_dataset(20, 32)
    features = split.lower.predict(x, verbose=0)
    before = [np.array(w) for w in split.trainer.trainable_weights]
    split.trainer.compile(optimizer=keras.optimizers.Adam(1e-3), loss="sparse_categorical_crossentropy")
    split.trainer.fit(features, y, epochs=2, batch_size=20, verbose=0)
    assert all(not np.array_equal(a, np.array(b)) for a, b in zip(before, split.trainer.trainable_weights))
    direct = split.model.predict(x, verbose=0)
    cached = split.trainer.predict(features, verbose=0)
    assert direct.std(axis=0).max() > 1e-3, "every image gets the same output: nothing compared"
    np.testing.assert_allclose(direct, cached, rtol=1e-5, atol=1e-5)


def test_preprocessing_matches_keras_applications():
    x = np.random.default_rng(0).uniform(0, 255, (2, 8, 8, 3)).astype("float32")
    for mode, reference in (("caffe", keras.applications.vgg16.preprocess_input),
                            ("tf", keras.applications.mobilenet_v2.preprocess_input)):
        np.testing.assert_allclose(np.asarray(models.Preprocess(mode)(x)), reference(x.copy()),
                                   rtol=1e-5, atol=1e-4)


#: a cnn that learns the toy shapes (40 per class at 24 px) in 6 epochs: on one device here, on
#: two in test_mirrored_training_on_two_cpu_devices_reaches_the_same_quality
LEARNS = dict(epochs=6, batch_size=16, learning_rate=2e-3, patience=6, weights="none", precision="float32")


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


def test_batches_with_labels_split_evenly_over_replicas():
    """Keras 3's distributed fit fails on a batch its replicas cannot share: labelled batches
    stay even (losing at most replicas - 1 samples); predicting keeps every sample."""
    rows = Rows(np.arange(13 * 2).reshape(13, 2), None)
    labelled = Batches([rows], np.arange(13), 4, seed=0, replicas=2)
    sizes = [len(labelled[i][0]) for i in range(len(labelled))]
    assert sizes == [4, 4, 4]
    assert sum(len(Batches([rows], None, 4, replicas=2)[i][0]) for i in range(4)) == 13


def test_compare_refuses_a_strategy_named_twice(shapes, tmp_path):
    result = run_cli("compare", "--data", shapes, "--strategies", "cnn,cnn", "--out", tmp_path / "c")
    assert_one_error_line(result, "name each strategy once")
    assert tree(tmp_path) == {}


def test_validation_split_is_stratified_and_seeded():
    labels = np.repeat([0, 1, 2], [50, 30, 20])
    train_rows, val_rows = validation_split(labels, 0.2, seed=3)
    assert np.bincount(labels[val_rows]).tolist() == [10, 6, 4]
    assert not set(train_rows) & set(val_rows) and len(train_rows) + len(val_rows) == 100
    assert np.array_equal(validation_split(labels, 0.2, seed=3)[1], val_rows)
    assert not np.array_equal(validation_split(labels, 0.2, seed=4)[1], val_rows)
    assert 99 in val_rows or 99 in train_rows  # not "the last 20%"
    assert len(set(val_rows) & set(range(80, 100))) < 20


def test_batches_depend_on_seed_and_epoch_only():
    data = Rows(np.arange(10)[:, None], None)
    a, b = Batches([data], np.arange(10), 4, seed=1), Batches([data], np.arange(10), 4, seed=1)
    b.set_epoch(3)
    b.set_epoch(0)
    assert [a[i][0].tolist() for i in range(3)] == [b[i][0].tolist() for i in range(3)]
    a.set_epoch(1)
    assert [a[i][0].tolist() for i in range(3)] != [b[i][0].tolist() for i in range(3)]


def test_weights_from_a_file(tmp_path):
    keras.utils.set_random_seed(5)
    original = models.load_backbone("vgg16", "none", (32, 32, 3))
    path = tmp_path / "my_vgg16.weights.h5"
    original.save_weights(path)
    loaded = models.load_backbone("vgg16", str(path), (32, 32, 3))
    for a, b in zip(original.get_weights(), loaded.get_weights()):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(ToolkitError, match="weights=.* does not fit mobilenet_v2"):
        models.load_backbone("mobilenet_v2", str(path), (32, 32, 3))
    data = write_archive(tmp_path / "d.npz", n_per_class=6)
    for weights, backbone, message in ((path, "mobilenet_v2", f"--weights {path}: does not fit mobilenet_v2"),
                                       (tmp_path / "missing.h5", "vgg16", "missing.h5: no such file")):
        before = tree(tmp_path)
        result = run_cli("train", "--strategy", "extract", "--data", data, "--backbone", backbone,
                         "--weights", weights, "--out", tmp_path / "run")
        assert_one_error_line(result, message)
        assert tree(tmp_path) == before, "nothing written"


def test_imagenet_offline_is_one_clear_error(monkeypatch, tmp_path):
    home = os.environ["KERAS_HOME"]  # set by conftest before Keras was imported: an empty cache
    assert keras.src.backend.config.keras_home() == home
    assert not glob.glob(os.path.join(home, "models", "vgg16*")), "no VGG16 weights cached"
    monkeypatch.setattr(keras.src.applications.vgg16, "WEIGHTS_PATH_NO_TOP",
                        "http://127.0.0.1:9/vgg16_notop.h5")  # nothing listens: as offline
    data = write_archive(tmp_path / "d.npz", n_per_class=6)
    before = tree(tmp_path)
    result = run_cli("train", "--strategy", "extract", "--data", data, "--out", tmp_path / "run")
    assert_one_error_line(result, "--weights imagenet: cannot get the ImageNet weights of vgg16")
    assert "give that file instead" in result.output and tree(tmp_path) == before


def test_image_too_small_for_the_backbone(tmp_path):
    data = write_archive(tmp_path / "tiny.npz", n_per_class=10, size=16)
    before = tree(tmp_path)
    result = run_cli("train", "--strategy", "extract", "--data", data, "--weights", "none",
                     "--out", tmp_path / "run")
    assert_one_error_line(result, "images are 16x16 but vgg16 needs at least 32x32")
    assert tree(tmp_path) == before, "nothing written"


def test_library_errors_name_the_parameter(shapes, tmp_path):
    with pytest.raises(ToolkitError, match=r"^epochs=0: must be at least 1$"):
        train(shapes, "cnn", out=tmp_path / "run", epochs=0)
    with pytest.raises(ToolkitError, match=r"^head='round': choose from flatten, pool$"):
        train(shapes, "extract", out=tmp_path / "run", head="round")
    assert not (tmp_path / "run").exists()


# ---- options: one tiny run each

def test_head_pool_and_trainable_layers(tiny, tmp_path):
    pooled = train(tiny, "extract", out=tmp_path / "pool", head="pool", epochs=1, **QUICK)
    assert [type(layer).__name__ for layer in pooled.model.get_layer("head").layers][:2] == [
        "GlobalAveragePooling2D", "Dense"]
    chosen = train(tiny, "finetune", out=tmp_path / "conv2", trainable=["block5_conv2"], epochs=1,
                   **QUICK)
    base = chosen.model.get_layer("vgg16")
    assert [layer.name for layer in base.layers if layer.trainable_weights] == ["block5_conv2"]
    config = json.loads((tmp_path / "conv2" / "config.json").read_text())
    assert config["trainable"] == ["block5_conv2"]


def test_early_stopping_restores_the_best_weights(tmp_path):
    """README: early stopping on validation loss restores the best weights. The saved model's
    loss on the validation split is the best epoch's, not the last one's."""
    data = write_archive(tmp_path / "d.npz", n_per_class=20, size=24)
    run = train(data, "cnn", out=tmp_path / "run", epochs=20, patience=2, learning_rate=3e-3, **QUICK)
    val_loss = run.history["val_loss"]
    best = int(np.argmin(val_loss))
    assert run.metrics["stopped_early"] and run.metrics["best_epoch"] == best + 1
    assert run.metrics["epochs_run"] == len(val_loss) == best + 3  # patience 2
    assert min(val_loss[best + 1:]) > 1.2 * val_loss[best], "the last epochs are not worse: nothing checked"
    model, _ = models.load_model(run.folder / "model.keras")
    with np.load(data) as archive:
        x, y = archive["X_train"], archive["y_train"]
    rows = validation_split(y, run.config.validation_split, run.config.seed)[1]
    p = np.clip(model.predict(x[rows], verbose=0), 1e-7, 1.0)
    loss = float(-np.mean(np.log(p[np.arange(len(rows)), y[rows]])))
    assert loss == pytest.approx(val_loss[best], rel=1e-3)


def test_deterministic_turns_tensorflow_op_determinism_on_or_off_for_the_run(tiny, tmp_path):
    """--deterministic is TensorFlow's op determinism (which, on a GPU, also turns XLA off);
    without the flag it is on for a CPU. Each run gets what it asks for, whatever an earlier
    run in the same process (a notebook) asked for."""
    from tensorflow.python.framework.config import is_op_determinism_enabled

    for i, (flag, expected) in enumerate(((True, True), (False, False), (None, True))):
        run = train(tiny, "cnn", out=tmp_path / f"run{i}", epochs=1, deterministic=flag, **QUICK)
        assert is_op_determinism_enabled() is expected, flag
        assert json.loads((run.folder / "config.json").read_text())["deterministic"] is flag


@pytest.mark.skipif(not GPU, reason="needs a GPU: on a CPU Keras never compiles with XLA")
def test_deterministic_costs_xla_on_a_gpu(tiny, tmp_path):
    runs = {flag: train(tiny, "cnn", out=tmp_path / f"run-{flag}", epochs=1, deterministic=flag,
                        **QUICK) for flag in (False, True)}
    assert runs[False].model.jit_compile is True and runs[True].model.jit_compile is False


#: Keras alone, after `import toolkit.models` (README: From Python)
KERAS_LOAD = """
import json, sys
import keras
import numpy as np
import toolkit.models
model = keras.models.load_model(sys.argv[1])
print(json.dumps(model.predict(np.load(sys.argv[2])["X_test"][:4], verbose=0).tolist()))
"""


def test_keras_loads_a_saved_model_once_toolkit_models_is_imported(finished_run):
    folder, data = finished_run
    done = subprocess.run([sys.executable, "-c", KERAS_LOAD, str(folder / "model.keras"), str(data)],
                          capture_output=True, text=True, timeout=240,
                          env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert done.returncode == 0, done.stderr[-3000:]
    loaded = np.array(json.loads(done.stdout.splitlines()[-1]))
    # against the model as it was trained, in memory: a save or load that changed it fails here
    np.testing.assert_allclose(loaded, np.load(folder.parent / "predicted.npy"), rtol=1e-5, atol=1e-6)


def test_cli_deterministic_flag_is_kept_in_the_run(tiny, tmp_path):
    result = run_cli("train", "--strategy", "cnn", "--data", tiny, "--epochs", 1, "--deterministic",
                     "--out", tmp_path / "run")
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "run" / "config.json").read_text())["deterministic"] is True


@pytest.mark.slow
def test_online_augment_resumes_to_the_same_result(tiny, tmp_path, monkeypatch):
    """Online augmentation draws on from where the interrupted run was, so a resumed run
    ends where an uninterrupted one would (the random layers' state is checkpointed)."""
    from toolkit.training.trainer import Interrupted

    options = dict(augment_mode="online", backbone="vgg16", epochs=2, patience=10,
                   batch_size=8, weights="none", verbose=0)
    whole = train(tiny, "augment", out=tmp_path / "whole", **options)
    assert whole.metrics["augment_mode"] == "online"
    assert not list((tmp_path / "cache").rglob("*.npy")), "online: nothing cached"
    with interrupted_after_first_epoch(monkeypatch), pytest.raises(Interrupted):
        train(tiny, "augment", out=tmp_path / "cut", **options)
    resumed = resume(tmp_path / "cut", verbose=0)
    assert len(resumed.history["loss"]) == 2
    np.testing.assert_allclose(resumed.history["loss"], whole.history["loss"], rtol=1e-5)
    np.testing.assert_allclose(resumed.history["val_loss"], whole.history["val_loss"], rtol=1e-5)


def test_resume_of_a_damaged_state_is_one_line(finished_run, tmp_path):
    shutil.copytree(finished_run[0], tmp_path / "run")
    (tmp_path / "run" / "checkpoint" / "state.json").write_text('{"epoch": 0, "fini')
    before = tree(tmp_path / "run")
    assert_one_error_line(run_cli("train", "--resume", tmp_path / "run"), "state.json is damaged")
    assert tree(tmp_path / "run") == before


@pytest.mark.skipif(not MOBILENET_WEIGHTS.exists(), reason="../shared/weights is absent")
def test_real_mobilenet_weights_transfer_to_flowers(tmp_path):
    if not FLOWERS.exists():
        pytest.skip("../shared/data/flowers is absent")
    from toolkit.data.packer import pack
    pack(FLOWERS, tmp_path / "flowers.npz", per_class=40, size=96, test_size=0.25)
    # 90 training photos, 30 test photos: the pooled head (1,280 x 3 weights) learns from so few.
    # On this split (pack's per-image rank, seed 42) the shared weights get 0.70 (seeds 1 and 2:
    # 0.80, 0.77) and --weights none gets 0.33, chance: 0.6 tells the two apart with a margin of
    # three test photos above and eight below. float32 pinned (test_precision.py checks that
    # auto never computes a frozen backbone in bfloat16)
    run = train(tmp_path / "flowers.npz", "extract", out=tmp_path / "run", backbone="mobilenet_v2",
                weights=str(MOBILENET_WEIGHTS), epochs=15, batch_size=32, head="pool",
                learning_rate=1e-2, precision="float32", verbose=0)
    assert run.metrics["accuracy"] >= 0.6, run.metrics["accuracy"]


# ---- resume after a kill

def test_killed_run_resumes_to_the_same_result(shapes, tmp_path):
    options = ["--data", shapes, "--strategy", "finetune", "--weights", "none", "--epochs", "6",
               "--patience", "10", "--batch-size", "16", "--cache-dir", tmp_path / "cache"]
    whole = run_cli("train", *options, "--out", tmp_path / "whole")
    assert whole.exit_code == 0, whole.output
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    process = subprocess.Popen([sys.executable, "-m", "toolkit.cli", "train", *map(str, options),
                                "--out", str(tmp_path / "killed")], env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    state = tmp_path / "killed" / "checkpoint" / "state.json"
    deadline = time.time() + 120
    while time.time() < deadline:
        if state.exists() and json.loads(state.read_text())["epoch"] >= 1:
            break
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    killed_at = json.loads(state.read_text())["epoch"]
    assert killed_at < 5 and not (tmp_path / "killed" / "model.keras").exists()
    resumed = run_cli("train", "--resume", tmp_path / "killed")
    assert resumed.exit_code == 0, resumed.output
    a = json.loads((tmp_path / "whole" / "metrics.json").read_text())
    b = json.loads((tmp_path / "killed" / "metrics.json").read_text())
    assert a["epochs_run"] == b["epochs_run"] == 6
    assert a["confusion_matrix"] == b["confusion_matrix"]
    ha = (tmp_path / "whole" / "history.csv").read_text().splitlines()
    hb = (tmp_path / "killed" / "history.csv").read_text().splitlines()
    for la, lb in zip(ha[1:], hb[1:]):
        np.testing.assert_allclose([float(v) for v in la.split(",")], [float(v) for v in lb.split(",")],
                                   rtol=1e-4, atol=1e-5)


def test_resume_refuses_a_finished_run(finished_run, tmp_path):
    shutil.copytree(finished_run[0], tmp_path / "run")
    with pytest.raises(ToolkitError, match="already finished"):
        resume(tmp_path / "run")


# ---- the command line

def test_cli_train_evaluate_predict(shapes, tmp_path):
    result = run_cli("train", "--strategy", "extract", "--data", shapes, "--weights", "none",
                    "--epochs", 2, "--batch-size", 32, "--out", tmp_path / "run")
    assert result.exit_code == 0, result.output
    assert "precision" in result.output and "run folder" in result.output
    result = run_cli("evaluate", tmp_path / "run")
    assert result.exit_code == 0 and "confusion matrix" in result.output
    pictures = tmp_path / "pictures"
    pictures.mkdir()
    x = np.load(shapes)["X_test"]
    for i in range(3):
        Image.fromarray(x[i]).resize((64, 64)).save(pictures / f"p{i}.png")
    (pictures / "broken.jpg").write_bytes(b"not an image")
    result = run_cli("predict", tmp_path / "run", pictures, "--format", "csv", "--no-unknown")
    assert result.exit_code == 0, result.output
    rows = result.output.strip().splitlines()
    assert rows[0] == "image,label,probability,closest,error" and len(rows) == 5
    assert sum(1 for r in rows[1:] if r.split(",")[1] in NAMES) == 3
    assert "not an image" in result.output
    result = run_cli("predict", tmp_path / "run" / "model.keras", pictures / "p0.png", "--format", "json",
                     "--no-unknown")
    assert json.loads(result.output)[0]["label"] in NAMES


def test_cli_compare(shapes, tmp_path):
    result = run_cli("compare", "--data", shapes, "--strategies", "extract,finetune", "--weights",
                    "none", "--epochs", 2, "--batch-size", 32, "--out", tmp_path / "cmp")
    assert result.exit_code == 0, result.output
    assert "extract" in result.output and "finetune" in result.output and "accuracy" in result.output
    assert (tmp_path / "cmp" / "comparison.png").exists()
    page = (tmp_path / "cmp" / "report.html").read_text()
    assert "extract" in page and "finetune" in page and "extract/report.html" in page
    rows = json.loads((tmp_path / "cmp" / "comparison.json").read_text())
    assert [r["strategy"] for r in rows] == ["extract", "finetune"]
    config = json.loads((tmp_path / "cmp" / "finetune" / "config.json").read_text())
    assert (config["epochs"], config["batch_size"], config["weights"]) == (2, 32, "none")


def test_every_training_option_is_a_train_keyword_and_a_flag_with_the_same_default():
    """TrainConfig is the one table of training options: `train` takes each by name with
    its default, and `toolkit train` and `toolkit compare` have a flag for each."""
    options = {f.name: f.default for f in dataclasses.fields(TrainConfig)}
    keywords = inspect.signature(train).parameters
    assert {name: keywords[name].default for name in options if name in keywords} == options
    for command in (training_commands.train, training_commands.compare):
        flags = {p.name: p.default for p in command.params}
        assert set(options) - {"strategy"} <= set(flags), command.name  # train: --strategy is asked
        assert {name: flags[name] for name in options if name not in ("strategy", "trainable")} == {
            name: default for name, default in options.items() if name not in ("strategy", "trainable")}


def test_help_starts_no_stage_and_train_help_no_tensorflow():
    code = ("import sys\nfrom toolkit.cli import cli\ntry:\n    cli(sys.argv[1:])\n"
            "except SystemExit:\n    pass\n"
            "print(sorted({'requests', 'PIL', 'numpy', 'keras', 'tensorflow'} & set(sys.modules)))")
    for args in ([], ["train"], ["compare"]):
        done = subprocess.run([sys.executable, "-c", code, *args, "--help"], capture_output=True,
                              text=True, check=True)
        assert done.stdout.splitlines()[-1] == "[]", (args, done.stdout[-300:])


def test_cli_train_needs_a_strategy_and_a_good_archive(tmp_path):
    result = run_cli("train", "--data", tmp_path / "none.npz", "--strategy", "cnn")
    assert result.exit_code == 1
    assert_one_error_line(result, "does not exist")
    result = run_cli("train", "--data", tmp_path / "none.npz")
    assert_one_error_line(result, "choose a --strategy: cnn, extract, finetune, augment")


# ---- more than one device
# Each of these tests trains in other processes: its processes start with the session, on
# conftest.py's background worker (start_with_the_session, below), and the test checks what
# they left.

MIRRORED = """
import json, sys
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
from toolkit.training.trainer import train
run = train(sys.argv[1], "cnn", out=sys.argv[2] + "/mirrored", distribute="mirrored", verbose=0,
            **json.loads(sys.argv[3]))
print(json.dumps({"accuracy": run.metrics["accuracy"], "replicas": run.metrics["replicas"],
                  "batch": run.metrics["global_batch_size"]}))
"""


def mirrored_run(folder: Path) -> subprocess.CompletedProcess:
    """LEARNS on two CPU devices, in a process of its own."""
    data = write_archive(folder / "shapes.npz", n_per_class=40, size=24)
    return subprocess.run([sys.executable, "-c", MIRRORED, str(data), str(folder), json.dumps(LEARNS)],
                          capture_output=True, text=True, timeout=270,
                          env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})


def test_mirrored_training_on_two_cpu_devices_reaches_the_same_quality(request):
    """Two CPU devices learn what one does in test_cnn_learns_a_toy_set (the same data and
    settings), each replica taking a whole batch."""
    done, _ = started(request)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["replicas"] == 2 and result["batch"] == 2 * LEARNS["batch_size"]
    assert result["accuracy"] >= 0.9, result


def _free_ports(n: int) -> list[int]:
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


#: what a worker says when another process took its port between the probe and its bind
PORT_TAKEN = "Could not start gRPC server"


def _run_workers(commands: list[list[str]], envs: list[dict], deadline: float) -> list[tuple[int, str]]:
    """Run the workers at once and read both pipes at once (a worker blocked on a full pipe
    would stall the other, which waits for it); (exit code, output) of each. When one fails,
    the other, left waiting for its peer, is stopped."""
    processes = [subprocess.Popen(c, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=e)
                 for c, e in zip(commands, envs)]
    outputs = [""] * len(processes)

    def read(i: int) -> None:
        outputs[i] = processes[i].stdout.read()

    readers = [threading.Thread(target=read, args=(i,), daemon=True) for i in range(len(processes))]
    for reader in readers:
        reader.start()
    try:
        while any(p.poll() is None for p in processes) and time.monotonic() < deadline:
            if any(p.poll() not in (None, 0) for p in processes):
                break
            time.sleep(0.1)
    finally:
        for p in processes:
            if p.poll() is None:
                p.kill()
            p.wait()
        for reader in readers:
            reader.join(10)
    return [(p.returncode, out) for p, out in zip(processes, outputs)]


def multiworker_runs(folder: Path) -> list[tuple[int, str]]:
    """Two `toolkit train --distribute multiworker` processes on loopback ports; (exit code,
    output) of each, or (None, ...) for one that was still running after 240 s."""
    data = write_archive(folder / "shapes.npz", n_per_class=30, size=24)
    deadline = time.monotonic() + 240  # under pytest's 300 s, with room to report
    for attempt in range(3):
        workers = [f"127.0.0.1:{port}" for port in _free_ports(2)]
        commands, envs = [], []
        for index in range(2):
            tf_config = {"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}}
            shutil.rmtree(folder / f"run{index}", ignore_errors=True)
            commands.append([sys.executable, "-m", "toolkit.cli", "train", "--strategy", "cnn",
                             "--data", str(data), "--weights", "none", "--epochs", "8",
                             "--learning-rate", "2e-3", "--batch-size", "8", "--distribute", "multiworker",
                             "--precision", "float32", "--out", str(folder / f"run{index}")])
            envs.append({**os.environ, "TF_CONFIG": json.dumps(tf_config), "TF_CPP_MIN_LOG_LEVEL": "3"})
        results = _run_workers(commands, envs, deadline)
        if not any(code != 0 and PORT_TAKEN in out for code, out in results):
            break  # a port taken by another process between probe and bind: new ports, again
    return [(None if time.monotonic() >= deadline else code, out) for code, out in results]


def test_multiworker_training_on_two_loopback_workers(request):
    results, folder = started(request)
    (code0, out0), (code1, out1) = results
    assert None not in (code0, code1), "the workers did not finish in 240 s:\n" + out0[-3000:] + out1[-3000:]
    assert [code0, code1] == [0, 0], out0[-3000:] + out1[-3000:]
    metrics = json.loads((folder / "run0" / "metrics.json").read_text())
    assert metrics["replicas"] == 2 and metrics["global_batch_size"] == 16
    assert metrics["accuracy"] >= 0.9
    assert not (folder / "run1").exists() and "written by the chief" in out1
    result = run_cli("train", "--resume", folder / "run0")
    assert_one_error_line(result, "cannot be resumed")


#: test -> the work in other processes it checks, given a folder of its own
IN_OTHER_PROCESSES = {"test_mirrored_training_on_two_cpu_devices_reaches_the_same_quality": mirrored_run,
                      "test_multiworker_training_on_two_loopback_workers": multiworker_runs}
#: run last (conftest.py): they wait for their runs
WAITING_TESTS = tuple(IN_OTHER_PROCESSES)

#: test -> (the future of its work, its folder), from start_with_the_session
STARTED: dict = {}


def start_with_the_session(items: list, tmp_path_factory, pool: ThreadPoolExecutor) -> None:
    """Submit to `pool` the work in other processes of the selected tests (conftest.py calls
    it as the session starts)."""
    for test in dict.fromkeys(item.originalname for item in items):
        if test in IN_OTHER_PROCESSES:
            folder = tmp_path_factory.mktemp(test[5:30])
            STARTED[test] = (pool.submit(IN_OTHER_PROCESSES[test], folder), folder)


def started(request):
    """(what the test's work in other processes returned, its folder)."""
    future, folder = STARTED[request.node.originalname]
    return future.result(), folder
