"""--precision: what `auto` resolves to on which CPU, and every strategy trained in mixed
precision on tiny data (bfloat16 runs on any CPU; without bf16 units it is emulated)."""

import json

import numpy as np
import pytest
import tensorflow as tf

from conftest import fake_cpu, shapes_dataset
from helpers import interrupted_after_first_epoch, run_cli
from toolkit import models
from toolkit.ship.inference import evaluate, predict
from toolkit.training import precision
from toolkit.training.config import BACKBONES, STRATEGIES
from toolkit.training.trainer import Interrupted, resume, train

GPU = bool(tf.config.list_physical_devices("GPU"))
on_cpu_only = pytest.mark.skipif(GPU, reason="checks bfloat16 on a CPU; on a GPU mixed is float16")
#: how each policy's features are stored: (dtype numpy reads, dtype recorded)
STORED = {"float32": ("float32", "float32"), "mixed_bfloat16": ("uint16", "bfloat16"),
          "mixed_float16": ("float16", "float16")}

#: /proc/cpuinfo as four kinds of machine write it (flags trimmed)
ZEN4 = ("processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD EPYC\n"
        "flags\t\t: fpu sse2 avx2 avx512f avx512_vnni avx512_bf16 clzero\n\n"
        "processor\t: 1\nflags\t\t: fpu sse2 avx2 avx512f avx512_vnni avx512_bf16 clzero\n")
SAPPHIRE_RAPIDS = ("processor\t: 0\nvendor_id\t: GenuineIntel\n"
                   "flags\t\t: fpu avx2 avx512f avx512_bf16 amx_bf16 amx_tile amx_int8\n")
SKYLAKE = "processor\t: 0\nvendor_id\t: GenuineIntel\nflags\t\t: fpu sse2 avx2 avx512f avx512bw\n"
ARM = "processor\t: 0\nFeatures\t: fp asimd bf16 i8mm\n"


def test_bf16_flags_are_read_from_cpuinfo():
    assert precision.cpu_bf16_flags(ZEN4) == {"avx512_bf16"}
    assert precision.cpu_bf16_flags(SAPPHIRE_RAPIDS) == {"avx512_bf16", "amx_bf16"}
    assert precision.cpu_bf16_flags(SKYLAKE) == set()
    assert precision.cpu_bf16_flags(ARM) == set()
    assert precision.cpu_bf16_flags("") == set()


@pytest.mark.parametrize("requested, gpu, cpuinfo, model, policy, reason", [
    ("auto", True, SKYLAKE, "vgg16", "mixed_float16", "GPU"),
    # the cnn trains whole: bfloat16 wherever the CPU computes it natively
    ("auto", False, SAPPHIRE_RAPIDS, "cnn", "mixed_bfloat16", "has amx_bf16, avx512_bf16, on which "
                                                             "the cnn trains faster"),
    ("auto", False, ZEN4, "cnn", "mixed_bfloat16", "has avx512_bf16, on which the cnn trains faster"),
    ("auto", False, SKYLAKE, "cnn", "float32", "no bfloat16 units"),
    ("auto", False, ARM, "cnn", "float32", "no bfloat16 units"),
    # a frozen backbone keeps float32 on every CPU, AMX included: bfloat16 features cost accuracy
    *[("auto", False, cpu, backbone, "float32", f"the frozen part of {backbone} keeps float32")
      for cpu in (SAPPHIRE_RAPIDS, ZEN4) for backbone in BACKBONES],
    ("auto", False, SKYLAKE, "vgg16", "float32", "no bfloat16 units"),
    ("float32", True, SAPPHIRE_RAPIDS, "vgg16", "float32", "float32 asked for"),
    ("float32", False, SAPPHIRE_RAPIDS, "cnn", "float32", "float32 asked for"),
    ("mixed", True, SKYLAKE, "vgg16", "mixed_float16", "GPU"),
    ("mixed", False, SAPPHIRE_RAPIDS, "mobilenet_v2", "mixed_bfloat16", "amx_bf16"),
    ("mixed", False, ZEN4, "mobilenet_v2", "mixed_bfloat16", "avx512_bf16"),
    ("mixed", False, SKYLAKE, "vgg16", "mixed_bfloat16", "emulated and slower"),
])
def test_auto_resolves_by_machine_and_model(requested, gpu, cpuinfo, model, policy, reason):
    chosen = precision.resolve(requested, gpu=gpu, model=model,
                               cpu_flags=precision.cpu_bf16_flags(cpuinfo))
    assert chosen.policy == policy and reason in chosen.reason, chosen


def test_the_tests_see_a_cpu_without_bfloat16_units_whatever_they_run_on():
    """conftest fakes the CPU's flags: `auto` means the same in every test on every machine."""
    assert precision.cpu_bf16_flags() == frozenset()
    assert precision.resolve("auto", gpu=False, model="cnn").policy == "float32"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    x, y = shapes_dataset(10, 32, seed=1)
    test = np.arange(len(y)) % 5 == 0
    path = tmp_path_factory.mktemp("data") / "tiny.npz"
    np.savez(path, X_train=x[~test], y_train=y[~test], X_test=x[test], y_test=y[test],
             class_names=np.array(["square", "disc", "bar"]),
             meta=np.array(json.dumps({"fit": "crop", "size": 32})))
    return path


def cached_features(cache):
    """{.npy name: (dtype numpy reads, dtype recorded)} of a feature cache."""
    folder = cache / "features"
    return {p.name: (np.load(p, allow_pickle=False).dtype.name,
                     json.loads(p.with_suffix(".json").read_text())["dtype"])
            for p in sorted(folder.glob("*.npy"))} if folder.exists() else {}


def weighted_policies(model) -> set[str]:
    """The dtype policies of the layers with weights in `model`, nested models included."""
    found = set()
    for layer in model.layers:
        if hasattr(layer, "layers"):
            found |= weighted_policies(layer)
        elif layer.weights:
            found.add(layer.dtype_policy.name)
    return found


@on_cpu_only
@pytest.mark.slow
@pytest.mark.parametrize("strategy", STRATEGIES)
def test_every_strategy_trains_in_mixed_precision(tiny, tmp_path, strategy):
    result = run_cli("train", "--strategy", strategy, "--data", tiny, "--weights", "none",
                     "--epochs", 1, "--batch-size", 8, "--views", 2, "--precision", "mixed",
                     "--out", tmp_path / "run", "--cache-dir", tmp_path / "cache")
    assert result.exit_code == 0, result.output
    line = "precision mixed_bfloat16 (mixed: bfloat16 on the CPU"
    printed = [text for text in result.output.splitlines() if text.startswith("precision ")]
    assert len(printed) == 1 and printed[0].startswith(line), result.output
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["precision"] == "mixed" and config["precision_policy"] == "mixed_bfloat16"
    features = cached_features(tmp_path / "cache")
    # bfloat16 features are kept as their raw 16 bits, which numpy reads without pickle
    expected = {"cnn": 0, "extract": 2, "finetune": 2, "augment": 3}[strategy]
    assert list(features.values()) == [("uint16", "bfloat16")] * expected
    # the saved model, reloaded, gives the report the run gave
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert evaluate(tmp_path / "run").metrics["confusion_matrix"] == metrics["confusion_matrix"]
    model, _ = models.load_model(tmp_path / "run" / "model.keras")
    if strategy == "cnn":  # all of it trains in bfloat16, but for the float32 softmax
        assert weighted_policies(model) == {"mixed_bfloat16", "float32"}
        assert model.layers[-1].layers[-1].dtype_policy.name == "float32"
    else:  # bfloat16 for the frozen pass only; what trains, trains in float32
        assert weighted_policies(model.get_layer("lower")) == {"mixed_bfloat16"}
        assert weighted_policies(model.get_layer("trainer")) == {"float32"}
        assert ("augment" in [layer.name for layer in model.layers]) == (strategy == "augment")


def test_auto_says_what_it_chose_and_float32_features_never_mix_with_bf16(tiny, tmp_path, monkeypatch):
    """Even with AMX (faked), auto computes extract's frozen features in float32; a forced
    bfloat16 run beside it caches its own."""
    fake_cpu(monkeypatch, SAPPHIRE_RAPIDS)
    cache = tmp_path / "cache"
    auto = train(tiny, "extract", out=tmp_path / "auto", weights="none", epochs=1, verbose=0,
                 cache_dir=str(cache))
    expected = precision.resolve("auto", gpu=GPU, model="vgg16")
    assert expected.policy == ("mixed_float16" if GPU else "float32")
    config = json.loads((tmp_path / "auto" / "config.json").read_text())
    assert (config["precision"], config["precision_policy"], config["precision_reason"]) == (
        "auto", expected.policy, expected.reason)
    assert auto.metrics["precision"] == {"policy": expected.policy, "reason": expected.reason}
    run = train(tiny, "extract", out=tmp_path / "other", weights="none", epochs=1, verbose=0,
                cache_dir=str(cache), precision="mixed")
    assert sorted(cached_features(cache).values()) == sorted(
        [STORED[expected.policy]] * 2 + [STORED[run.metrics["precision"]["policy"]]] * 2)


@on_cpu_only
@pytest.mark.slow
@pytest.mark.interrupt
def test_resume_keeps_the_precision_the_run_resolved_to(tiny, tmp_path, monkeypatch):
    """Started where auto means bfloat16 for the cnn (AMX), resumed where it means float32."""
    fake_cpu(monkeypatch, SAPPHIRE_RAPIDS)
    with interrupted_after_first_epoch(monkeypatch, real_signal=True), pytest.raises(Interrupted):
        train(tiny, "cnn", out=tmp_path / "run", weights="none", epochs=3, patience=3,
              batch_size=8, verbose=0)
    assert json.loads((tmp_path / "run" / "checkpoint" / "state.json").read_text())["epoch"] == 0
    fake_cpu(monkeypatch, SKYLAKE)
    assert precision.resolve("auto", gpu=False, model="cnn").policy == "float32"
    run = resume(tmp_path / "run", verbose=0)
    assert run.metrics["precision"]["policy"] == "mixed_bfloat16"
    assert run.metrics["epochs_run"] == 3


@pytest.mark.slow
def test_a_bfloat16_finetune_model_gives_the_embedding_of_the_pooled_top(tiny, tmp_path):
    """A bfloat16 run saves image -> lower -> trainer; what predict, unknown and an export
    call the embedding is still the backbone's pooled top, not the cut below the trainable
    block (MobileNetV2: 1,280 wide, where the cut is 160)."""
    from PIL import Image

    from toolkit.models.serving import with_embedding

    run = train(tiny, "finetune", backbone="mobilenet_v2", out=tmp_path / "mixed", epochs=1,
                weights="none", batch_size=16, precision="mixed", verbose=0,
                cache_dir=str(tmp_path / "cache"))
    served = with_embedding(run.model)
    embedding = served.predict_on_batch(np.zeros((1, 32, 32, 3), "uint8"))["embedding"]
    assert embedding.shape[-1] == 1280  # what a float32 run's embedding is: the pooled top
    Image.fromarray(np.full((32, 32, 3), 200, np.uint8)).save(tmp_path / "photo.png")
    [answer] = predict(run.folder, [tmp_path / "photo.png"])  # unknown or not: no crash
    assert not answer.error and answer.closest in ("square", "disc", "bar"), answer
