"""Training from TFRecord shards against training from the .npz of the same images and split.

Packs ../shared/data/flowers (3 x 400 at 224 px, seed 42) both ways (the shards as PNG: the
.npz's pixels exactly, so the two sides differ only in how they are read), then trains each
strategy on each, every run in its own process: images per second, peak resident memory and
test accuracy. extract runs MobileNetV2 with the shared ImageNet weights (its frozen features
computed in one pass, then cached: the first run of each side pays for them); cnn streams.

    python scripts/bench_stream.py [--epochs 3] [--strategies extract,cnn]
    python scripts/bench_stream.py --smoke     # 3 x 8 generated images at 32 px, in seconds

(TOOLKIT_SHARED names the shared folder when it is not at ../shared, e.g. from a worktree.)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
from pathlib import Path

import numpy as np
from PIL import Image

from _bench import SHARED, WEIGHTS, machine, measure, table, toolkit_command, weights_option


def pack_both(source: str, folder: Path, size: int, per_class: int) -> tuple[Path, Path]:
    """(the .npz, the dataset folder) of `source`, packed with one seed, unless they exist."""
    npz, shards = folder / "data.npz", folder / "data"
    settings = ["--size", str(size), "--per-class", str(per_class), "--seed", "42", "--min-side", "16"]
    if not npz.exists():
        subprocess.run(toolkit_command("pack", source, "--out", str(npz), *settings), check=True)
    if not shards.exists():
        subprocess.run(toolkit_command("pack", source, "--out", str(shards), "--format", "tfrecord",
                                       "--encoding", "png", "--workers", "1", *settings), check=True)
    return npz, shards


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", default=str(SHARED / "data" / "flowers"), help="class folders")
    parser.add_argument("--folder", default="runs/bench-stream", help="where the data and runs go")
    parser.add_argument("--weights", default=str(WEIGHTS), help="MobileNetV2's weights (a file, or none)")
    parser.add_argument("--strategies", default="extract,cnn")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--per-class", type=int, default=400)
    parser.add_argument("--smoke", action="store_true", help="3 x 8 generated images at 32 px, 1 epoch")
    args = parser.parse_args()
    folder = Path(args.folder)
    folder.mkdir(parents=True, exist_ok=True)
    if args.smoke:
        rng = np.random.default_rng(0)
        for name in ("red", "green", "blue"):  # distinct random blocks: no near duplicates
            (folder / "src" / name).mkdir(parents=True, exist_ok=True)
            for i in range(8):
                blocks = Image.fromarray(rng.integers(0, 256, (6, 6, 3), dtype=np.uint8))
                blocks.resize((48, 48), Image.NEAREST).save(folder / "src" / name / f"{i}.png")
        args.source, args.size, args.per_class, args.epochs, args.weights = (
            str(folder / "src"), 32, 8, 1, "none")
    weights = weights_option(args.weights)
    if not Path(args.source).is_dir():
        raise SystemExit(f"{args.source} is absent (../shared); or pass --source or --smoke")
    npz, shards = pack_both(args.source, folder, args.size, args.per_class)
    env = {"TOOLKIT_CACHE_DIR": str(folder / "cache")}
    rows = []
    for strategy in args.strategies.split(","):
        for name, data in (("npz", npz), ("shards", shards)):
            run = folder / f"{strategy}-{name}"
            if run.exists():
                subprocess.run(["rm", "-rf", str(run)], check=True)
            extra = ([] if strategy == "cnn" else
                     ["--backbone", "mobilenet_v2", "--weights", weights, "--head", "pool"])
            measured = measure(toolkit_command(
                "train", "--strategy", strategy, "--data", str(data), "--epochs", str(args.epochs),
                "--batch-size", "32", "--precision", "float32", "--out", str(run), *extra), env=env)
            metrics = json.loads((run / "metrics.json").read_text())
            seconds = metrics["seconds"]
            busy = seconds.get("features", 0) + seconds["training"]  # not start-up nor evaluation
            images = _train_images(run) * metrics["epochs_run"]
            rows.append([strategy, name, f"{images / busy:.1f}", f"{seconds.get('features', 0):.1f}",
                         f"{seconds['training']:.1f}", f"{measured.seconds:.1f}", f"{measured.peak_mib:.0f}",
                         f"{metrics['accuracy']:.4f} ({metrics['test_images']})"])
    print(machine())
    print(f"{args.source}: {args.per_class} per class at {args.size} px, {args.epochs} epochs, batch 32, "
          f"float32, seed 42; the shards as PNG (pixels = the .npz's)")
    print(table(["strategy", "data", "train images/s", "features s", "training s", "process s",
                 "peak MiB", "test accuracy (images)"], rows))


def _train_images(run: Path) -> int:
    """Images the fit trained on per epoch: the training split less validation."""
    from toolkit.data.streams import load_data

    config = json.loads((run / "config.json").read_text())
    data = load_data(config["data"], check=False)
    return round(len(data.y_train) * (1 - config["validation_split"]))


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    main()
