"""How pack and extract grow with the data: time and peak memory at 1x, 4x and 16x.

Images are synthetic and duplicate-free (distinct colour grids with noise, 400x300 JPEG),
`--base` per class at 1x. Time should grow linearly; memory should stay flat apart from
what the run must hold (the archive is streamed, never held; features are read in
batches from the cache file).

    python scripts/bench_growth.py [--base 100] [--scales 1,4,16] [--backbone mobilenet_v2]
"""

from __future__ import annotations

import argparse
import io
from pathlib import Path

import numpy as np
from PIL import Image

from _bench import machine, measure, scratch_folder, table, toolkit_command
from toolkit.reports.metrics import read_metrics


def synthetic_source(folder: Path, per_class: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    for label in ("a", "b", "c"):
        (folder / label).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            grid = rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)
            image = np.asarray(Image.fromarray(grid).resize((400, 300), Image.Resampling.NEAREST),
                               dtype=np.int16)
            image = np.clip(image + rng.integers(-12, 12, image.shape), 0, 255).astype(np.uint8)
            buffer = io.BytesIO()
            Image.fromarray(image).save(buffer, "JPEG", quality=90)
            (folder / label / f"{i:05d}.jpg").write_bytes(buffer.getvalue())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", type=int, default=100, help="images per class at 1x")
    parser.add_argument("--scales", default="1,4,16")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--backbone", default="mobilenet_v2")
    parser.add_argument("--weights", default="none")
    parser.add_argument("--epochs", type=int, default=3)
    args = parser.parse_args()

    rows = []
    with scratch_folder() as work:
        work = Path(work)
        for scale in map(int, args.scales.split(",")):
            per_class = args.base * scale
            source = work / f"source-{scale}"
            synthetic_source(source, per_class, seed=scale)
            archive = work / f"x{scale}.npz"
            pack = measure(toolkit_command("pack", str(source), "--out", str(archive), "--size",
                                           str(args.size), "--per-class", str(per_class),
                                           "--allow-fewer"))
            run = work / f"run-{scale}"
            extract = measure(toolkit_command(
                "train", "--strategy", "extract", "--data", str(archive), "--backbone",
                args.backbone, "--weights", args.weights, "--epochs", str(args.epochs),
                "--patience", str(args.epochs), "--out", str(run), "--cache-dir",
                str(work / f"cache-{scale}")))
            n = 3 * per_class
            archive_mib = archive.stat().st_size / 2**20
            features = read_metrics(run)["seconds"]["features"]
            rows.append([f"{scale}x", n, f"{archive_mib:.0f}", f"{pack.seconds:.1f}",
                         f"{1000 * pack.seconds / n:.1f}", f"{pack.peak_mib:.0f}",
                         f"{extract.seconds:.1f}", f"{1000 * features / n:.1f}",
                         f"{extract.peak_mib:.0f}"])
            print(rows[-1], flush=True)
            source_files = list(source.rglob("*"))
            for path in source_files:  # free the disk before the next scale
                if path.is_file():
                    path.unlink()
    print(f"synthetic {args.size}x{args.size} archives; extract = {args.backbone} "
          f"weights={args.weights}, {args.epochs} epochs; {machine()}")
    print(table(["scale", "images", "archive MiB", "pack s", "pack ms/image", "pack peak MiB",
                 "extract s", "features ms/image", "extract peak MiB"], rows))


if __name__ == "__main__":
    main()
