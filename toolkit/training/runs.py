"""The run folder: where it is made, its config.json, what a finished run leaves in it, the clock
of its phases."""

from __future__ import annotations

import csv
import json
import os
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from .. import __version__
from ..core.errors import OptionError, ToolkitError
from ..core.files import atomic_path, write_json
from ..core.text import folder_stamp, timestamp
from ..data.npz import Archive
from ..reports.metrics import RunMetrics
from .config import TrainConfig
from .precision import Precision

CONFIG_FILE = "config.json"


@dataclass(frozen=True)
class Resolved:
    """What a run's options came to on the machine that started it: run state, not a request.
    Resume keeps it, so a resumed run computes as it began."""

    precision: Precision

    def to_json(self) -> dict:
        return {"precision_policy": self.precision.policy, "precision_reason": self.precision.reason}

    @classmethod
    def from_json(cls, data: dict) -> Resolved | None:
        """None for a run folder from before `--precision auto`: resolve it once, then."""
        if data.get("precision_policy") is None:
            return None
        return cls(Precision(data["precision_policy"], data.get("precision_reason")))


def write_config(folder: Path, config: TrainConfig, resolved: Resolved) -> None:
    """config.json: the options asked for, and beside `precision` what it resolved to."""
    saved = {}
    for name, value in asdict(config).items():
        saved[name] = value
        if name == "precision":
            saved.update(resolved.to_json())
    write_json(folder / CONFIG_FILE, saved)


def read_config(folder: Path) -> tuple[TrainConfig, Resolved | None]:
    """The options and the resolved state a run folder's config.json holds."""
    try:
        saved = json.loads((folder / CONFIG_FILE).read_text())
        return TrainConfig.from_json(saved), Resolved.from_json(saved)
    except (OSError, ValueError, TypeError) as e:
        raise ToolkitError(f"{folder} is not a run folder (no readable config.json: {e})") from None


def new_run_folder(out: str | os.PathLike | None, config: TrainConfig) -> Path:
    """`out` (which must be new or empty), or runs/<strategy>[-<backbone>]-<time>."""
    if out is None:
        name = config.strategy if config.strategy == "cnn" else f"{config.strategy}-{config.backbone}"
        return timestamped(Path("runs"), name)
    folder = Path(out)
    if (folder / CONFIG_FILE).exists():
        raise OptionError("out", str(folder), "already holds a run; resume it (toolkit train "
                          "--resume) or choose another folder")
    if folder.exists() and any(folder.iterdir()):
        raise OptionError("out", str(folder), "is not empty; choose a new folder")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def discard(folder: Path, created: bool) -> None:
    """Remove what a failed run wrote: the folder if the run made it, else its contents."""
    if created:
        shutil.rmtree(folder, ignore_errors=True)
        return
    for child in folder.iterdir():
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child, ignore_errors=True)
        else:
            child.unlink(missing_ok=True)


def timestamped(parent: Path, name: str) -> Path:
    """A new folder parent/name-<local time>, made here (a suffix if that second is taken)."""
    stamp = folder_stamp()
    for n in range(1000):
        folder = parent / (f"{name}-{stamp}" + (f"-{n}" if n else ""))
        try:
            folder.mkdir(parents=True)
            return folder
        except FileExistsError:
            continue
    raise ToolkitError(f"cannot create a run folder under {parent}")


def save_run(folder: Path, config: TrainConfig, archive: Archive, model, evaluation: dict,
             metrics: RunMetrics, history: dict) -> str:
    """Write the model and the report files; return the report text."""
    from .. import models
    from ..reports.report import write_run_report

    models.save_model(model, folder / "model.keras", {
        "class_names": archive.class_names, "image_size": list(archive.image_shape),
        "fit": archive.meta.get("fit", "crop"), "strategy": config.strategy,
        "backbone": metrics["backbone"], "weights": metrics["weights"], "data": config.data,
        "toolkit": __version__,
        "created": timestamp()})
    write_history(folder / "history.csv", history)
    title = (config.strategy + ("" if config.strategy == "cnn" else f" / {config.backbone}")
             + f" on {Path(config.data).name}")
    return write_run_report(folder, evaluation, history, metrics, title)


def write_history(path: Path, history: dict[str, list[float]]) -> None:
    names = sorted(history)
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["epoch", *names])
        for i in range(len(history.get("loss", []))):
            writer.writerow([i + 1, *(f"{history[n][i]:.6g}" for n in names)])


class Clock:
    """Seconds per phase (features, training, evaluation), carried across resumes."""

    def __init__(self, previous: dict[str, float]):
        self.previous = dict(previous)
        self.spent: dict[str, float] = {}
        self.begun = time.monotonic()
        self.phase, self.phase_begun = "setup", self.begun

    def start(self, phase: str) -> None:
        now = time.monotonic()
        self.spent[self.phase] = self.spent.get(self.phase, 0.0) + now - self.phase_begun
        self.phase, self.phase_begun = phase, now

    def totals(self) -> dict[str, float]:
        self.start(self.phase)
        phases = set(self.previous) | set(self.spent)
        totals = {p: round(self.previous.get(p, 0.0) + self.spent.get(p, 0.0), 2)
                  for p in phases if p != "total"}
        totals["total"] = round(sum(totals.values()), 2)
        return totals


def write_pages(folder: str | os.PathLike, archive: Archive, test_probabilities) -> None:
    """report.html and MODEL_CARD.md: the finished run, for people."""
    from ..reports.model_card import write_model_card
    from ..reports.pages import gather
    from ..reports.report_html import write_run_page

    facts = gather(folder, archive, test_probabilities)
    write_run_page(facts)
    write_model_card(facts)
