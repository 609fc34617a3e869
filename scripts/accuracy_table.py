"""The study's story on real photos: all four strategies on ../shared/data/flowers with the
real MobileNetV2 ImageNet weights in ../shared/weights.

Packs the flowers (3 x 400, 224 px, seed 42) unless the archive exists, then runs
`toolkit compare` and prints the table. The frozen features are computed once and shared
by extract, finetune and augment through the cache.

    python scripts/accuracy_table.py [--strategies cnn,extract,finetune,augment] [--out runs/flowers]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from _bench import machine, table, toolkit_command

SHARED = Path(__file__).resolve().parents[2] / "shared"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--strategies", default="cnn,extract,finetune,augment")
    parser.add_argument("--archive", default="runs/flowers.npz")
    parser.add_argument("--out", default="runs/flowers")
    parser.add_argument("--extra", nargs=argparse.REMAINDER, default=[],
                        help="more options for toolkit compare")
    args = parser.parse_args()
    weights = SHARED / "weights" / "mobilenet_v2_imagenet_notop.weights.h5"
    if not weights.exists():
        sys.exit(f"{weights} is absent")
    Path(args.archive).parent.mkdir(parents=True, exist_ok=True)
    if not Path(args.archive).exists():
        subprocess.run(toolkit_command("pack", str(SHARED / "data" / "flowers"), "--out",
                                       args.archive), check=True)
    subprocess.run(toolkit_command("compare", "--data", args.archive, "--strategies",
                                   args.strategies, "--backbone", "mobilenet_v2", "--weights",
                                   str(weights), "--out", args.out, *args.extra), check=True)
    rows = json.loads((Path(args.out) / "comparison.json").read_text())
    print(f"{args.archive}: flowers 3 x 400 at 224 px, 960 train / 240 test; {machine()}")
    print(table(["strategy", "test accuracy", "macro F1", "epochs", "seconds"],
                [[r["strategy"], f"{r['accuracy']:.3f}", f"{r['macro_f1']:.3f}", r["epochs"],
                  f"{r['seconds']:.0f}"] for r in rows]))


if __name__ == "__main__":
    main()
