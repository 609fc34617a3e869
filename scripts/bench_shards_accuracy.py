"""Do the shards' JPEGs cost accuracy? The same training on the same split, from the .npz's raw
pixels and from the pixels the shards decode to.

Packs SOURCE both ways with one seed (`toolkit pack`, then `toolkit pack --format tfrecord`), reads
the shards back with the public reader (toolkit.data.shards.read_split, in the shards' order) into an
archive with the same rows, checks that its files and labels are the .npz's, row for row, and trains
the same strategy with the same seed on both. Each side runs in its own process.

    python scripts/bench_shards_accuracy.py [SOURCE] [--strategy extract] [--epochs 10] [--smoke]

`--smoke` packs 3 x 40 generated images at 64 pixels and trains the small CNN for one epoch, one
seed.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from _bench import SHARED, WEIGHTS, machine, measure, scratch_folder, table, toolkit_command


def from_shards(folder: Path, archive: Path, out: Path) -> None:
    """Write `out`: the archive's rows with the pixels the shards decode to (run in a child)."""
    import numpy as np
    import tensorflow as tf

    from toolkit.data import npz, shards

    reference = npz.load_archive(archive)
    with np.load(archive) as a:
        paths = {"train": a["paths_train"].tolist(), "test": a["paths_test"].tolist()}
    parts = {}
    for split in shards.SPLITS:
        pixels = [x for x, _ in shards.read_split(folder, split, shuffle_buffer=0).as_numpy_iterator()]
        names = [tf.io.parse_single_example(r, shards.feature_spec())["path"].numpy().decode()
                 for r in tf.data.TFRecordDataset([str(p) for p in shards.read_dataset(folder).files(split)])]
        labels = getattr(reference, f"y_{split}").tolist()
        if sorted(names) != sorted(paths[split]):
            raise SystemExit(f"the shards' {split} files are not the archive's")
        row = {name: i for i, name in enumerate(names)}
        order = [row[p] for p in paths[split]]  # the archive's order, so that training sees the same batches
        parts[split] = npz.ArchivePart(labels, paths[split], [pixels[i].tobytes() for i in order])
    npz.write_archive(out, reference.class_names, reference.image_shape[0], parts["train"], parts["test"],
                      reference.meta)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", nargs="?", default=str(SHARED / "data" / "flowers"))
    parser.add_argument("--strategy", default="extract")
    parser.add_argument("--backbone", default="mobilenet_v2")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--seeds", default="1,2,3", help="training seeds (the features are cached once)")
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        from_shards(*map(Path, args.child))
        return
    print(machine(), flush=True)
    with scratch_folder() as work:
        work = Path(work)
        pack_args, train_args = [], ["--strategy", args.strategy, "--backbone", args.backbone,
                                     "--weights", str(WEIGHTS), "--epochs", str(args.epochs)]
        source = Path(args.source)
        if args.smoke:
            sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
            from conftest import make_class_folders

            classes = {"a": range(40), "b": range(100, 140), "c": range(200, 240)}
            source = make_class_folders(work / "src", classes)
            # --workers 1: no worker processes to start
            pack_args = ["--per-class", "40", "--size", "64", "--workers", "1"]
            train_args = ["--strategy", "cnn", "--weights", "none", "--epochs", "1"]
            args.seeds = args.seeds.split(",")[0]
        measure(toolkit_command("pack", str(source), "--out", str(work / "x.npz"), *pack_args))
        measure(toolkit_command("pack", str(source), "--out", str(work / "ds"), "--format", "tfrecord",
                                *pack_args))
        measure([sys.executable, __file__, "--child", str(work / "ds"), str(work / "x.npz"),
                 str(work / "jpeg.npz")])
        rows, right = [], {}
        for seed in args.seeds.split(","):
            for name in ("x", "jpeg"):
                run = work / f"run-{name}-{seed}"
                took = measure(toolkit_command("train", "--data", str(work / f"{name}.npz"), *train_args,
                                               "--seed", seed, "--patience", str(args.epochs), "--out",
                                               str(run), "--cache-dir", str(work / f"cache-{name}")))
                metrics = json.loads((run / "metrics.json").read_text())
                right[seed, name] = round(metrics["accuracy"] * metrics["test_images"])
                rows.append([seed, "raw pixels (.npz)" if name == "x" else "JPEG q95 (shards)",
                             f"{metrics['accuracy']:.4f}", f"{right[seed, name]} of {metrics['test_images']}",
                             f"{took.seconds:.0f}"])
                print(" | ".join(map(str, rows[-1])), flush=True)
            # the model trained on raw pixels, shown the test set's JPEG pixels: the encoding alone
            seen = work / f"eval-{seed}"
            measure(toolkit_command("evaluate", str(work / f"run-x-{seed}"), "--data", str(work / "jpeg.npz"),
                                    "--out", str(seen)))
            metrics = json.loads((seen / "metrics.json").read_text())
            right[seed, "seen"] = round(metrics["accuracy"] * metrics["test_images"])
            rows.append([seed, "raw-trained model, JPEG test pixels", f"{metrics['accuracy']:.4f}",
                         f"{right[seed, 'seen']} of {metrics['test_images']}", ""])
            print(" | ".join(map(str, rows[-1])), flush=True)
        print(f"{train_args[1]} on {source} ({' '.join(train_args)})")
        print(table(["seed", "pixels", "test accuracy", "test images right", "train s"], rows))
        gaps = [right[seed, "jpeg"] - right[seed, "x"] for seed in args.seeds.split(",")]
        print(f"trained and tested on JPEG minus raw, test images right, per seed: {gaps}; "
              f"mean {sum(gaps) / len(gaps):+.2f}")
        seen = [right[seed, "seen"] - right[seed, "x"] for seed in args.seeds.split(",")]
        print(f"the raw-trained model on JPEG test pixels minus raw, per seed: {seen}")


if __name__ == "__main__":
    main()
