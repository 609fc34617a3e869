"""Benchmark `--precision`: the same archive and strategy in float32 and in auto (or mixed).

Each precision trains in its own process, with its own empty feature cache, so that its
seconds and its peak memory (`ru_maxrss`) are its own. Prints the CPU, its bfloat16 flags
and the load average, then one row per precision: the policy it resolved to, the seconds of
the frozen pass (computing the cached features) and of the training, the peak memory and
the test accuracy; and the ratios of the second precision to the first.

    python scripts/bench_precision.py ARCHIVE [--strategy extract] [--backbone vgg16]
        [--weights none] [--precisions float32,auto] [--per-class N] [--epochs 50] [--repeat 1]
        [--seeds 42,0,1] [--head pool] [--learning-rate 0.01] [--batch-size 32]

    python scripts/bench_precision.py --forward vgg16,resnet50,mobilenet_v2 [--repeat 2]

    python scripts/bench_precision.py ARCHIVE --agreement mobilenet_v2,vgg16 [--weights W]
        [--against mixed_bfloat16|mixed_float16] [--per-class N]

    python scripts/bench_precision.py ARCHIVE --where mobilenet_v2 [--weights W] [--layers ...]

`--forward` measures only the forward pass of each backbone (224 px, random weights, batches
of 32, as the frozen pass runs it) in float32 and in bfloat16, in images/s: what decides
which models `auto` runs in bfloat16 on a CPU with AVX512_BF16 alone.

`--agreement` computes the frozen part of `--strategy` (the cached features) of each backbone
in float32 and in bfloat16 on the archive's images and prints how far apart they are: the
relative error of the features and of their global average (the embedding a pooled head
reads), the smallest cosine between an image's two embeddings, and how often a
logistic-regression probe fitted on the float32 embeddings of the training images changes
its answer on a test image when given the bfloat16 one. Where accuracy cannot be trained
(no real weights), this is what says whether bfloat16 keeps the features.

`--where` shows where in a backbone bfloat16 departs from float32: the relative error after
each layer matching `--layers`.

`--seeds` trains each precision once per seed (the feature cache of a precision is shared by
its seeds) and prints each seed's test accuracy, their mean and the mean difference in test
images: on a small test set one seed's difference is mostly the seed's.

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


def frozen_features(backbone: str, strategy: str, weights: str, archive, policy: str,
                    like=None):
    """(the frozen part of `strategy` under `policy`, its outputs on the training and test
    images, images/s); `like`: a frozen part whose weights it takes (random weights)."""
    import time

    from toolkit import models
    from toolkit.training import precision

    with precision.scope(policy):
        lower = models.build(strategy, archive.image_shape, len(archive.class_names),
                             backbone=backbone, weights=weights if like is None else "none").lower
    if like is not None:
        lower.set_weights(like.get_weights())
    outputs, timed, seconds = [], 0, 0.0
    for x in (archive.X_train, archive.X_test):
        batches = []
        for i in range(0, len(x), 32):
            batch = np.asarray(x[i:i + 32]).astype("float32")
            start = time.perf_counter()
            batches.append(np.asarray(lower.predict_on_batch(batch), dtype="float32"))
            if len(batches) > 1 or outputs:  # not the first batch, which traces the graph
                timed, seconds = timed + len(batch), seconds + time.perf_counter() - start
        outputs.append(np.concatenate(batches))
    return lower, outputs, timed / seconds if seconds else float("nan")


def agreement(archive_path: str, backbone: str, strategy: str, weights: str,
              policy: str = "mixed_bfloat16") -> list[str]:
    """One table row: how far `backbone`'s frozen features under `policy` are from float32's."""
    from sklearn.linear_model import LogisticRegression

    from toolkit.data.npz import load_archive

    archive = load_archive(archive_path)
    f32_model, (f32_train, f32_test), f32_speed = frozen_features(
        backbone, strategy, weights, archive, "float32")
    _, (bf_train, bf_test), bf_speed = frozen_features(
        backbone, strategy, weights, archive, policy, like=f32_model)
    full = np.concatenate([f32_train, f32_test]), np.concatenate([bf_train, bf_test])
    error = np.linalg.norm(full[1] - full[0]) / np.linalg.norm(full[0])
    axes = tuple(range(1, full[0].ndim - 1))
    pooled = [f.mean(axis=axes) for f in full]
    pooled_error = np.linalg.norm(pooled[1] - pooled[0]) / np.linalg.norm(pooled[0])
    cosine = (pooled[0] * pooled[1]).sum(1) / (np.linalg.norm(pooled[0], axis=1)
                                               * np.linalg.norm(pooled[1], axis=1) + 1e-30)
    train_pooled = f32_train.mean(axis=axes)
    probe = LogisticRegression(C=0.1, max_iter=5000).fit(train_pooled, archive.y_train)
    answers = [probe.predict(f.mean(axis=axes)) for f in (f32_test, bf_test)]
    changed = int((answers[0] != answers[1]).sum())
    accuracy = [float((a == archive.y_test).mean()) for a in answers]
    return [backbone, strategy, weights if weights in ("none", "imagenet") else "file",
            "x".join(map(str, f32_train.shape[1:])), f"{error:.4f}", f"{pooled_error:.4f}",
            f"{cosine.min():.4f}", f"{changed} of {len(answers[0])}",
            f"{accuracy[0]:.3f} / {accuracy[1]:.3f}", f"{f32_speed:.1f} / {bf_speed:.1f}"]


def where(archive_path: str, backbone: str, weights: str, patterns: list[str]) -> None:
    """Print how far bfloat16 is from float32 after each layer of `backbone` whose name matches
    `patterns`, on the archive's test images; and, where a convolution `X` is followed by
    `X_BN` (a bias, where the batch normalisation is folded into the weights), how much of
    the convolution's output that cancels: the factor by which the rounding error grows."""
    import fnmatch

    import keras

    from toolkit import models
    from toolkit.data.npz import load_archive
    from toolkit.training import precision

    archive = load_archive(archive_path)
    x = np.asarray(archive.X_test[:64]).astype("float32")
    preprocess = models.Preprocess(models.backbone_spec(backbone).preprocess)
    outputs, names, f32_base = {}, [], None
    for policy in ("float32", "mixed_bfloat16"):
        with precision.scope(policy):
            base = models.load_backbone(backbone, weights if f32_base is None else "none",
                                        archive.image_shape)
        if f32_base is None:
            f32_base = base
            names = [layer.name for layer in base.layers[1:]
                     if any(fnmatch.fnmatchcase(layer.name, p) for p in patterns)
                     or layer.name + "_BN" in [other.name for other in base.layers]]
        else:
            base.set_weights(f32_base.get_weights())
        probe = keras.Model(base.input, [base.get_layer(name).output for name in names])
        outputs[policy] = [np.asarray(y, dtype="float32") for y in
                           probe.predict_on_batch(np.asarray(preprocess(x)))]
    f32 = dict(zip(names, outputs["float32"]))
    rows = []
    for name, a, b in zip(names, outputs["float32"], outputs["mixed_bfloat16"]):
        conv = name[:-3] if name.endswith("_BN") and name[:-3] in f32 else None
        cancels = f"{np.linalg.norm(f32[conv]) / np.linalg.norm(a):.2f}" if conv else ""
        if any(fnmatch.fnmatchcase(name, p) for p in patterns):
            rows.append([name, f"{np.linalg.norm(b - a) / np.linalg.norm(a):.4f}", cancels])
    print(f"\n{backbone} (--weights {weights}) on {len(x)} test images of {archive_path}, layer by "
          "layer\n")
    print(table(["layer", "relative error, bfloat16 against float32",
                 "norm before / after the bias"], rows))


def compare_agreement(archive: str, backbones: list[str], strategy: str, weights: str,
                      policy: str) -> None:
    rows = []
    for backbone in backbones:
        child = subprocess.run([sys.executable, __file__, archive, "--child-agreement", backbone,
                                "--strategy", strategy, "--weights", weights, "--against", policy],
                               capture_output=True, text=True, check=True,
                               env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
        rows.append(json.loads(child.stdout.splitlines()[-1]))
        print(" ".join(rows[-1]), flush=True)
    print("load average after: {:.2f} {:.2f} {:.2f}".format(*os.getloadavg()))
    images = {k: len(v) for k, v in np.load(archive).items() if k in ("y_train", "y_test")}
    print(f"\nfrozen part of {strategy}, {policy} against float32, on the {images['y_train']} "
          f"training and {images['y_test']} test images\n")
    print(table(["backbone", "strategy", "weights", "features", "relative error",
                 "pooled relative error", "smallest pooled cosine", "probe answers changed",
                 f"probe accuracy float32 / {policy}", f"images/s float32 / {policy}"], rows))


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
        # two decimals: the ratio, of the unrounded medians, can be checked from the columns
        rows.append([backbone, f"{f32:.2f}", f"{bf16:.2f}", f"**{bf16 / f32:.2f}x**"])
    print("load average after: {:.2f} {:.2f} {:.2f}".format(*os.getloadavg()))
    print("\nforward pass, 224 px, batch 32, images/s (median of", repeat, "runs each)\n")
    print(table(["backbone", "float32 images/s", "bfloat16 images/s", "bfloat16 / float32"], rows))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("archive", nargs="?")
    parser.add_argument("--forward", default=None, metavar="BACKBONES",
                        help="only time the forward pass of these backbones (comma-separated)")
    parser.add_argument("--seconds", type=float, default=15.0,
                        help="--forward: seconds of batches per measurement")
    parser.add_argument("--child-forward", nargs=3, help=argparse.SUPPRESS)
    parser.add_argument("--agreement", default=None, metavar="BACKBONES",
                        help="compare the frozen features in float32 and bfloat16 (comma-separated)")
    parser.add_argument("--child-agreement", help=argparse.SUPPRESS)
    parser.add_argument("--where", default=None, metavar="BACKBONE",
                        help="the relative error of bfloat16 after each layer matching --layers")
    parser.add_argument("--layers", default="Conv1_relu,*_project,*_project_BN,*_add,out_relu",
                        help="--where: fnmatch patterns of the layers to print (comma-separated)")
    parser.add_argument("--against", default="mixed_bfloat16", choices=("mixed_bfloat16", "mixed_float16"),
                        help="--agreement: the policy compared with float32")
    parser.add_argument("--strategy", default="extract")
    parser.add_argument("--backbone", default="vgg16")
    parser.add_argument("--weights", default="none")
    parser.add_argument("--precisions", default="float32,auto")
    parser.add_argument("--per-class", type=int, default=None,
                        help="use a seeded subset of this many images per class")
    parser.add_argument("--epochs", type=int, default=50)
    parser.add_argument("--patience", type=int, default=5)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--seeds", default=None, help="train once per seed (comma-separated)")
    parser.add_argument("--head", default=None, help="toolkit train --head")
    parser.add_argument("--learning-rate", default=None, help="toolkit train --learning-rate")
    parser.add_argument("--batch-size", default=None, help="toolkit train --batch-size")
    parser.add_argument("--repeat", type=int, default=1)
    args = parser.parse_args()
    if args.child_forward:
        backbone, policy, seconds = args.child_forward
        print(forward_speed(backbone, policy, float(seconds)))
        return
    if args.child_agreement:
        print(json.dumps(agreement(args.archive, args.child_agreement, args.strategy, args.weights,
                                   args.against)))
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
    if args.where:
        where(args.archive, args.where, args.weights, args.layers.split(","))
        return
    if args.agreement:
        with scratch_folder() as work:
            archive = args.archive if not args.per_class else subset(
                args.archive, args.per_class, args.seed, Path(work) / "subset.npz")
            compare_agreement(archive, args.agreement.split(","), args.strategy, args.weights,
                              args.against)
        return
    seeds = [int(seed) for seed in (args.seeds or str(args.seed)).split(",")]
    with scratch_folder() as work:
        archive = args.archive
        if args.per_class:
            archive = subset(archive, args.per_class, args.seed, Path(work) / "subset.npz")
        images = {k: len(v) for k, v in np.load(archive).items() if k in ("y_train", "y_test")}
        print(f"images: {images['y_train']} train / {images['y_test']} test")
        runs, accuracies, policies = train_runs(args, archive, Path(work), seeds)
    rows, results = [], []
    frozen_images = images["y_train"] + images["y_test"]
    for precision, measured_runs in runs.items():
        t, e, s, m = (statistics.median(column) for column in list(zip(*measured_runs))[1:])
        f = statistics.median(run[0] for run in measured_runs if run[0] is not None)
        a = statistics.mean(accuracies[precision])
        results.append((f, t, s, m, a))
        rows.append([f"{precision} ({policies[precision]})", f"{f:.1f}",
                     f"{frozen_images / f:.1f}" if f else "", f"{t:.1f}", f"{e:g}", f"{s:.1f}",
                     f"{m:,.0f}", f"{a:.3f}", " ".join(f"{x:.3f}" for x in accuracies[precision])])
    if len(results) == 2:  # every ratio a table of these runs quotes, from the unrounded medians
        (f0, t0, s0, m0, a0), (f1, t1, s1, m1, a1) = results
        images_apart = (a1 - a0) * images["y_test"]
        first, second = runs
        rows.append([f"{second} / {first}", f"**{f0 / f1:.2f}x** faster" if f1 and f0 else "",
                     "", f"**{t0 / t1:.2f}x** faster", "",
                     f"{s0 / s1:.2f}x faster", f"{m1 / m0:.2f}x",
                     f"{a1 - a0:+.3f} ({images_apart:+.1f} test images)", ""])
    print("load average after: {:.2f} {:.2f} {:.2f}".format(*os.getloadavg()))
    model = ("cnn" if args.strategy == "cnn"
             else f"{args.strategy} / {args.backbone} (--weights {args.weights})")
    print(f"\n{model}, seeds {seeds}\n")
    print("(frozen pass: the first seed's run, which computes the features; training s, epochs,")
    print("process s and peak MiB: the median over every run of the precision)\n")
    print(table(["--precision (policy)", "frozen pass s", "frozen pass images/s", "training s",
                 "epochs", "process s", "peak MiB", "mean test accuracy", "test accuracy by seed"],
                rows))


def train_runs(args, archive: str, work: Path, seeds: list[int]):
    """Train every (repeat, precision, seed); the seeds of a precision share its feature cache,
    so only its first seed computes features. Returns ({precision: [(frozen pass s or None
    where the cache had the features, training s, epochs, process s, peak MiB)]},
    {precision: [test accuracy by seed]}, {precision: policy})."""
    runs: dict[str, list[tuple]] = {}
    accuracies: dict[str, list[float]] = {}
    policies: dict[str, str] = {}
    options = [option for name in ("head", "learning_rate", "batch_size")
               if getattr(args, name) is not None
               for option in ("--" + name.replace("_", "-"), str(getattr(args, name)))]
    for repeat, precision in [(r, p) for r in range(args.repeat) for p in args.precisions.split(",")]:
        for seed in seeds:
            run = work / f"run-{precision}-{repeat}-{seed}"
            measured = measure(toolkit_command(
                "train", "--strategy", args.strategy, "--data", archive, "--backbone",
                args.backbone, "--weights", args.weights, "--epochs", str(args.epochs),
                "--patience", str(args.patience), "--seed", str(seed), "--precision", precision,
                *options, "--out", str(run), "--cache-dir", str(work / f"cache-{precision}-{repeat}")))
            metrics = read_metrics(run)
            seconds = metrics["seconds"]
            policies[precision] = metrics["precision"]["policy"]
            measured_run = (seconds.get("features", 0.0) if seed == seeds[0] else None,
                            seconds["training"], metrics["epochs_run"], measured.seconds,
                            measured.peak_mib)
            runs.setdefault(precision, []).append(measured_run)
            if repeat == 0:
                accuracies.setdefault(precision, []).append(metrics["accuracy"])
            print(f"{precision} seed {seed}: {metrics['precision']['reason']}; features, training, "
                  f"epochs, process s, peak MiB: {measured_run}; accuracy {metrics['accuracy']:.3f}",
                  flush=True)
    return runs, accuracies, policies

if __name__ == "__main__":
    main()
