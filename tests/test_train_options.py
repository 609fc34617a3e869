"""train's options, one tiny run each: the head, the trainable layers, early stopping, determinism."""

import json

import numpy as np
import pytest
import tensorflow as tf

from helpers import QUICK, run_cli, write_archive
from toolkit import models
from toolkit.core.errors import ToolkitError
from toolkit.training.batches import validation_split
from toolkit.training.trainer import train

pytestmark = pytest.mark.usefixtures("feature_cache")  # each test's feature cache in its tmp_path


GPU = bool(tf.config.list_physical_devices("GPU"))


def test_library_errors_name_the_parameter(shapes, tmp_path):
    with pytest.raises(ToolkitError, match=r"^epochs=0: must be at least 1$"):
        train(shapes, "cnn", out=tmp_path / "run", epochs=0)
    with pytest.raises(ToolkitError, match=r"^head='round': choose from flatten, pool$"):
        train(shapes, "extract", out=tmp_path / "run", head="round")
    assert not (tmp_path / "run").exists()


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


def test_cli_deterministic_flag_is_kept_in_the_run(tiny, tmp_path):
    result = run_cli("train", "--strategy", "cnn", "--data", tiny, "--epochs", 1, "--deterministic",
                     "--out", tmp_path / "run")
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "run" / "config.json").read_text())["deterministic"] is True
