"""What a training run can be asked for: the choices, and :class:`TrainConfig`, which checks them.

TrainConfig is the one table of training options and their defaults: `train` takes its
fields as keywords of the same names, `compare` takes a TrainConfig, and the command line's
flags read their defaults from it. Nothing heavy is imported here, so the command line
reads its choices from this module without starting TensorFlow.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from pathlib import Path

from ..core.architectures import BACKBONES, HEADS, STRATEGIES
from ..core.errors import OptionError
from .precision import PRECISIONS

LEARNING_RATES = {"cnn": 1e-3, "extract": 1e-3, "finetune": 1e-4, "augment": 1e-4}
AUGMENT_MODES = ("auto", "cached", "online")
DISTRIBUTIONS = ("none", "mirrored", "multiworker")


@dataclass
class TrainConfig:
    """Everything a run is asked for; saved as the run's config.json.

    The defaults here are the library's and the command line's (which reads them from here).
    What the options resolve to on a machine (the precision policy) is run state:
    :class:`toolkit.training.runs.Resolved`.
    """

    data: str = "animal.npz"         # the archive made by `pack`
    strategy: str = "finetune"       # one of STRATEGIES
    backbone: str = "vgg16"          # one of BACKBONES
    weights: str = "imagenet"        # imagenet | none | a weights file
    epochs: int = 50
    batch_size: int = 128            # per replica
    learning_rate: float | None = None  # None: LEARNING_RATES[strategy]
    seed: int = 42
    validation_split: float = 0.2
    patience: int = 5
    trainable: list[str] | None = None  # None: the backbone's `finetune` patterns
    head: str = "flatten"            # one of HEADS: flatten (the study's) | pool
    views: int = 4
    augment_mode: str = "auto"       # one of AUGMENT_MODES
    precision: str = "auto"          # one of PRECISIONS
    distribute: str = "none"         # one of DISTRIBUTIONS
    deterministic: bool | None = None  # None: on for CPU, off for GPU
    cache_dir: str | None = None

    def check(self) -> None:
        """Raise an OptionError naming the first parameter whose value cannot work."""
        choices = {"strategy": STRATEGIES, "backbone": tuple(BACKBONES), "head": HEADS,
                   "augment_mode": AUGMENT_MODES, "precision": PRECISIONS,
                   "distribute": DISTRIBUTIONS}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise OptionError(name, getattr(self, name), f"choose from {', '.join(allowed)}")
        for name in ("epochs", "batch_size", "patience", "views"):
            if getattr(self, name) < 1:
                raise OptionError(name, getattr(self, name), "must be at least 1")
        if not 0 <= self.validation_split < 1:
            raise OptionError("validation_split", self.validation_split, "must be in [0, 1)")
        if self.learning_rate is not None and not self.learning_rate > 0:
            raise OptionError("learning_rate", self.learning_rate, "must be positive")

    @classmethod
    def from_arguments(cls, arguments: dict) -> TrainConfig:
        """The config of `train`'s arguments, whose parameters are these fields by name
        (a field `train` lacks is a KeyError here, not an option silently left out)."""
        return cls(**{f.name: arguments[f.name] for f in fields(cls)}).as_saved()

    def as_saved(self) -> TrainConfig:
        """This config as config.json keeps it: the archive's absolute path, strings for
        paths, a list (or None) of trainable layers."""
        return replace(self, data=str(Path(self.data).resolve()), weights=str(self.weights),
                       trainable=list(self.trainable) if self.trainable else None,
                       cache_dir=None if self.cache_dir is None else str(self.cache_dir))

    @classmethod
    def from_json(cls, data: dict) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})
