"""toolkit export / calibration / unknown: a real tiny run, real converters and runtimes."""

import json
import re
import shutil
import threading

import numpy as np
import pytest
from PIL import Image

from conftest import shapes_dataset
from helpers import NAMES, assert_one_error_line, run_cli, tree, write_archive
from toolkit.core.errors import ToolkitError
from toolkit.ship.exporter import TOLERANCE
from toolkit.ship.inference import evaluate, predict
from toolkit.training import precision
from toolkit.training.calibration import expected_calibration_error, fit_temperature
from toolkit.training.trainer import train


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A 32 px CNN that has learnt the toy shapes a little (3 epochs), in float32 on any CPU."""
    root = tmp_path_factory.mktemp("export")
    data = write_archive(root / "shapes.npz", n_per_class=30)
    run = train(data, "cnn", out=root / "run", epochs=3, weights="none", batch_size=16,
                learning_rate=1e-3, precision="float32", verbose=0, cache_dir=str(root / "cache"))
    return run.folder, data


def fresh_copy(tiny_run, tmp_path):
    folder, data = tiny_run
    copy = tmp_path / "run"
    shutil.copytree(folder, copy, ignore=shutil.ignore_patterns("export"))
    return copy, data


@pytest.mark.slow
@pytest.mark.parametrize("fmt,quantize,model_file", [
    ("litert", "none", "model.tflite"), ("litert", "float16", "model.tflite"),
    ("litert", "int8", "model.tflite"), ("saved_model", "none", "saved_model"),
    ("onnx", "none", "model.onnx")])
def test_every_format_exports_and_matches_keras(tiny_run, tmp_path, fmt, quantize, model_file):
    run, data = fresh_copy(tiny_run, tmp_path)
    result = run_cli("export", run, "--format", fmt, "--quantize", quantize)
    assert result.exit_code == 0, result.output
    folder = run / "export"
    assert {"export.json", "labels.txt", "calibration.json", "calibration.npz"} <= set(tree(folder)) | {
        p.name for p in folder.iterdir()}
    assert (folder / model_file).exists()
    assert (folder / "labels.txt").read_text().splitlines() == list(NAMES)
    info = json.loads((folder / "export.json").read_text())
    assert (info["format"], info["quantization"]) == (fmt, quantize)
    assert info["input"] == {"name": "image", "shape": [None, 32, 32, 3], "dtype": "uint8",
                             "range": "raw 0-255 RGB", "fit": "crop", "preprocessing_included": True,
                             "preprocessing": "unit", "augmentation_included": False}
    parity = info["parity"]
    assert parity["test_images"] == 18 and parity["drift"] <= TOLERANCE[quantize]
    assert parity["max_probability_difference"] < (0.05 if quantize == "int8" else 1e-3)
    assert info["toolkit"] and info["size_bytes"] > 0
    if quantize == "int8":
        assert info["int8_representative"]["images"] == 72
    # the export folder is a model for evaluate and predict, run by its own runtime; a SavedModel
    # is code, which runs only when the user says they trust it
    trust = fmt == "saved_model"
    if trust:
        with pytest.raises(ToolkitError, match="trust-saved-model"):
            evaluate(folder)
    again = evaluate(folder, trust_saved_model=trust)
    assert again.metrics["accuracy"] == pytest.approx(parity["exported_accuracy"], abs=1e-4)
    images = np.load(data)["X_test"][:3]
    for i, pixels in enumerate(images):
        Image.fromarray(pixels).save(tmp_path / f"{i}.png")
    paths = [tmp_path / f"{i}.png" for i in range(3)]
    keras_labels = [p.closest for p in predict(run, paths)]
    assert [p.closest for p in predict(folder, paths, trust_saved_model=trust)] == keras_labels


def policies(model) -> set[str]:
    """The dtype policies of every layer of a model, nested models included."""
    found = set()
    for layer in model.layers:
        found.add(layer.dtype_policy.name)
        if hasattr(layer, "layers"):
            found |= policies(layer)
    return found


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["cnn", "extract"])
def test_a_bfloat16_run_exports_a_float32_model_within_tolerance(tmp_path, strategy):
    """Phones' and ONNX's runtimes do not compute bfloat16: the export computes in float32,
    checked against the bfloat16 model the run trained."""
    data = write_archive(tmp_path / "shapes.npz", n_per_class=20)
    run = train(data, strategy, backbone="vgg16", out=tmp_path / "run", epochs=1, weights="none",
                batch_size=16, precision="mixed", verbose=0, cache_dir=str(tmp_path / "cache"))
    assert run.metrics["precision"]["policy"] == "mixed_bfloat16"
    result = run_cli("export", run.folder, "--format", "litert")
    assert result.exit_code == 0, result.output
    parity = json.loads((run.folder / "export" / "export.json").read_text())["parity"]
    assert parity["drift"] <= TOLERANCE["none"] and parity["max_probability_difference"] < 0.05
    info = json.loads((run.folder / "export" / "export.json").read_text())
    assert info["trained_precision"]["trained"] == "mixed"
    assert info["trained_precision"]["exported"] == "float32"
    assert policies(precision.in_float32(run.model)) == {"float32"} != policies(run.model)
    assert info["input"]["preprocessing"] == ("caffe" if strategy != "cnn" else "unit")


def test_export_errors_are_one_line_and_write_nothing(tiny_run, tmp_path):
    run, data = fresh_copy(tiny_run, tmp_path)
    before = tree(run)
    cases = [
        ((tmp_path / "nothing",), "is not a run folder"),
        ((run, "--format", "coreml"), "--format"),
        ((run, "--format", "onnx", "--quantize", "int8"), "--quantize int8: is for the litert format"),
    ]
    for args, message in cases:
        assert_one_error_line(run_cli("export", *args), message)
    assert tree(run) == before
    damaged = tmp_path / "damaged"
    shutil.copytree(run, damaged)
    (damaged / "model.keras").write_bytes(b"not a zip")
    assert_one_error_line(run_cli("export", damaged), "is not a Keras model")
    assert "export" not in {p.name for p in damaged.iterdir()}
    moved = tmp_path / "moved"
    shutil.copytree(run, moved)
    config = json.loads((moved / "config.json").read_text())
    shutil.move(data, tmp_path / "elsewhere.npz")  # the run's archive is gone
    try:
        before = tree(moved)
        assert_one_error_line(run_cli("export", moved, "--quantize", "int8"),
                              "int8 is calibrated on its training images")
        assert tree(moved) == before and not list(moved.glob(".export*"))
    finally:
        shutil.move(tmp_path / "elsewhere.npz", config["data"])


def test_an_export_killed_half_way_is_recovered_by_the_next(tiny_run, tmp_path, monkeypatch):
    """A SIGKILL leaves scratch folders, or the earlier export moved aside: the next export
    cleans the first and puts the second back (here the next export fails on purpose)."""
    run, _ = fresh_copy(tiny_run, tmp_path)
    (run / ".export-k1l2" / "junk").mkdir(parents=True)
    (run / ".export-old-k3" / "export").mkdir(parents=True)
    (run / ".export-old-k3" / "export" / "labels.txt").write_text("square\ndisc\nbar\n")
    monkeypatch.setitem(TOLERANCE, "none", -1.0)
    assert_one_error_line(run_cli("export", run, "--format", "onnx"), "but the Keras model")
    assert not list(run.glob(".export*"))
    assert (run / "export" / "labels.txt").read_text() == "square\ndisc\nbar\n"


def test_an_export_that_drifts_is_an_error_naming_both_accuracies(tiny_run, tmp_path, monkeypatch):
    run, _ = fresh_copy(tiny_run, tmp_path)
    monkeypatch.setitem(TOLERANCE, "none", -1.0)  # any export now drifts "too far"
    before = tree(run)
    result = run_cli("export", run, "--format", "onnx")
    assert_one_error_line(result, "but the Keras model")
    assert re.search(r"test accuracy \d\.\d{4} but the Keras model \d\.\d{4}", result.output)
    assert tree(run) == before and not list(run.glob(".export*"))


def test_predict_answers_unknown_unless_told_not_to(tiny_run, tmp_path):
    run, data = tiny_run
    x = np.load(data)["X_test"]
    for i in range(len(x)):
        Image.fromarray(x[i]).save(tmp_path / f"shape{i:02d}.png")
    rng = np.random.default_rng(0)
    off_topic = [rng.integers(0, 256, (32, 32, 3), dtype=np.uint8),   # noise
                 np.tile(np.array([230, 230, 30], np.uint8), (32, 32, 1))]  # all yellow: no class's colour
    for i, pixels in enumerate(off_topic):
        Image.fromarray(pixels).save(tmp_path / f"odd{i}.png")
    odd = [tmp_path / f"odd{i}.png" for i in range(2)]
    answers = predict(run, odd)
    assert [a.label for a in answers] == ["unknown"] * 2
    assert all(a.closest in NAMES and abs(sum(a.probabilities.values()) - 1) < 1e-4 for a in answers)
    result = run_cli("predict", run, *odd, "--no-unknown", "--format", "json")
    assert result.exit_code == 0, result.output
    assert {r["label"] for r in json.loads(result.output)} <= set(NAMES)
    # the whole test set, as files: predict rejects what training measured it would
    in_class = predict(run, sorted(tmp_path.glob("shape*.png")))
    rejected = np.mean([a.label == "unknown" for a in in_class])
    metrics = json.loads((run / "metrics.json").read_text())
    assert rejected == pytest.approx(metrics["calibration"]["test_rejected_as_unknown"])


def test_calibration_is_fitted_and_recorded(tiny_run):
    run, _ = tiny_run
    metrics = json.loads((run / "metrics.json").read_text())
    c = metrics["calibration"]
    assert c["temperature"] > 0 and c["validation_images"] == 15
    assert 0 <= c["test_ece_before"] <= 1 and 0 <= c["test_ece_after"] <= 1
    assert c["distance_threshold"] > 0 and c["neighbours"] == 4  # 57 training images in 3 classes
    assert json.loads((run / "calibration.json").read_text())["temperature"] == c["temperature"]


def validation_outputs(run):
    """The run's validation images (as training split them off) through its saved model:
    (calibrated-to-be probabilities, embeddings, labels, the stored calibration)."""
    from toolkit.ship.inference import load_classifier
    from toolkit.training.batches import validation_split

    config = json.loads((run / "config.json").read_text())
    with np.load(config["data"]) as archive:
        x, y = archive["X_train"], archive["y_train"]
    rows = validation_split(y, config["validation_split"], config["seed"])[1]
    classifier = load_classifier(run)
    probabilities, embeddings = classifier(x[rows])
    return probabilities, embeddings, y[rows], classifier.calibration


def test_the_temperature_and_the_unknown_threshold_are_fitted_on_validation(tiny_run):
    """README: the temperature is fitted on the validation split; the unknown threshold is
    the 98th percentile of the validation images' distances."""
    run, _ = tiny_run
    probabilities, embeddings, labels, calibration = validation_outputs(run)
    assert len(labels) == 15
    assert calibration.temperature == pytest.approx(fit_temperature(probabilities, labels), abs=2e-3)
    assert abs(calibration.temperature - 1.0) > 0.05, "a fixed 1.0 would pass: nothing checked"
    distances = calibration.distances(embeddings)
    assert calibration.distance_threshold == pytest.approx(np.quantile(distances, 0.98), rel=1e-3)
    assert np.quantile(distances, 0.95) < 0.99 * np.quantile(distances, 0.98), \
        "the percentile cannot be told from another: nothing checked"


def test_the_unknown_distances_are_computed_a_block_at_a_time_as_whole(tiny_run, monkeypatch):
    """Memory stays flat in the number of images: distances come in blocks of rows, each the
    same as from the whole similarity matrix."""
    from toolkit.training import calibration as calibrating

    *_, embeddings, _, calibration = validation_outputs(tiny_run[0])
    similarity = calibrating._unit(embeddings) @ calibration.reference.astype("float32").T
    k = calibration.neighbours
    whole = 1.0 - np.sort(similarity, axis=1)[:, -k]
    monkeypatch.setattr(calibrating, "DISTANCE_ROWS", 4)  # 15 rows: blocks of 4, 4, 4, 3
    assert np.allclose(calibration.distances(embeddings), whole, atol=1e-6)


def test_the_calibration_holds_one_batch_of_embeddings_at_a_time():
    """Memory stays flat in the number of images: the calibration of 3,000 test images whose
    embeddings are 16 KB each (47 MiB together) keeps each image's probabilities and
    distance, never the split's embeddings; and it finds what the whole split would."""
    import tracemalloc

    import keras

    from toolkit.models.serving import with_embedding
    from toolkit.training.batches import Batches, Rows
    from toolkit.training.calibration import calibrate

    keras.utils.set_random_seed(0)
    inputs = keras.Input((8,))
    model = keras.Model(inputs, keras.layers.Dense(3, activation="softmax")(keras.layers.Dense(4096)(inputs)))
    rng = np.random.default_rng(0)
    train, val, test = (rng.normal(size=(n, 8)).astype("float32") for n in (100, 300, 3000))
    val_labels, test_labels = rng.integers(3, size=300), rng.integers(3, size=3000)
    tracemalloc.start()
    try:
        fitted = calibrate(model, *(Batches([Rows(x, None)], None, 32) for x in (train, val)), val_labels,
                           Batches([Rows(test, None)], None, 32), test_labels)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 24 * 2**20, f"{peak / 2**20:.0f} MiB at the peak: a split's embeddings were held"
    assert fitted.test_probabilities.shape == (3000, 3)
    served = with_embedding(model)
    whole = served.predict(test, verbose=0)["embedding"]
    unknown = fitted.calibration.unknown(whole)
    assert 0 < unknown.mean() < 0.2  # the unknown detector was fitted: something to compare
    assert fitted.summary["test_rejected_as_unknown"] == pytest.approx(unknown.mean(), abs=1 / 3000)
    validation = served.predict(val, verbose=0)
    assert fitted.calibration.distance_threshold == pytest.approx(np.quantile(
        fitted.calibration.distances(validation["embedding"]), 0.98), rel=1e-5)
    assert fitted.calibration.temperature == pytest.approx(
        fit_temperature(validation["probabilities"], val_labels), rel=1e-5)


def test_the_test_set_changes_neither_the_temperature_nor_the_unknown_threshold(tiny_run, tmp_path):
    """The same training with another test set: the same calibration (the test set is used
    once, to measure)."""
    run, data = tiny_run
    other_x, other_y = shapes_dataset(6, 32, seed=9)
    other = write_archive(tmp_path / "other-test.npz", n_per_class=30, X_test=other_x, y_test=other_y)
    again = train(other, "cnn", out=tmp_path / "run", epochs=3, weights="none", batch_size=16,
                  learning_rate=1e-3, precision="float32", verbose=0, cache_dir=str(tmp_path / "cache"))
    first = json.loads((run / "metrics.json").read_text())
    # the same training (its validation split included): only the test set differs
    assert (again.folder / "history.csv").read_text() == (run / "history.csv").read_text()
    assert [again.metrics["calibration"][k] for k in ("temperature", "distance_threshold")] == [
        first["calibration"][k] for k in ("temperature", "distance_threshold")]
    assert again.metrics["confusion_matrix"] != first["confusion_matrix"]  # another test set indeed


def test_one_export_of_a_run_at_a_time(tiny_run, tmp_path, monkeypatch):
    """A second export of the same run, while the first converts, is one line; the first
    finishes as if alone."""
    from toolkit.ship import exporter

    run, _ = fresh_copy(tiny_run, tmp_path)
    converting, go_on = threading.Event(), threading.Event()
    convert = exporter._convert

    def held(*args, **kwargs):  # the first export, held inside its conversion
        converting.set()
        go_on.wait(120)
        return convert(*args, **kwargs)

    monkeypatch.setattr(exporter, "_convert", held)
    first: dict = {}
    thread = threading.Thread(target=lambda: first.update(done=exporter.export(run, "onnx")))
    thread.start()
    try:
        assert converting.wait(120), "the first export never reached its conversion"
        monkeypatch.setattr(exporter, "_convert", convert)
        second = run_cli("export", run, "--format", "onnx")
    finally:
        go_on.set()
        thread.join(300)
    assert_one_error_line(second, f"another export of {run} is running; wait for it")
    assert first["done"].info["format"] == "onnx"
    assert json.loads((run / "export" / "export.json").read_text())["format"] == "onnx"
    assert not list(run.glob(".export*"))


def test_temperature_and_ece_on_known_answers():
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 3, (4000, 3))
    true_p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    labels = np.array([rng.choice(3, p=p) for p in true_p])
    overconfident = np.exp(logits * 2.5)
    overconfident /= overconfident.sum(1, keepdims=True)
    assert fit_temperature(overconfident, labels) == pytest.approx(2.5, rel=0.1)
    assert expected_calibration_error(true_p, labels) < 0.03
    assert expected_calibration_error(overconfident, labels) > 0.1


@pytest.mark.slow
def test_augment_run_exports_without_its_augmentation_layers(tmp_path):
    data = write_archive(tmp_path / "shapes.npz", n_per_class=20)
    run = train(data, "augment", out=tmp_path / "run", backbone="vgg16", epochs=1,
                views=1, weights="none", batch_size=16, head="pool", precision="float32",
                verbose=0, cache_dir=str(tmp_path / "cache"))
    assert "augment" in [layer.name for layer in run.model.layers]
    result = run_cli("export", run.folder, "--format", "litert")
    assert result.exit_code == 0, result.output
    info = json.loads((run.folder / "export" / "export.json").read_text())
    assert info["input"]["augmentation_included"] is False
    assert info["input"]["preprocessing"] == "caffe"  # VGG16's, inside the model
    # the served model (augmentation left out) scores what the trained model scored
    assert info["parity"]["keras_accuracy"] == pytest.approx(run.metrics["accuracy"], abs=1e-4)
    assert info["parity"]["max_probability_difference"] < 1e-3
