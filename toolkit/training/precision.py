"""Which floating-point precision a run computes in, and why.

`--precision auto` (the default) picks float16 compute on a GPU and, on a CPU, bfloat16 only
where it is both faster and as accurate as float32; float32 otherwise. Variables, the softmax
and the loss stay float32 under every policy (Keras' mixed policies; the head's last layer
is float32). A run records the policy it resolved to, and a resumed run keeps it.

On a CPU (measured with scripts/bench_precision.py; notes/precision.md has the numbers):
- A frozen backbone (extract, finetune, augment) keeps float32, even with AMX. Its weights
  were fitted in float32 and cannot adapt to bfloat16's rounding: with MobileNetV2's
  ImageNet weights the bfloat16 features are 9% off float32's at 96 px (each linear
  bottleneck's bias cancels most of its convolution's output, amplifying the rounding) and
  extract lost 2 of 30 test images on average over 8 seeds. There are no other real weights
  offline, and random weights understate the error fourfold (their biases are zero), so no
  other backbone's bfloat16 features can be shown to keep accuracy. What float32 gives up is
  paid once per image (the frozen pass is cached), and for MobileNetV2 and EfficientNetB0
  nothing: their bfloat16 forward pass is slower than float32's even with AMX.
- The cnn trains whole in bfloat16 where the CPU has bfloat16 units - AMX (`amx_bf16`, Intel
  Sapphire Rapids and later) or AVX512_BF16 (`avx512_bf16`: AMD Zen 4, Intel Cooper Lake):
  4.2x faster with AMX, 1.8x with AVX512_BF16 alone, and as accurate (its weights are
  trained in the precision they run in).
- Neither unit: bfloat16 would be emulated, slower than float32: float32.
`--precision mixed` forces bfloat16 for everything, the frozen pass included, on any CPU.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

PRECISIONS = ("auto", "float32", "mixed")

#: CPU flags (as /proc/cpuinfo spells them) of units that compute bfloat16 natively.
AMX_BF16, AVX512_BF16 = "amx_bf16", "avx512_bf16"

#: What trains whole, with no frozen part: the only model `auto` runs in bfloat16 on a CPU.
TRAINED_WHOLE = "cnn"


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
    if model != TRAINED_WHOLE:
        return Precision("float32", f"auto: {has}, but the frozen part of {model} keeps float32 "
                                    "on a CPU, where bfloat16 features cost accuracy")
    if flags:
        return Precision("mixed_bfloat16", f"auto: {has}, on which the cnn trains faster in "
                                           "bfloat16 and as accurately")
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
