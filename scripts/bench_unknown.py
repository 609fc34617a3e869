"""How often `predict` answers `unknown` for photos of no class, and for photos of a class.

Packs ../shared/data/flowers (3 x 400 at 224 px, seed 42) unless the archive exists, trains
`extract` on MobileNetV2 with the real ImageNet weights in ../shared/weights (pool head; the
frozen features are cached, so a rerun takes seconds), then labels the 150 off-topic object
photos in ../shared/data/offtopic and the 240 flower test images. The thresholds were chosen
on the validation split at training time; the test set and the off-topic photos are never
seen before this measurement.

    python scripts/bench_unknown.py [--archive runs/flowers.npz] [--run runs/flowers-unknown]
                                    [--weights FILE] [--offtopic DIR] [--epochs N]

`--weights`, `--offtopic` (the shared ones by default) and `--epochs` (train's default: 50,
with early stopping) make a quick run on other data (the suite's smoke test).

(TOOLKIT_SHARED names the shared folder when it is not at ../shared, e.g. from a worktree.)
"""

from __future__ import annotations

import argparse
import os
import subprocess
from pathlib import Path

import numpy as np

from _bench import SHARED, WEIGHTS, flowers_archive, machine, table, toolkit_command, weights_option
from toolkit.reports.metrics import read_metrics


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--archive", default="runs/flowers.npz")
    parser.add_argument("--run", default="runs/flowers-unknown")
    parser.add_argument("--weights", default=str(WEIGHTS), help="MobileNetV2's weights (a file, or none)")
    parser.add_argument("--offtopic", default=str(SHARED / "data" / "offtopic"),
                        help="photos of no class")
    parser.add_argument("--epochs", type=int, default=None, help="train's --epochs")
    args = parser.parse_args()
    weights = weights_option(args.weights)
    flowers_archive(args.archive)
    if not (Path(args.run) / "model.keras").exists():
        epochs = ["--epochs", str(args.epochs)] if args.epochs else []
        subprocess.run(toolkit_command("train", "--strategy", "extract", "--data", args.archive,
                                       "--backbone", "mobilenet_v2", "--weights", weights,
                                       "--head", "pool", *epochs, "--out", args.run), check=True)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    from toolkit.data.npz import load_archive
    from toolkit.ship.inference import load_classifier, predict

    off_topic = predict(args.run, [Path(args.offtopic)])
    off_share = np.mean([p.label == "unknown" for p in off_topic if not p.error])
    classifier = load_classifier(args.run)
    archive = load_archive(args.archive)
    embeddings = np.concatenate([classifier(np.asarray(archive.X_test[i:i + 32]))[1]
                                 for i in range(0, len(archive.y_test), 32)])
    calibration = classifier.calibration
    rejected = calibration.unknown(embeddings)
    metrics = read_metrics(args.run)
    c = metrics["calibration"]
    print(f"{args.run}: extract / mobilenet_v2 (--weights {args.weights}), pool head, on {args.archive}; "
          f"{machine()}; load {os.getloadavg()[0]:.2f}")
    print(table(["measure", "value"], [
        ["test accuracy", f"{metrics['accuracy']:.3f}"],
        ["temperature (fitted on validation)", f"{c['temperature']:.3f}"],
        ["test ECE before / after", f"{c['test_ece_before']:.3f} / {c['test_ece_after']:.3f}"],
        ["off-topic photos answered unknown", f"{off_share:.1%} of {len(off_topic)}"],
        ["in-class test images answered unknown", f"{rejected.mean():.1%} of {len(rejected)}"],
        ["unknown threshold (cosine distance to the k-th nearest training image)",
         f"{calibration.distance_threshold:.4f} (k = {calibration.neighbours})"],
    ]))


if __name__ == "__main__":
    main()
