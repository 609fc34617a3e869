"""Numeric precision of the models a run builds: float32, or mixed on a GPU or a CPU."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import keras


@contextlib.contextmanager
def precision_scope(precision: str, gpu: bool) -> Iterator[None]:
    """Mixed precision for the models built inside; the global policy is restored after."""
    if precision == "float32":
        yield
        return
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy("mixed_float16" if gpu else "mixed_bfloat16")
    try:
        yield
    finally:
        keras.mixed_precision.set_global_policy(previous)
