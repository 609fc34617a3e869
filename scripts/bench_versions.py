"""Benchmark the toolkit against an earlier commit of itself: did a change make the normal path
slower? Runs `pack` (../shared's flowers, 224 px) and `crawl` (a loopback Bing with no added
latency, the toolkit's own cost) on both trees, interleaved, and prints the median of each.

    python scripts/bench_versions.py --before aeee44f [--repeat 3] [--per-class 400]

The earlier tree is taken from git (`git archive`) into a scratch folder and run with
PYTHONPATH pointing at it; the later one is this checkout. Only the library changes between
the two sides: the same Python, packages, files and server.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
from pathlib import Path

from _bench import SHARED, machine, measure, scratch_folder, table, toolkit_command
from bench_crawl import SlowEngine

REPO = Path(__file__).resolve().parents[1]


def tree_at(revision: str, into: Path) -> Path:
    """The files of `revision` in `into` (what its PYTHONPATH imports)."""
    into.mkdir(parents=True)
    archive = subprocess.run(["git", "-C", str(REPO), "archive", revision], check=True,
                             capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", required=True, help="the earlier commit")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--per-class", type=int, default=400)
    parser.add_argument("--source", default=str(SHARED / "data" / "flowers"))
    parser.add_argument("--smoke", action="store_true", help="tiny sizes: check that it runs")
    args = parser.parse_args()
    per_class, repeat = (10, 1) if args.smoke else (args.per_class, args.repeat)

    print(f"machine: {machine()}; load {os.getloadavg()[0]:.2f}")
    labels = ["class0", "class1", "class2"]
    engine = SlowEngine(labels, per_class, latency=0.0)
    seconds: dict[tuple[str, str], list[float]] = {}
    try:
        with scratch_folder() as work:
            work = Path(work)
            sides = {"before": tree_at(args.before, work / "before"), "after": REPO}
            for path in Path(args.source).rglob("*"):  # both sides read from the page cache
                if path.is_file():
                    path.read_bytes()
            for run in range(repeat):
                for side, tree in sides.items():  # interleaved: load drifts hit both alike
                    env = {"PYTHONPATH": str(tree), "TOOLKIT_BING_URL": engine.url,
                           "TOOLKIT_ALLOW_PRIVATE_ADDRESSES": "1"}
                    out = work / f"{side}{run}"
                    pack = toolkit_command("pack", args.source, "--out", str(out / "a.npz"),
                                           "--per-class", str(min(per_class, 400)), "--allow-fewer")
                    crawl = toolkit_command("crawl", *labels, "--root", str(out / "crawl"),
                                            "--per-class", str(per_class), "--engine", "bing")
                    out.mkdir()
                    seconds.setdefault(("pack", side), []).append(measure(pack, env).seconds)
                    seconds.setdefault(("crawl", side), []).append(measure(crawl, env).seconds)
    finally:
        engine.close()
    rows = []
    for job in ("pack", "crawl"):
        before = statistics.median(seconds[(job, "before")])
        after = statistics.median(seconds[(job, "after")])
        rows.append([job, f"{before:.2f}", f"{after:.2f}", f"{(after / before - 1) * 100:+.1f}%"])
    print(f"\nmedian of {repeat} interleaved runs; pack: {args.source} at 224 px, {min(per_class, 400)} "
          f"per class; crawl: 3 x {per_class} images from a loopback Bing, no added latency\n")
    print(table(["job", f"before ({args.before}) s", "after s", "change"], rows))


if __name__ == "__main__":
    sys.exit(main())
