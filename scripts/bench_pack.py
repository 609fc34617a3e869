"""Benchmark `toolkit pack` against a plain Pillow loop on the same files.

The plain loop is what a notebook does: open, convert, resize, one file at a time,
np.stack at the end, np.savez. `toolkit pack` does more (verifies every file, hashes,
dedupes, splits) and is still faster: JPEG draft decoding, both cores, and rows streamed
from a spill file into the zip instead of a stacked copy in memory.

    python scripts/bench_pack.py [SOURCE] [--long-side 1600] [--repeat 3]

`--long-side N` first writes a copy of SOURCE whose photos are N pixels on the long side,
like the full-size pictures an image search returns.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

from _bench import machine, measure, scratch_folder, table, toolkit_command

PLAIN_LOOP = """
import sys, numpy as np
from pathlib import Path
from PIL import Image
source, out, size = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
rows = []
for path in sorted(p for p in source.rglob("*") if p.is_file()):
    rows.append(np.asarray(Image.open(path).convert("RGB").resize((size, size))))
np.savez(out, X=np.stack(rows))
"""


def upscaled_copy(source: Path, long_side: int, into: Path) -> Path:
    from PIL import Image

    for path in sorted(source.rglob("*")):
        if path.is_file():
            target = into / path.relative_to(source)
            target.parent.mkdir(parents=True, exist_ok=True)
            image = Image.open(path).convert("RGB")
            scale = long_side / max(image.size)
            image.resize((round(image.width * scale), round(image.height * scale)),
                         Image.Resampling.BICUBIC).save(target, "JPEG", quality=90)
    return into


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", nargs="?", default="../shared/data/flowers")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--per-class", type=int, default=400)
    parser.add_argument("--long-side", type=int, default=0)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    with scratch_folder() as work:
        work = Path(work)
        source = Path(args.source)
        if args.long_side:
            source = upscaled_copy(source, args.long_side, work / "source")
        files = [p for p in source.rglob("*") if p.is_file()]
        for path in files:  # warm the page cache: both sides read from memory
            path.read_bytes()
        plain, packed = [], []
        for _ in range(args.repeat):
            plain.append(measure([sys.executable, "-c", PLAIN_LOOP, str(source),
                                  str(work / "plain.npz"), str(args.size)]))
            packed.append(measure(toolkit_command(
                "pack", str(source), "--out", str(work / "packed.npz"), "--size", str(args.size),
                "--per-class", str(args.per_class), "--force")))
        archive_mib = (work / "packed.npz").stat().st_size / 2**20

    def summary(runs):
        seconds = statistics.median(r.seconds for r in runs)
        return seconds, len(files) / seconds, max(r.peak_mib for r in runs)

    (p_s, p_rate, p_mem), (t_s, t_rate, t_mem) = summary(plain), summary(packed)
    print(f"{len(files)} files from {args.source}" + (f", upscaled to {args.long_side} px" if
                                                      args.long_side else "") + f"; {machine()}")
    print(table(["", "seconds", "images/s", "peak RSS MiB", "peak / archive"], [
        ["plain Pillow loop", f"{p_s:.1f}", f"{p_rate:.0f}", f"{p_mem:.0f}", f"{p_mem / archive_mib:.2f}"],
        ["toolkit pack", f"{t_s:.1f}", f"{t_rate:.0f}", f"{t_mem:.0f}", f"{t_mem / archive_mib:.2f}"],
        ["ratio", "", f"**{t_rate / p_rate:.2f}x**", f"{t_mem / p_mem:.2f}x", ""],
    ]))
    print(f"archive: {archive_mib:.0f} MiB; median of {args.repeat} runs each, alternating")


if __name__ == "__main__":
    main()
