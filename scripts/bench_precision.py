"""Benchmark `--precision`: the same archive and strategy in float32 and in auto (or mixed).

Each precision trains in its own process, with its own empty feature cache, so that its
seconds and its peak memory (`ru_maxrss`) are its own. Prints the CPU, its bfloat16 flags
and the load average, then one row per precision: the policy it resolved to, the seconds of
the frozen pass (computing the cached features) and of the training, the peak memory and
the test accuracy; and the ratios of the second precision to the first.

    python scripts/bench_precision.py ARCHIVE [--strategy extract] [--backbone vgg16]
        [--weights none] [--precisions float32,auto] [--per-class N] [--epochs 50] [--repeat 1]

`--per-class N` trains on a seeded subset of N images per class (split as the archive is)
so that a run takes minutes instead of an hour. `--repeat R` runs the precisions R times,
alternating, and reports each column's median: on a shared machine the load changes
from one run to the next.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from pathlib import Path

import numpy as np

from _bench import machine, measure, scratch_folder, table, toolkit_command
from toolkit.precision import cpu_bf16_flags


def subset(archive: str, per_class: int, seed: int, out: Path) -> str:
    """`per_class` images of each class, train and test in the archive's proportions."""
    data = dict(np.load(archive))
    rng = np.random.default_rng(seed)
    share = len(data["y_test"]) / (len(data["y_test"]) + len(data["y_train"]))
    n_test = max(1, round(per_class * share))
    for part, n in (("train", per_class - n_test), ("test", n_test)):
        labels = data[f"y_{part}"]
        rows = np.sort(np.concatenate([rng.permutation(np.flatnonzero(labels == c))[:n]
                                       for c in np.unique(labels)]))
        for name in (f"X_{part}", f"y_{part}", f"paths_{part}"):
            if name in data:
                data[name] = data[name][rows]
    np.savez(out, **data)
    return str(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("archive")
    parser.add_argument("--strategy", default="extract")
    parser.add_argument("--backbone", default="vgg16")
    parser.add_argument("--weights", default="none")
    parser.add_argument("--precisions", default="float32,auto")
    parser.add_argument("--per-class", type=int, default=None,
                        help="use a seeded subset of this many images per class")
    parser.add_argument("--epochs", type=int, default=50)
    parser.add_argument("--patience", type=int, default=5)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--repeat", type=int, default=1)
    args = parser.parse_args()

    print(machine())
    flags = cpu_bf16_flags()
    print(f"bfloat16 flags: {', '.join(sorted(flags)) or 'none (no amx_bf16, no avx512_bf16)'}")
    print("load average before: {:.2f} {:.2f} {:.2f}".format(*os.getloadavg()))
    print(f"command: python scripts/bench_precision.py {' '.join(sys.argv[1:])}")
    runs: dict[str, list[tuple]] = {}
    policies: dict[str, str] = {}
    with scratch_folder() as work:
        archive = args.archive
        if args.per_class:
            archive = subset(archive, args.per_class, args.seed, Path(work) / "subset.npz")
        images = {k: len(v) for k, v in np.load(archive).items() if k in ("y_train", "y_test")}
        print(f"images: {images['y_train']} train / {images['y_test']} test")
        for repeat, precision in [(r, p) for r in range(args.repeat)
                                  for p in args.precisions.split(",")]:
            run = Path(work) / f"run-{precision}-{repeat}"
            measured = measure(toolkit_command(
                "train", "--strategy", args.strategy, "--data", archive, "--backbone",
                args.backbone, "--weights", args.weights, "--epochs", str(args.epochs),
                "--patience", str(args.patience), "--seed", str(args.seed), "--precision",
                precision, "--out", str(run), "--cache-dir", str(Path(work) / f"cache-{precision}-{repeat}")))
            metrics = json.loads((run / "metrics.json").read_text())
            seconds = metrics["seconds"]
            policies[precision] = metrics["precision"]["policy"]
            runs.setdefault(precision, []).append((
                seconds.get("features", 0.0), seconds["training"], metrics["epochs_run"],
                measured.seconds, measured.peak_mib, metrics["accuracy"]))
            print(f"{precision}: {metrics['precision']['reason']}; features, training, epochs, "
                  f"process s, peak MiB, accuracy: {runs[precision][-1]}", flush=True)
    rows, results = [], []
    for precision, measured_runs in runs.items():
        f, t, e, s, m, a = (statistics.median(column) for column in zip(*measured_runs))
        results.append((f, t, m, a))
        rows.append([f"{precision} ({policies[precision]})", f"{f:.1f}", f"{t:.1f}", f"{e:g}",
                     f"{s:.1f}", f"{m:,.0f}", f"{a:.3f}"])
    if len(results) == 2:
        (f0, t0, m0, a0), (f1, t1, m1, a1) = results
        rows.append(["speed-up, memory, accuracy", f"**{f0 / f1:.2f}x**" if f1 else "",
                     f"**{t0 / t1:.2f}x**", "", "",
                     f"{m1 / m0:.2f}x", f"{a1 - a0:+.3f}"])
    print("load average after: {:.2f} {:.2f} {:.2f}".format(*os.getloadavg()))
    print(f"\n{args.strategy} / {args.backbone} (--weights {args.weights})\n")
    print(table(["--precision (policy)", "frozen pass s", "training s", "epochs",
                 "process s", "peak MiB", "test accuracy"], rows))


if __name__ == "__main__":
    main()
