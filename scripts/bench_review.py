"""Benchmark `toolkit review` on real photos with noise injected and recorded.

    python scripts/bench_review.py [--flowers ../shared/data/flowers]
                                   [--offtopic ../shared/data/offtopic]
                                   [--weights ../shared/weights/mobilenet_v2_imagenet_notop.weights.h5]
                                   [--mislabeled 15] [--seed 0] [--variants] [--evidence]
                                   [--cleanlab] [--size 320] [--evidence-sizes 224,256,288,384]
    python scripts/bench_review.py --intruders [--seed 0] [--intruder-counts 5,20,80]
                                   [--reference-size 100]

Builds a crawl-like folder (links, nothing copied) from the flower classes with two kinds
of noise, both recorded: `mislabeled`, `--mislabeled` photos of each class moved into each
other class in turn; `off-topic`, every photo of ../shared/data/offtopic (real photos of
objects, none a flower) spread over the classes; `--seed` draws which photos move and where
each off-topic photo goes, so a second seed checks that a rule does not fit one draw. Then,
each in its own process: `toolkit review` from an empty embedding cache (timed: the whole
command), the same review again (the cache's effect), and `toolkit pack --drop-suspects`.
Prints the CPU, the load, recall and precision of the suspects by kind of noise, and what
share of the archive is noise and of the clean images is kept. `--variants` also scores
other verdict rules on the same evidence; `--evidence` scores other evidence from the
same weights (views, classifiers) and the rules' thresholds tuned on the answers, a ceiling
for any verdict rule on that evidence; `--cleanlab` scores cleanlab's label issues and
out-of-distribution scores on the same embeddings and out-of-fold probabilities.
`--intruders` measures instead a coherent group of intruders in a class (sunflower photos
filed as roses in a rose/tulip crawl), with and without `review --reference`.
`--size` (review's by default) and the other sizes make a quick run on small data (the
suite's smoke test: tiny class folders, `--weights none`).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path

import numpy as np

from _bench import SHARED, machine, measure, scratch_folder, table, toolkit_command, weights_option
from _review_alternatives import cleanlab_rows, evidence_rows, variant_rows
from _review_noise import CLEAN, FOUND, MISLABELED, OFF_TOPIC, build, score


def intruder_rows(flowers: Path, scratch: Path, weights: str, seed: int, size: int,
                  counts: list[int], reference_size: int) -> list:
    """A crawl of two classes (rose, tulip) with a coherent group of intruders: sunflower
    photos filed as roses, as "hedgehog" brings Sonic. Review compares images with each
    other, so a group of the same intruders can look like part of the class. With
    `--reference`, a folder of 100 other sunflower photos judged alongside: review then
    knows what the intruders are (`reference_size` other sunflower photos: 100)."""
    from toolkit.curate import reviewer

    rng = np.random.default_rng(seed)
    sunflowers = sorted(p for p in (flowers / "sunflower").iterdir() if p.is_file())
    order = rng.permutation(len(sunflowers))
    reference = scratch / "reference"
    (reference / "sunflower").mkdir(parents=True)
    for k in order[-reference_size:]:
        shutil.copyfile(sunflowers[k], reference / "sunflower" / sunflowers[k].name)
    rows = []
    for intruders in counts:
        source = scratch / f"intruders-{intruders}"
        for c in ("rose", "tulip"):
            (source / c).mkdir(parents=True)
            for path in sorted(p for p in (flowers / c).iterdir() if p.is_file()):
                shutil.copyfile(path, source / c / path.name)
        for k in order[:intruders]:
            shutil.copyfile(sunflowers[k], source / "rose" / f"intruder_{sunflowers[k].name}")
        for given in (None, reference):
            result = reviewer.review(source, reference=given, weights=weights, size=size,
                                     cache_dir=scratch / "cache")
            found = [v for v in result.verdicts if "intruder_" in v.file]
            others = [v for v in result.verdicts if "intruder_" not in v.file]
            rows.append([intruders, f"{reference_size} sunflowers" if given else "none", len(found),
                         f"{sum(v.suspect for v in found) / len(found):.2f}",
                         sum(v.suggested == "sunflower" for v in found),
                         f"{sum(v.suspect for v in others) / len(others):.1%}"])
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--flowers", type=Path, default=SHARED / "data" / "flowers")
    parser.add_argument("--offtopic", type=Path, default=SHARED / "data" / "offtopic")
    parser.add_argument("--weights", default=str(SHARED / "weights" /
                                                 "mobilenet_v2_imagenet_notop.weights.h5"))
    parser.add_argument("--mislabeled", type=int, default=15,
                        help="photos of each class moved into each other class")
    parser.add_argument("--seed", type=int, default=0,
                        help="which photos are moved and where the off-topic ones go")
    parser.add_argument("--cleanlab", action="store_true", help="also score cleanlab")
    parser.add_argument("--variants", action="store_true",
                        help="also score other verdict rules on the same evidence")
    parser.add_argument("--evidence", action="store_true",
                        help="also score other evidence from the same weights, and the rules' "
                             "best thresholds chosen on the answers")
    parser.add_argument("--intruders", action="store_true",
                        help="only the intruders benchmark: sunflowers filed as roses in a "
                             "rose/tulip crawl, with and without a --reference folder")
    parser.add_argument("--keep", type=Path, default=None, help="build the folder here and keep it")
    parser.add_argument("--size", type=int, default=None, help="review's --size  [default: review's]")
    parser.add_argument("--evidence-sizes", default="224,256,288,384",
                        help="--evidence: the other centre-crop sizes compared")
    parser.add_argument("--intruder-counts", default="5,20,80",
                        help="--intruders: sunflowers filed as roses, one review each")
    parser.add_argument("--reference-size", type=int, default=100,
                        help="--intruders: sunflowers in the reference folder")
    args = parser.parse_args()
    for path in (args.flowers, args.offtopic):
        if not path.exists():
            sys.exit(f"{path} is absent (../shared)")
    weights_option(args.weights)

    from toolkit.curate import reviewer

    size = args.size or reviewer.DEFAULT_SIZE
    print(machine())
    print(f"noise injected with --seed {args.seed}")
    print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    if args.intruders:
        with scratch_folder() as scratch:
            print(table(["sunflowers filed as roses", "--reference", "judged", "recall",
                         "called sunflower", "other roses and tulips flagged"],
                        intruder_rows(args.flowers, Path(scratch), args.weights, args.seed, size,
                                      [int(n) for n in args.intruder_counts.split(",")],
                                      args.reference_size)))
        return
    with scratch_folder() as scratch:
        scratch = Path(scratch)
        source = args.keep or scratch / "crawl"
        truth = build(args.flowers, args.offtopic, args.mislabeled, source, args.seed)
        cache = scratch / "cache"
        env = {"TOOLKIT_CACHE_DIR": str(cache)}
        review = toolkit_command("review", str(source), "--weights", args.weights, "--size", str(size))
        first = measure(review, env)
        load_after = os.getloadavg()
        phases = json.loads((source / "review.json").read_text())["seconds"]
        second = measure(review, env)
        result = json.loads((source / "review.json").read_text())
        judged = {e["file"] for e in result["images"]}
        flagged = {e["file"] for e in result["images"] if e["suspect"]}
        out = scratch / "archive.npz"
        measure(toolkit_command("pack", str(source), "--out", str(out), "--drop-suspects",
                                "--per-class", "10000", "--allow-fewer", "--size", "32"), env)
        with np.load(out) as archive:
            rows = [str(p) for key in ("paths_train", "paths_test") for p in archive[key]]
        clean_usable = sum(truth[f] == CLEAN for f in judged)
        noise_rows = sum(truth[r] in (MISLABELED, OFF_TOPIC) for r in rows)
        clean_rows = sum(truth[r] == CLEAN for r in rows)

        print(f"\n{len(truth)} images ({sum(v == MISLABELED for v in truth.values())} mislabeled, "
              f"{sum(v == OFF_TOPIC for v in truth.values())} off-topic injected; "
              f"{sum(v == FOUND for v in truth.values())} audited); review judged "
              f"{len(judged)} (the others are duplicates or label conflicts pack drops too)")
        print(f"review from an empty cache: {first.seconds:.1f} s (peak {first.peak_mib:.0f} MiB;"
              f" phases {json.dumps({k: round(v, 1) for k, v in phases.items()})}); "
              f"load average after: {' '.join(f'{x:.2f}' for x in load_after)}")
        print(f"review again (every embedding cached): {second.seconds:.1f} s\n")
        print(table(["noise", "images", "flagged", "recall", "precision"],
                    score(truth, judged, flagged)))
        reasons = {}
        for e in result["images"]:
            if e["suspect"]:
                key = (truth[e["file"]], e["reason"])
                reasons[key] = reasons.get(key, 0) + 1
        print("\nverdicts of the flagged images (truth, verdict): "
              + ", ".join(f"{t}/{r} {n}" for (t, r), n in sorted(reasons.items())))
        found_rows = sum(truth[r] == FOUND for r in rows)
        print(f"\nafter `pack --drop-suspects`: {len(rows)} rows, {noise_rows} injected noise "
              f"({noise_rows / len(rows):.2%}), {found_rows} audited; clean images kept "
              f"{clean_rows} of {clean_usable} ({clean_rows / clean_usable:.1%})")
        if args.variants:
            print("\nother rules on the same evidence (pack leaves out every flagged image):")
            print(table(["rule", "flagged", "recall", "precision", "precision with audited",
                         "noise after drop", "clean kept"],
                        variant_rows(truth, result, cache, args.weights, size)))
        if args.evidence:
            print("\nother evidence from the same weights (AUC: mislabeled by its own class's "
                  "evidence, off-topic by the outlier score, each against the clean photos; "
                  "recall, precision and clean kept with review's rules; then the best of "
                  "the rules' thresholds chosen on the answers):")
            print(table(["evidence", "AUC mislabeled", "AUC off-topic", "recall", "precision",
                         "clean kept", "best recall at >= 97% clean kept",
                         "best clean kept at recall >= 0.95"],
                        evidence_rows(truth, result, cache, args.weights, size,
                                      [int(s) for s in args.evidence_sizes.split(",")])))
        if args.cleanlab:
            print()
            print(table(["method", "noise", "images", "flagged", "recall", "precision"],
                        cleanlab_rows(truth, result, cache, args.weights, size)))


if __name__ == "__main__":
    main()
