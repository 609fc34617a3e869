"""Pack to shards as the data grows: time per image, peak memory and bytes; Beam's direct runner
with 2 worker processes against 1, and against today's .npz pack.

Images are generated, distinct and photo-like (400x300 JPEGs: a smooth random colour field, a few
soft shapes, grain), `--base` per class in 3 classes at 1x (1,500 images), at each of `--scales`
(1,4,16,64: up to 96,000 images). They are generated once into `--cache` (kept between runs);
each scale is a folder of hard links to the first images of each class. Every pack runs in its own
process: wall time, CPU time (of all its processes: how much of the machine it got, which on a
shared machine is less than its cores), the peak resident memory of its largest process and of all
its processes together (the Beam workers too), the output's bytes, and the load average before and
after.

    python scripts/bench_shards.py [--scales 1,4,16,64] [--base 500] [--size 224]
                                   [--sides npz,beam1,beam2] [--cache runs/bench-photos] [--smoke]

`--smoke` runs 3 x 20 images at 64 pixels, in seconds.
"""

from __future__ import annotations

import argparse
import io
import os
import shutil
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from _bench import machine, measure_tree, scratch_folder, table, toolkit_command

CLASSES = ("a", "b", "c")


def photo(label: int, index: int) -> bytes:
    """A distinct photo-like 400x300 JPEG, the same for the same (label, index)."""
    rng = np.random.default_rng([label, index])
    field = rng.integers(0, 256, (3, 4, 3), dtype=np.uint8)
    image = Image.fromarray(field).resize((400, 300), Image.Resampling.BICUBIC)
    draw = ImageDraw.Draw(image)
    for _ in range(3):
        x, y = rng.integers(0, 400), rng.integers(0, 300)
        w, h = rng.integers(30, 160, 2)
        draw.ellipse((x - w, y - h, x + w, y + h), fill=tuple(int(c) for c in rng.integers(0, 256, 3)))
    image = image.filter(ImageFilter.GaussianBlur(3))
    grain = rng.integers(-10, 11, (300, 400, 3), dtype=np.int16)
    pixels = np.clip(np.asarray(image, dtype=np.int16) + grain, 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def _write(job: tuple[str, int, int, int]) -> None:
    folder, label, start, stop = job
    for index in range(start, stop):
        path = Path(folder) / f"{index:06d}.jpg"
        if not path.exists():
            path.write_bytes(photo(label, index))


def generate(cache: Path, per_class: int) -> None:
    """Make sure the cache holds `per_class` images of each class (both cores generate them)."""
    jobs = []
    for label, name in enumerate(CLASSES):
        folder = cache / name
        folder.mkdir(parents=True, exist_ok=True)
        jobs += [(str(folder), label, start, min(start + 500, per_class))
                 for start in range(0, per_class, 500)]
    with ProcessPoolExecutor(os.cpu_count()) as pool:
        list(pool.map(_write, jobs))


def scale_folder(cache: Path, per_class: int, into: Path) -> Path:
    """A folder of class folders of hard links to the first `per_class` images of each class
    (pack skips a symbolic link out of its class folder; a hard link is the file itself)."""
    for name in CLASSES:
        (into / name).mkdir(parents=True)
        for index in range(per_class):
            target = into / name / f"{index:06d}.jpg"
            try:
                os.link(cache / name / f"{index:06d}.jpg", target)
            except OSError:  # another file system
                shutil.copyfile(cache / name / f"{index:06d}.jpg", target)
    return into


def folder_bytes(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scales", default="1,4,16,64")
    parser.add_argument("--base", type=int, default=500, help="images per class at 1x")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--sides", default="npz,beam1,beam2")
    parser.add_argument("--cache", default="runs/bench-photos")
    parser.add_argument("--smoke", action="store_true")
    args = parser.parse_args()
    if args.smoke:
        args.scales, args.base, args.size = "1", 20, 64
    scales = [int(s) for s in args.scales.split(",")]
    sides = args.sides.split(",")
    cache = Path(args.cache).resolve()
    print(machine(), flush=True)
    generate(cache, args.base * max(scales))

    rows, per_image = [], {}
    for scale in scales:
        per_class = args.base * scale
        n = 3 * per_class
        with scratch_folder() as work:
            work = Path(work)
            source = scale_folder(cache, per_class, work / "source")
            common = ["--per-class", str(per_class), "--size", str(args.size), "--allow-fewer"]
            for side in sides:
                out = work / ("x.npz" if side == "npz" else f"ds-{side}")
                extra = ([] if side == "npz" else
                         ["--format", "tfrecord", "--workers", side.removeprefix("beam")])
                took = measure_tree(toolkit_command("pack", str(source), "--out", str(out), *common, *extra))
                per_image[scale, side] = 1000 * took.seconds / n
                rows.append([f"{scale}x", n, side, f"{took.seconds:.1f}", f"{per_image[scale, side]:.2f}",
                             f"{1000 * took.cpu_seconds / n:.2f}",
                             f"{100 * took.cpu_seconds / took.seconds:.0f}%",
                             f"{took.peak_mib:.0f}", f"{took.tree_peak_mib:.0f}",
                             f"{folder_bytes(out) / 2**20:.1f}",
                             f"{took.load_before:.1f} / {took.load_after:.1f}"])
                print(" | ".join(map(str, rows[-1])), flush=True)
                shutil.rmtree(out) if out.is_dir() else out.unlink()
    print(f"\n{args.size}x{args.size}, generated 400x300 JPEGs; {machine()}")
    print(table(["scale", "images", "pack", "s", "ms/image", "CPU ms/image", "CPU used",
                 "peak MiB (largest process)",
                 "peak MiB (all processes)", "output MiB", "load before / after"], rows))
    for scale in scales:
        if (scale, "beam1") in per_image and (scale, "beam2") in per_image:
            print(f"{scale}x: 2 workers {per_image[scale, 'beam1'] / per_image[scale, 'beam2']:.2f}x "
                  f"faster than 1", end="")
            if (scale, "npz") in per_image:
                print(f"; .npz pack {per_image[scale, 'npz']:.2f} ms/image", end="")
            print()


if __name__ == "__main__":
    main()
