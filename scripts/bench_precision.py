"""Benchmark `--precision`: the same archive and strategy in float32 and in auto (or mixed).

Each precision trains in its own process, with its own empty feature cache, so that its
seconds and its peak memory (`ru_maxrss`) are its own. Prints the CPU, its bfloat16 flags
and the load average, then one row per precision: the policy it resolved to, the seconds of
the frozen pass (computing the cached features) and of the training, the peak memory and
the test accuracy; and the ratios of the second precision to the first.

    python scripts/bench_precision.py ARCHIVE [--strategy extract] [--backbone vgg16]
        [--weights none] [--precisions float32,auto] [--per-class N] [--epochs 50] [--repeat 1]

    python scripts/bench_precision.py --forward vgg16,resnet50,mobilenet_v2 [--repeat 2]

`--forward` measures only the forward pass of each backbone (224 px, random weights, batches
of 32, as the frozen pass runs it) in float32 and in bfloat16, in images/s: what decides
which models `auto` runs in bfloat16 on a CPU with AVX512_BF16 alone.

`--per-class N` trains on a seeded subset of N images per class (split as the archive is)
so that a run takes minutes instead of an hour. `--repeat R` runs the precisions R times,
alternating, and reports each column's median: on a shared machine the load changes
from one run to the next.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
from pathlib import Path

import numpy as np

from _bench import machine, measure, scratch_folder, table, toolkit_command
from toolkit.reports.metrics import read_metrics
from toolkit.training.precision import cpu_bf16_flags


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


def forward_speed(backbone: str, policy: str, seconds: float) -> float:
    """Images/s of `backbone`'s forward pass under the dtype `policy` (in a child process)."""
    import time

    from toolkit import models
    from toolkit.training import precision

    with precision.scope(policy):
        base = models.load_backbone(backbone, "none", (224, 224, 3))
    x = np.random.default_rng(0).uniform(0, 255, (32, 224, 224, 3)).astype("float32")
    base.predict_on_batch(x)  # traces the graph
    start, batches = time.perf_counter(), 0
    while time.perf_counter() - start < seconds:
        base.predict_on_batch(x)
        batches += 1
    return 32 * batches / (time.perf_counter() - start)


def compare_forward(backbones: list[str], repeat: int, seconds: float) -> None:
    speeds: dict[tuple[str, str], list[float]] = {}
    for backbone in backbones:
        for _, policy in [(r, p) for r in range(repeat) for p in ("float32", "mixed_bfloat16")]:
            child = subprocess.run([sys.executable, __file__, "--child-forward", backbone, policy,
                                    str(seconds)], capture_output=True, text=True, check=True,
                                   env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
            speeds.setdefault((backbone, policy), []).append(float(child.stdout.split()[-1]))
            print(f"{backbone} {policy}: {speeds[backbone, policy][-1]:.1f} images/s", flush=True)
    rows = []
    for backbone in backbones:
        f32, bf16 = (statistics.median(speeds[backbone, p]) for p in ("float32", "mixed_bfloat16"))
        rows.append([backbone, f"{f32:.1f}", f"{bf16:.1f}", f"**{bf16 / f32:.2f}x**"])
    print("load average after: {:.2f} {:.2f} {:.2f}".format(*os.getloadavg()))
    print("\nforward pass, 224 px, batch 32, images/s (median of", repeat, "runs each)\n")
    print(table(["backbone", "float32", "bfloat16", "bfloat16 / float32"], rows))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("archive", nargs="?")
    parser.add_argument("--forward", default=None, metavar="BACKBONES",
                        help="only time the forward pass of these backbones (comma-separated)")
    parser.add_argument("--seconds", type=float, default=15.0,
                        help="--forward: seconds of batches per measurement")
    parser.add_argument("--child-forward", nargs=3, help=argparse.SUPPRESS)
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
    if args.child_forward:
        backbone, policy, seconds = args.child_forward
        print(forward_speed(backbone, policy, float(seconds)))
        return

    print(machine())
    flags = cpu_bf16_flags()
    print(f"bfloat16 flags: {', '.join(sorted(flags)) or 'none (no amx_bf16, no avx512_bf16)'}")
    print("load average before: {:.2f} {:.2f} {:.2f}".format(*os.getloadavg()))
    print(f"command: python scripts/bench_precision.py {' '.join(sys.argv[1:])}")
    if args.forward:
        compare_forward(args.forward.split(","), args.repeat, args.seconds)
        return
    if not args.archive:
        parser.error("give an ARCHIVE, or --forward BACKBONES")
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
            metrics = read_metrics(run)
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
