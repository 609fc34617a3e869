"""Training's peak memory as the data grows: from TFRecord shards against from the .npz.

The generated photo-like images of scripts/bench_shards.py (the same cache), packed at each of
`--scales` (1x = `--base` per class in 3 classes) both ways with one seed, then one epoch of each
strategy on each, every run in its own process: peak resident memory (of the whole process, so
also the pages of files it maps and touched: the .npz's, the frozen-feature cache's), the peak of
its anonymous memory (its own, without those pages, sampled), wall time and train images per
second. The question is whether memory stays flat
in the number of images; accuracy on generated pictures means nothing and is not shown.

    python scripts/bench_train_growth.py [--scales 1,4,16] [--base 500] [--size 64]
                                         [--strategies cnn,extract] [--sides npz,shards]
                                         [--cache runs/bench-photos]
    python scripts/bench_train_growth.py --smoke     # 3 x 20 images at 32 px, in a minute or two
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
from pathlib import Path

from bench_shards import generate, scale_folder

from _bench import WEIGHTS, machine, measure, scratch_folder, table, toolkit_command, weights_option
from toolkit.data.streams import load_data


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scales", default="1,4,16")
    parser.add_argument("--base", type=int, default=500, help="images per class at 1x")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--strategies", default="cnn,extract")
    parser.add_argument("--sides", default="npz,shards", help="which formats to pack and train from")
    parser.add_argument("--weights", default=str(WEIGHTS),
                        help="extract's MobileNetV2 weights (a file, or none)")
    parser.add_argument("--cache", default="runs/bench-photos")
    parser.add_argument("--smoke", action="store_true", help="3 x 20 images at 32 px")
    args = parser.parse_args()
    if args.smoke:
        args.scales, args.base, args.size, args.weights = "1", 20, 32, "none"
    weights = weights_option(args.weights)
    scales = [int(s) for s in args.scales.split(",")]
    workers = ["--workers", "1"] if args.smoke else []  # --smoke: no Beam worker processes to start
    cache = Path(args.cache).resolve()
    print(machine(), flush=True)
    generate(cache, args.base * max(scales))
    rows = []
    for scale in scales:
        per_class = args.base * scale
        with scratch_folder() as work:
            work = Path(work)
            source = scale_folder(cache, per_class, work / "source")
            common = ["--per-class", str(per_class), "--size", str(args.size), "--allow-fewer",
                      "--seed", "42"]
            data = {side: work / name for side, name in (("npz", "data.npz"), ("shards", "data"))
                    if side in args.sides.split(",")}
            if "npz" in data:
                subprocess.run(toolkit_command("pack", str(source), "--out", str(data["npz"]), *common),
                               check=True, stdout=subprocess.DEVNULL)
            if "shards" in data:
                subprocess.run(toolkit_command("pack", str(source), "--out", str(data["shards"]), *common,
                                               "--format", "tfrecord", *workers), check=True,
                               stdout=subprocess.DEVNULL)
            for strategy in args.strategies.split(","):
                extra = ([] if strategy == "cnn" else
                         ["--backbone", "mobilenet_v2", "--weights", weights, "--head", "pool"])
                for side, path in data.items():
                    run = work / f"{strategy}-{side}"
                    took = measure(toolkit_command(
                        "train", "--strategy", strategy, "--data", str(path), "--epochs", "1",
                        "--batch-size", "32", "--precision", "float32", "--out", str(run), *extra),
                        env={"TOOLKIT_CACHE_DIR": str(work / "cache")})
                    metrics = json.loads((run / "metrics.json").read_text())
                    seconds = metrics["seconds"]
                    busy = seconds.get("features", 0) + seconds["training"]
                    config = json.loads((run / "config.json").read_text())
                    labels = load_data(path, check=False).y_train
                    trained = round(len(labels) * (1 - config["validation_split"]))
                    rows.append([f"{scale}x", 3 * per_class, strategy, side, f"{took.peak_mib:.0f}",
                                 f"{took.anon_peak_mib:.0f}", f"{took.seconds:.1f}", f"{trained / busy:.0f}"])
                    print(" | ".join(map(str, rows[-1])), flush=True)
                    shutil.rmtree(run)
    print(f"\n{args.size}x{args.size}, generated 400x300 JPEGs, 1 epoch, batch 32, float32; {machine()}")
    print(table(["scale", "images", "strategy", "data", "peak MiB", "peak anonymous MiB", "process s",
                 "train images/s"], rows))
    for strategy in args.strategies.split(","):
        for side in data:
            peaks = [(float(r[4]), float(r[5])) for r in rows if r[2] == strategy and r[3] == side]
            if len(peaks) > 1:
                print(f"{strategy} from {side}: peak memory {peaks[-1][0] / peaks[0][0]:.2f}x, anonymous "
                      f"{peaks[-1][1] / peaks[0][1]:.2f}x from {scales[0]}x to {scales[-1]}x")


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    main()
