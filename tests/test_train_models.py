"""The models train builds: parameter counts, what is frozen, the cached path, and the backbone's weights."""

import glob
import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest

from conftest import FLOWERS, MOBILENET_WEIGHTS, shapes_dataset
from helpers import assert_one_error_line, run_cli, tree, write_archive
from toolkit import models
from toolkit.core.errors import ToolkitError
from toolkit.training.trainer import train

pytestmark = pytest.mark.usefixtures("feature_cache")  # each test's feature cache in its tmp_path


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
