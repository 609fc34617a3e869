"""Benchmark `--precision`: the same archive and strategy in float32 and in auto (or mixed).

Each precision trains in its own process, with its own empty feature cache, so that its
seconds and its peak memory (`ru_maxrss`) are its own. Prints the CPU, its bfloat16 flags
and the load average, then one row per precision: the policy it resolved to, the seconds of
the frozen pass (computing the cached features) and of the training, the peak memory and
the test accuracy; and the ratios of the second precision to the first.

    python scripts/bench_precision.py ARCHIVE [--strategy extract] [--backbone vgg16]
        [--weights none] [--precisions float32,auto] [--per-class N] [--epochs 50]

`--per-class N` trains on a seeded subset of N images per class (split as the archive is)
so that a run takes minutes instead of an hour.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np

from _bench import machine, measure, scratch_folder, table, toolkit_command

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from toolkit.precision import cpu_bf16_flags  # noqa: E402


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
    args = parser.parse_args()

    print(machine())
    flags = cpu_bf16_flags()
    print(f"bfloat16 flags: {', '.join(sorted(flags)) or 'none (no amx_bf16, no avx512_bf16)'}")
    print("load average before: {:.2f} {:.2f} {:.2f}".format(*os.getloadavg()))
    print(f"command: python scripts/bench_precision.py {' '.join(sys.argv[1:])}")
    rows, results = [], []
    with scratch_folder() as work:
        archive = args.archive
        if args.per_class:
            archive = subset(archive, args.per_class, args.seed, Path(work) / "subset.npz")
        images = {k: len(v) for k, v in np.load(archive).items() if k in ("y_train", "y_test")}
        print(f"images: {images['y_train']} train / {images['y_test']} test")
        for precision in args.precisions.split(","):
            run = Path(work) / f"run-{precision}"
            measured = measure(toolkit_command(
                "train", "--strategy", args.strategy, "--data", archive, "--backbone",
                args.backbone, "--weights", args.weights, "--epochs", str(args.epochs),
                "--patience", str(args.patience), "--seed", str(args.seed), "--precision",
                precision, "--out", str(run), "--cache-dir", str(Path(work) / f"cache-{precision}")))
            metrics = json.loads((run / "metrics.json").read_text())
            seconds = metrics["seconds"]
            results.append((seconds.get("features", 0.0), seconds["training"], measured.peak_mib,
                            metrics["accuracy"]))
            rows.append([precision, metrics["precision"]["policy"],
                         f"{seconds.get('features', 0.0):.1f}", f"{seconds['training']:.1f}",
                         metrics["epochs_run"], f"{measured.seconds:.1f}",
                         f"{measured.peak_mib:,.0f}", f"{metrics['accuracy']:.3f}"])
            print(f"{precision}: {metrics['precision']['reason']}", flush=True)
    if len(results) == 2:
        (f0, t0, m0, a0), (f1, t1, m1, a1) = results
        rows.append(["ratio", "", f"**{f0 / f1:.2f}x**", f"{t0 / t1:.2f}x", "", "",
                     f"{m1 / m0:.2f}x", f"{a1 - a0:+.3f}"])
    print("load average after: {:.2f} {:.2f} {:.2f}".format(*os.getloadavg()))
    print(f"\n{args.strategy} / {args.backbone} (--weights {args.weights})\n")
    print(table(["--precision", "policy", "frozen pass s", "training s", "epochs",
                 "process s", "peak MiB", "test accuracy"], rows))


if __name__ == "__main__":
    main()
