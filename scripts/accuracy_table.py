"""The study's story on real photos: all four strategies on ../shared/data/flowers with the
real MobileNetV2 ImageNet weights in ../shared/weights.

Packs the flowers (3 x 400, 224 px, seed 42) unless the archive exists, then runs
`toolkit compare` into a new folder (runs/flowers-<time>, or --out, which must not hold
runs yet) and prints the table, with the peak memory of the whole compare. The frozen
features are computed once and shared by extract, finetune and augment through the cache.
`--probe` instead fits a logistic regression on the globally average-pooled frozen features
(the ceiling of what these weights give on this split) and prints its test accuracy.

    python scripts/accuracy_table.py [--strategies cnn,extract,finetune,augment] [--out DIR]
                                     [--archive runs/flowers.npz] [--weights FILE]
                                     [--extra OPTION...] | --probe

`--archive` and `--weights` (the shared ones by default) make a quick run on other data
(the suite's smoke test: a tiny archive, `--weights none`).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from _bench import WEIGHTS, flowers_archive, machine, measure, table, toolkit_command, weights_option
from toolkit.core.text import folder_stamp
from toolkit.reports.metrics import read_metrics


def probe(archive_path: str, weights: str) -> None:
    """Test accuracy of a logistic regression on extract's frozen features, pooled."""
    from sklearn.linear_model import LogisticRegression

    from toolkit import models
    from toolkit.data.npz import load_archive
    from toolkit.training.config import TrainConfig
    from toolkit.training.features import FeatureCache

    archive = load_archive(archive_path)
    split = models.build("extract", archive.image_shape, len(archive.class_names),
                         backbone="mobilenet_v2", weights=weights)
    cache = FeatureCache(TrainConfig(data=str(Path(archive_path).resolve()), strategy="extract",
                                     backbone="mobilenet_v2", weights=weights,
                                     precision="float32"),
                         archive, split.cut, "float32")
    pooled = {name: cache.features(split.lower, x, name).mean(axis=(1, 2))
              for name, x in (("X_train", archive.X_train), ("X_test", archive.X_test))}
    rows = []
    for c in (0.01, 0.03, 0.1, 0.3, 1.0):
        model = LogisticRegression(C=c, max_iter=5000).fit(pooled["X_train"], archive.y_train)
        rows.append([c, len(archive.y_train), f"{model.score(pooled['X_test'], archive.y_test):.3f}"])
    print(f"{archive_path}: logistic regression on pooled MobileNetV2 features; {machine()}")
    print(table(["C", "training images", "test accuracy"], rows))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--strategies", default="cnn,extract,finetune,augment")
    parser.add_argument("--archive", default="runs/flowers.npz")
    parser.add_argument("--out", default=None, help="a new folder  [default: runs/flowers-<time>]")
    parser.add_argument("--weights", default=str(WEIGHTS), help="MobileNetV2's weights (a file, or none)")
    parser.add_argument("--probe", action="store_true",
                        help="print the logistic-regression ceiling instead of training")
    parser.add_argument("--extra", nargs=argparse.REMAINDER, default=[],
                        help="more options for toolkit compare")
    args = parser.parse_args()
    weights = weights_option(args.weights)
    flowers_archive(args.archive)
    if args.probe:
        probe(args.archive, weights)
        return
    out = Path(args.out or f"runs/flowers-{folder_stamp()}")
    if out.exists() and any(out.iterdir()):
        sys.exit(f"--out {out} is not empty; give a new folder (or leave --out out)")
    compare = measure(toolkit_command("compare", "--data", args.archive, "--strategies",
                                      args.strategies, "--backbone", "mobilenet_v2", "--weights",
                                      weights, "--out", str(out), *args.extra), quiet=False)
    rows = json.loads((out / "comparison.json").read_text())
    features = [read_metrics(r["run"])["seconds"].get("features", 0)
                for r in rows]
    with np.load(args.archive) as archive:
        sizes = (len(archive["y_train"]), len(archive["y_test"]), archive["X_train"].shape[1])
    print(f"{args.archive}: {sizes[0]} train / {sizes[1]} test at {sizes[2]} px; {machine()}")
    print(table(["strategy", "test accuracy", "macro F1", "epochs", "seconds", "of which features s"],
                [[r["strategy"], f"{r['accuracy']:.3f}", f"{r['macro_f1']:.3f}", r["epochs"],
                  f"{r['seconds']:.0f}", f"{f:.0f}"] for r, f in zip(rows, features)]))
    print(f"peak RSS of the compare process: {compare.peak_mib:,.0f} MiB; runs in {out}")


if __name__ == "__main__":
    main()
