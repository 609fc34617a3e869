"""Options that several commands share, written once, and the library's defaults and choices,
read only when a command needs them.

A shared option is a preset: a function that returns Click's decorator (Click's own
`version_option` pattern). A default or a choice is the library's own, looked up in the
function or module that defines it when Click first needs it - to parse that command or to
print its help - so `toolkit --help` imports no stage (requests, Pillow, NumPy) and each
command imports only its own.
"""

from __future__ import annotations

import functools
import importlib
import inspect

import click

from ..core.architectures import BACKBONES

#: The help's note on where --cache-dir defaults to (toolkit/models/cache.py decides it).
CACHE_DEFAULT = "[default: $TOOLKIT_CACHE_DIR or ~/.cache/toolkit]"


def _find(where: str):
    """The object `module:name` names, its module imported now."""
    module, _, name = where.partition(":")
    return getattr(importlib.import_module(module), name)


class LibraryDefault:
    """The default of `parameter` of the library function `function` (`module:name`), or an
    `attribute` of that default. Click calls it for the value, and shows str() of it in the
    help; either way the library is imported then, not when the command line starts."""

    def __init__(self, function: str, parameter: str, attribute: str = ""):
        self.function, self.parameter, self.attribute = function, parameter, attribute

    @functools.cached_property
    def value(self):
        default = inspect.signature(_find(self.function)).parameters[self.parameter].default
        return getattr(default, self.attribute) if self.attribute else default

    def __call__(self):
        return self.value

    def __str__(self) -> str:
        return str(self.value)


class LibraryChoice(click.Choice):
    """The choices a library module names (`module:NAME`, any iterable of strings), read when
    Click first needs them."""

    def __init__(self, where: str):
        self.where, self.case_sensitive = where, True

    @functools.cached_property
    def choices(self) -> tuple[str, ...]:
        return tuple(_find(self.where))


def min_side_option(function: str, note: str = ""):
    """--min-side, defaulting to `function`'s `checks`."""
    return click.option("--min-side", default=LibraryDefault(function, "checks", "min_side"),
                        show_default=True, type=click.IntRange(1),
                        help=f"Smallest usable image side, in pixels{note}.")


def threshold_option(function: str, note: str = ""):
    """--threshold, defaulting to `function`'s `threshold`."""
    return click.option("--threshold", default=LibraryDefault(function, "threshold"),
                        show_default=True, type=click.IntRange(0, 64),
                        help=f"Perceptual-hash bits within which two images are the same picture{note}.")


def weights_option(default: object):
    """--weights of a pretrained backbone."""
    return click.option("--weights", default=default, show_default=True, type=str,
                        help="imagenet (Keras' download and cache), none (random), or a weights file.")


def cache_dir_option(what: str):
    """--cache-dir, where `what` is cached (the folder toolkit/models/cache.py picks by default)."""
    return click.option("--cache-dir", default=None, type=click.Path(file_okay=False),
                        help=f"Where {what} are cached.  {CACHE_DEFAULT}")


def backbone_option(default: object, purpose: str):
    """--backbone, one of the pretrained bases toolkit/core/architectures.py names."""
    return click.option("--backbone", default=default, show_default=True,
                        type=click.Choice(list(BACKBONES)), help=purpose)


def trust_saved_model_option():
    """--trust-saved-model: a SavedModel export is a TensorFlow graph, which is code."""
    return click.option("--trust-saved-model", is_flag=True,
                        help="Load a SavedModel export: its graph is code that runs, so only one "
                             "you trust (your own included). LiteRT and ONNX exports load as data.")
