"""What a training run can be asked for: the choices, and :class:`TrainConfig`, which checks them.

Nothing heavy is imported here, so the command line reads its choices from this module
without starting TensorFlow.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

from .errors import ToolkitError

STRATEGIES = ("cnn", "extract", "finetune", "augment")
LEARNING_RATES = {"cnn": 1e-3, "extract": 1e-3, "finetune": 1e-4, "augment": 1e-4}


@dataclass
class TrainConfig:
    """Everything a run depends on; saved as the run's config.json."""

    data: str
    strategy: str = "finetune"
    backbone: str = "vgg16"
    weights: str = "imagenet"
    epochs: int = 50
    batch_size: int = 128
    learning_rate: float | None = None
    seed: int = 42
    validation_split: float = 0.2
    patience: int = 5
    trainable: list[str] | None = None
    head: str = "flatten"           # flatten (the study's) | pool
    views: int = 4
    augment_mode: str = "auto"      # auto | cached | online
    precision: str = "float32"      # float32 | mixed
    distribute: str = "none"        # none | mirrored | multiworker
    deterministic: bool | None = None
    cache_dir: str | None = None

    def check(self) -> None:
        problems = {
            self.strategy not in STRATEGIES: f"--strategy {self.strategy}: choose from {', '.join(STRATEGIES)}",
            self.epochs < 1: f"--epochs {self.epochs}: must be at least 1",
            self.batch_size < 1: f"--batch-size {self.batch_size}: must be at least 1",
            not 0 <= self.validation_split < 1: f"--validation-split {self.validation_split}: must be in [0, 1)",
            self.patience < 1: f"--patience {self.patience}: must be at least 1",
            self.views < 1: f"--views {self.views}: must be at least 1",
            self.augment_mode not in ("auto", "cached", "online"): f"--augment-mode {self.augment_mode}: auto, cached or online",
            self.precision not in ("float32", "mixed"): f"--precision {self.precision}: float32 or mixed",
            self.head not in ("flatten", "pool"): f"--head {self.head}: flatten or pool",
            self.distribute not in ("none", "mirrored", "multiworker"): f"--distribute {self.distribute}: none, mirrored or multiworker",
            self.learning_rate is not None and not self.learning_rate > 0: f"--learning-rate {self.learning_rate}: must be positive",
        }
        for bad, message in problems.items():
            if bad:
                raise ToolkitError(message)

    @classmethod
    def from_json(cls, data: dict) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})
