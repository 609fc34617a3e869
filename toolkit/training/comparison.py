"""Several strategies trained on one archive and set side by side: `compare`, and its table,
comparison.json, plot and page."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from ..core.errors import OptionError
from ..core.files import write_json, write_text
from ..core.text import text_table
from .config import STRATEGIES, TrainConfig
from .runs import timestamped
from .trainer import train


@dataclass
class Comparison:
    """The strategies' results, one row each (comparison.json), and the folder they are in."""

    folder: Path
    rows: list[dict]

    def table(self) -> str:
        return text_table(["strategy", "accuracy", "macro F1", "epochs", "seconds", "precision"],
                          [[r["strategy"], f"{r['accuracy']:.3f}", f"{r['macro_f1']:.3f}",
                            r["epochs"], f"{r['seconds']:.1f}", r["precision"]] for r in self.rows],
                          left=(0, 5))


def compare(data: str | os.PathLike = TrainConfig.data, strategies: Sequence[str] = STRATEGIES,
            options: TrainConfig | None = None, *, out: str | os.PathLike | None = None,
            verbose: int | str = "auto", progress: bool = False) -> Comparison:
    """Train several strategies on one archive; one table and one plot of the results.

    `options` holds every other setting of `train` (None: its defaults), for example
    `TrainConfig(epochs=10, backbone="mobilenet_v2")`; its `data` and `strategy` are replaced
    by `data` and each of `strategies`. Each strategy's run goes to `out`/<strategy>.
    """
    from ..reports.report import plot_comparison
    from ..reports.report_html import write_comparison_page

    unknown = [s for s in strategies if s not in STRATEGIES]
    if unknown or not strategies:
        raise OptionError("strategies", ",".join(unknown) or "(none)",
                          f"choose from {', '.join(STRATEGIES)}")
    if len(set(strategies)) < len(strategies):
        raise OptionError("strategies", ",".join(strategies), "name each strategy once")
    folder = Path(out) if out else timestamped(Path("runs"), "compare")
    folder.mkdir(parents=True, exist_ok=True)
    settings = asdict(options or TrainConfig())
    del settings["data"], settings["strategy"]
    rows = []
    for strategy in strategies:
        run = train(data, strategy, **settings, out=folder / strategy, verbose=verbose,
                    progress=progress)
        rows.append({"strategy": strategy, "accuracy": run.metrics["accuracy"],
                     "macro_f1": run.metrics["macro_f1"], "epochs": run.metrics["epochs_run"],
                     "seconds": run.metrics["seconds"]["total"],
                     "precision": run.metrics["precision"]["policy"], "run": str(run.folder)})
    comparison = Comparison(folder, rows)
    write_text(folder / "comparison.txt", comparison.table() + "\n")
    write_json(folder / "comparison.json", rows)
    plot_comparison(rows, folder / "comparison.png")
    write_comparison_page(folder, rows)
    return comparison
