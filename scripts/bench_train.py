"""Benchmark `toolkit train` against the original notebook's recipe, per strategy.

The recipe is Keras `fit` on the whole model, the base computed on every image in every
epoch, batch 128, `validation_split=0.2`, arrays in memory. It is measured for
`--recipe-epochs` epochs and extrapolated (the first epoch, which traces the graph, plus
the mean of the others for every further epoch). The toolkit runs for real, all
`--epochs` epochs (early stopping off), with an empty feature cache. Each side runs in
its own process for its peak memory. `--second-run` then runs the toolkit once more on the
same archive and cache (what a second run or another strategy at the same cut costs).

    python scripts/bench_train.py ARCHIVE [--backbone vgg16] [--weights none] [--epochs 50]
                                  [--strategies extract,finetune,augment] [--second-run]
                                  [--precision float32]

The toolkit side runs `--precision float32` unless told otherwise: the recipe computes in
float32 too.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from _bench import machine, measure, scratch_folder, table, toolkit_command
from toolkit.reports.metrics import read_metrics


def recipe(archive: str, strategy: str, backbone: str, weights: str, epochs: int,
           report: str) -> None:
    """The notebook's way (run in a child process)."""
    import keras
    import numpy as np

    from toolkit import models

    data = np.load(archive)
    x, y = data["X_train"], data["y_train"]
    split = models.build(strategy, x.shape[1:], len(data["class_names"]), backbone=backbone,
                         weights=weights)
    model = split.model  # augmentation (for augment) runs inside, on every batch
    model.compile(optimizer=keras.optimizers.Adam(1e-4), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    times = []

    class Clock(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.start = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            times.append(time.perf_counter() - self.start)

    model.fit(x, y, batch_size=128, epochs=epochs, validation_split=0.2, verbose=0,
              callbacks=[Clock()])
    Path(report).write_text(json.dumps(times))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("archive")
    parser.add_argument("--strategies", default="extract,finetune,augment")
    parser.add_argument("--backbone", default="vgg16")
    parser.add_argument("--weights", default="none")
    parser.add_argument("--epochs", type=int, default=50)
    parser.add_argument("--precision", default="float32",
                        help="the toolkit's --precision (the recipe computes in float32)")
    parser.add_argument("--recipe-epochs", type=int, default=2)
    parser.add_argument("--second-run", action="store_true",
                        help="also time a second toolkit run that finds the features cached")
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        recipe(args.archive, args.child[0], args.backbone, args.weights, args.recipe_epochs,
               args.child[1])
        return

    rows = []
    with scratch_folder() as work:
        for strategy in args.strategies.split(","):
            times_file = Path(work) / f"{strategy}.json"
            old = measure([sys.executable, __file__, args.archive, "--backbone", args.backbone,
                           "--weights", args.weights, "--recipe-epochs", str(args.recipe_epochs),
                           "--child", strategy, str(times_file)])
            times = json.loads(times_file.read_text())
            per_epoch = sum(times[1:]) / max(1, len(times) - 1) if len(times) > 1 else times[0]
            old_total = times[0] + per_epoch * (args.epochs - 1)
            run = Path(work) / f"run-{strategy}"
            def toolkit_run(folder: Path):
                return measure(toolkit_command(
                    "train", "--strategy", strategy, "--data", args.archive, "--backbone",
                    args.backbone, "--weights", args.weights, "--epochs", str(args.epochs),
                    "--patience", str(args.epochs), "--precision", args.precision,
                    "--out", str(folder),
                    "--cache-dir", str(Path(work) / f"cache-{strategy}")))

            new = toolkit_run(run)
            seconds = read_metrics(run)["seconds"]
            rows.append([strategy, f"{per_epoch:.1f}", f"{old_total:.0f}", f"{old.peak_mib:.0f}",
                         f"{new.seconds:.0f}", f"{seconds.get('features', 0):.0f}",
                         f"{seconds.get('training', 0):.0f}", f"{new.peak_mib:.0f}",
                         f"**{old_total / new.seconds:.1f}x**"])
            if args.second_run:
                rows[-1].append(f"{toolkit_run(Path(work) / f'again-{strategy}').seconds:.0f}")
            print(rows[-1], flush=True)
    print(f"{args.archive}, {args.backbone} weights={args.weights}, {args.epochs} epochs; {machine()}")
    print(table(["strategy", "recipe s/epoch", f"recipe {args.epochs} epochs s (extrapolated)",
                 "recipe peak MiB", f"toolkit {args.epochs} epochs s", "of which features s",
                 "of which training s", "toolkit peak MiB", "speed-up",
                 *(["second run s (cached)"] if args.second_run else [])], rows))


if __name__ == "__main__":
    main()
