"""Which floating-point precision a run computes in, and why.

`--precision auto` (the default) picks float16 compute on a GPU, bfloat16 compute on a CPU
whose bfloat16 units make the model faster, and float32 otherwise. Variables, the softmax
and the loss stay float32 under every policy (Keras' mixed policies; the head's last layer
is float32). A run records the policy it resolved to, and a resumed run keeps it.

What counts as "faster" on a CPU was measured, not assumed (README, Performance 7):
- AMX (`amx_bf16`, Intel Sapphire Rapids and later): bfloat16 matrix units; bfloat16 for
  every model.
- AVX512_BF16 alone (`avx512_bf16`: AMD Zen 4 and later, Intel Cooper Lake): only
  bfloat16 dot products. oneDNN's dense convolutions gain from it, its depthwise ones and
  batch normalisation do not, so MobileNetV2 and EfficientNetB0 run *slower* in bfloat16
  than in float32: `auto` keeps those in float32.
- Neither: bfloat16 would be emulated, slower than float32: float32.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

PRECISIONS = ("auto", "float32", "mixed")

#: CPU flags (as /proc/cpuinfo spells them) of units that compute bfloat16 natively.
AMX_BF16, AVX512_BF16 = "amx_bf16", "avx512_bf16"

#: Models that run faster in bfloat16 than in float32 on a CPU with AVX512_BF16 but no AMX
#: (scripts/bench_precision.py; "cnn" is the study's small CNN, the others are backbones).
FASTER_WITH_AVX512_BF16 = frozenset({"cnn", "vgg16", "vgg19", "resnet50"})


@dataclass(frozen=True)
class Precision:
    """A resolved precision: the Keras dtype policy and the reason it was chosen."""

    policy: str  # float32 | mixed_float16 | mixed_bfloat16
    reason: str


def cpu_bf16_flags(cpuinfo: str | None = None) -> frozenset[str]:
    """The bfloat16 flags (amx_bf16, avx512_bf16) of this CPU, or of the given
    /proc/cpuinfo text; empty where the file cannot be read (not Linux)."""
    if cpuinfo is None:
        try:
            with open("/proc/cpuinfo") as f:
                cpuinfo = f.read()
        except OSError:
            return frozenset()
    for line in cpuinfo.splitlines():
        name, _, value = line.partition(":")
        if name.strip() == "flags":  # the same for every core: the first line tells
            return frozenset(value.split()) & {AMX_BF16, AVX512_BF16}
    return frozenset()


def resolve(requested: str, *, gpu: bool, model: str,
            cpu_flags: frozenset[str] | None = None) -> Precision:
    """The policy for `requested` (auto, float32 or mixed) when training `model` (`cnn` or
    a backbone's name) on this machine (a GPU, or a CPU with `cpu_flags`)."""
    if requested == "float32":
        return Precision("float32", "float32 asked for")
    if gpu:
        return Precision("mixed_float16", f"{requested}: float16 on the GPU")
    flags = cpu_bf16_flags() if cpu_flags is None else cpu_flags
    has = f"this CPU has {', '.join(sorted(flags))}" if flags else \
        f"this CPU has no bfloat16 units (no {AMX_BF16} or {AVX512_BF16})"
    if requested == "mixed":
        slower = "" if flags else ", so bfloat16 is emulated and slower than float32"
        return Precision("mixed_bfloat16", f"mixed: bfloat16 on the CPU ({has}{slower})")
    if AMX_BF16 in flags:
        return Precision("mixed_bfloat16", f"auto: {has}")
    if AVX512_BF16 in flags:
        if model in FASTER_WITH_AVX512_BF16:
            return Precision("mixed_bfloat16", f"auto: {has}, on which {model} runs faster "
                                               "in bfloat16")
        return Precision("float32", f"auto: {has} but not {AMX_BF16}, on which {model} runs "
                                    "slower in bfloat16")
    return Precision("float32", f"auto: {has}")


@contextlib.contextmanager
def scope(policy: str) -> Iterator[None]:
    """Build the models inside under the dtype `policy`; the global policy is restored after."""
    import keras  # not at import: the CLI reads PRECISIONS before TensorFlow may load

    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy(policy)
    try:
        yield
    finally:
        keras.mixed_precision.set_global_policy(previous)


def in_float32(model):
    """`model` rebuilt to compute in float32, with the same weights; `model` itself if it does
    already. An export runs where bfloat16 is not computed (LiteRT on phones, ONNX Runtime)."""
    import keras

    config = model.get_config()
    if not _set_float32(config):
        return model
    rebuilt = keras.Model.from_config(config)
    rebuilt.set_weights(model.get_weights())
    return rebuilt


def _set_float32(node) -> bool:
    """Turn every mixed dtype policy in a Keras config into float32; whether any was."""
    if isinstance(node, dict):
        if node.get("class_name") == "DTypePolicy" and node["config"].get("name") != "float32":
            node["config"]["name"] = "float32"
            return True
        return any([_set_float32(value) for value in node.values()])
    if isinstance(node, list):
        return any([_set_float32(value) for value in node])
    return False
