"""Benchmark `toolkit review` on real photos with noise injected and recorded.

    python scripts/bench_review.py [--flowers ../shared/data/flowers]
                                   [--offtopic ../shared/data/offtopic]
                                   [--weights ../shared/weights/mobilenet_v2_imagenet_notop.weights.h5]
                                   [--mislabeled 15] [--seed 0] [--variants] [--cleanlab]

Builds a crawl-like folder (links, nothing copied) from the flower classes with two kinds
of noise, both recorded: `mislabeled`, `--mislabeled` photos of each class moved into each
other class in turn; `off-topic`, every photo of ../shared/data/offtopic (real photos of
objects, none a flower) spread over the classes; `--seed` draws which photos move and where
each off-topic photo goes, so a second seed checks that a rule does not fit one draw. Then,
each in its own process: `toolkit review` from an empty embedding cache (timed: the whole
command), the same review again (the cache's effect), and `toolkit pack --drop-suspects`.
Prints the CPU, the load, recall and precision of the suspects by kind of noise, and what
share of the archive is noise and of the clean images is kept. `--variants` also scores
other verdict rules on the same evidence; `--cleanlab` scores cleanlab's label issues and
out-of-distribution scores on the same embeddings and out-of-fold probabilities.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np

from _bench import SHARED, machine, measure, scratch_folder, table, toolkit_command

MISLABELED, OFF_TOPIC, CLEAN = "mislabeled", "off-topic", "clean"
FOUND = "found"  # a photo of the flowers set that is not of its class (flowers_audit.txt)
AUDIT = Path(__file__).with_name("flowers_audit.txt")




def build(flowers: Path, offtopic: Path, per_pair: int, into: Path, seed: int = 0) -> dict[str, str]:
    """Link the photos into `into`/<class>/; return {relative path: kind of noise or clean}."""
    audited = {line.strip() for line in AUDIT.read_text().splitlines()
               if line.strip() and not line.startswith("#")}
    rng = np.random.default_rng(seed)
    classes = sorted(p.name for p in flowers.iterdir() if p.is_dir())
    truth: dict[str, str] = {}
    photos = {c: sorted(p for p in (flowers / c).iterdir() if p.is_file()) for c in classes}
    for c in classes:
        (into / c).mkdir(parents=True)
    for i, c in enumerate(classes):
        order = rng.permutation(len(photos[c]))
        moved = iter(order[:per_pair * (len(classes) - 1)])
        for j, other in enumerate(classes):
            if other == c:
                continue
            for _ in range(per_pair):
                path = photos[c][next(moved)]
                name = f"{other}/from_{c}_{path.name}"
                (into / name).symlink_to(path.resolve())
                truth[name] = MISLABELED
        for k in order[per_pair * (len(classes) - 1):]:
            path = photos[c][k]
            (into / c / path.name).symlink_to(path.resolve())
            truth[f"{c}/{path.name}"] = FOUND if f"{c}/{path.name}" in audited else CLEAN
    others = sorted(p for p in offtopic.iterdir() if p.is_file())
    for k, path in zip(rng.permutation(len(others)), others):
        name = f"{classes[k % len(classes)]}/offtopic_{path.name}"
        (into / name).symlink_to(path.resolve())
        truth[name] = OFF_TOPIC
    return truth


def score(truth: dict[str, str], judged: set[str], flagged: set[str]) -> list[list[object]]:
    """Recall by kind of noise and precision of the flags, over the judged images: against
    the injected noise alone, and counting the audited photos of the set as noise too."""
    rows = []
    for kind in (MISLABELED, OFF_TOPIC):
        mine = {f for f in judged if truth[f] == kind}
        rows.append([kind, len(mine), len(mine & flagged), f"{len(mine & flagged) / len(mine):.3f}", ""])
    injected = {f for f in judged if truth[f] in (MISLABELED, OFF_TOPIC)}
    found = {f for f in judged if truth[f] == FOUND}
    hits = len(flagged & injected)
    rows.append(["all injected", len(injected), hits, f"{hits / len(injected):.3f}",
                 f"{hits / max(len(flagged), 1):.3f}"])
    rows.append(["injected + audited", len(injected | found), len(flagged & (injected | found)),
                 f"{len(flagged & (injected | found)) / len(injected | found):.3f}",
                 f"{len(flagged & (injected | found)) / max(len(flagged), 1):.3f}"])
    rows.append(["clean (not audited)", sum(truth[f] == CLEAN for f in judged),
                 sum(truth[f] == CLEAN for f in flagged), "", ""])
    return rows


def cleanlab_rows(truth: dict[str, str], review_json: dict, cache: Path, weights: str) -> list:
    """Cleanlab's confident learning and its kNN out-of-distribution score on the same
    embeddings and out-of-fold probabilities."""
    from cleanlab.filter import find_label_issues
    from cleanlab.outlier import OutOfDistribution

    from toolkit import reviewer

    files, x, labels = judged_evidence(review_json, cache, weights)
    probabilities = reviewer.out_of_fold_probabilities(x, labels)
    judged = {f.name for f in files}
    issues = find_label_issues(labels, probabilities)
    ood = OutOfDistribution().fit_score(features=x)  # low = atypical
    rows = []
    for quantile in (0.05, 0.10):
        cut = np.quantile(ood, quantile)
        flagged = {f.name for f, issue, o in zip(files, issues, ood) if issue or o <= cut}
        for row in score(truth, judged, flagged):
            rows.append([f"cleanlab (label issues + OOD lowest {quantile:.0%})", *row])
    return rows


def judged_evidence(review_json: dict, cache: Path, weights: str):
    """The judged files, their embeddings and labels, as review computed them (from the cache)."""
    from toolkit import reviewer
    from toolkit.archive import find_usable

    _, found = find_usable(review_json["source"])
    files = [f for f in found if not f.status]
    vectors = reviewer.embed(files, weights=weights, cache_dir=cache)
    return files, reviewer._normalised(vectors), np.array([f.label for f in files])


def variant_rows(truth: dict[str, str], review_json: dict, cache: Path, weights: str) -> list:
    """Other verdict rules on the same evidence, each scored as `pack --drop-suspects` would
    use it (every flagged image left out): the ideas of issue 9's precision follow-up."""
    from sklearn.neighbors import NearestNeighbors

    from toolkit import reviewer

    files, x, labels = judged_evidence(review_json, cache, weights)
    n, rows_of = len(labels), np.arange(len(labels))
    probabilities = reviewer.out_of_fold_probabilities(x, labels)
    z, votes = reviewer.neighbourhood(x, labels, probabilities.shape[1])
    evidence = (probabilities + votes) / 2
    own = evidence[rows_of, labels]
    others = np.where(np.eye(evidence.shape[1], dtype=bool)[labels], -1.0, evidence)
    other, suggested = others.max(1), others.argmax(1)
    distances, _ = NearestNeighbors(n_neighbors=reviewer.NEIGHBOURS + 1,
                                    metric="cosine").fit(x).kneighbors(x)
    spread = distances[:, 1:].mean(axis=1)  # as reviewer.neighbourhood measures it
    spread_z = np.empty(n)  # its robust z-score within each class, not over all images
    for c in np.unique(labels):
        mine = spread[labels == c]
        median = np.median(mine)
        spread_z[labels == c] = (mine - median) / (np.median(np.abs(mine - median)) * 1.4826)
    self_confidence = np.array([evidence[labels == c, c].mean() for c in range(evidence.shape[1])])
    mislabeled = other >= reviewer.MISLABELED_EVIDENCE
    ambiguous = own < reviewer.AMBIGUOUS_EVIDENCE
    variants = {
        "current rules": (z >= reviewer.OFF_TOPIC_Z) | mislabeled | ambiguous,
        "ambiguous shown, not dropped": (z >= reviewer.OFF_TOPIC_Z) | mislabeled,
        "off-topic z per class": (spread_z >= reviewer.OFF_TOPIC_Z) | mislabeled | ambiguous,
        "mislabeled needs margin >= 0.3": (z >= reviewer.OFF_TOPIC_Z) | ambiguous
                                          | (mislabeled & (other - own >= 0.3)),
        "off-topic at 5% false alarms of a normal (z 1.64)": (z >= 1.645) | mislabeled | ambiguous,
        "off-topic at 1% false alarms of a normal (z 2.33)": (z >= 2.326) | mislabeled | ambiguous,
        "mislabeled at its class's mean self-confidence": (z >= reviewer.OFF_TOPIC_Z) | ambiguous
                                                          | (other >= self_confidence[suggested]),
        "mislabeled when another class leads": (z >= reviewer.OFF_TOPIC_Z) | (other > own),
    }
    kinds = np.array([truth[f.name] for f in files])
    injected = np.isin(kinds, [MISLABELED, OFF_TOPIC])
    audited = kinds == FOUND
    clean = kinds == CLEAN
    rows = []
    for name, flagged in variants.items():
        kept = ~flagged
        rows.append([name, int(flagged.sum()), f"{(flagged & injected).sum() / injected.sum():.3f}",
                     f"{(flagged & injected).sum() / flagged.sum():.3f}",
                     f"{(flagged & (injected | audited)).sum() / flagged.sum():.3f}",
                     f"{(kept & injected).sum() / kept.sum():.2%}",
                     f"{(kept & clean).sum() / clean.sum():.1%}"])
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
    parser.add_argument("--keep", type=Path, default=None, help="build the folder here and keep it")
    args = parser.parse_args()
    for path in (args.flowers, args.offtopic, Path(args.weights)):
        if not path.exists():
            sys.exit(f"{path} is absent (../shared)")

    print(machine())
    print(f"noise injected with --seed {args.seed}")
    print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    with scratch_folder() as scratch:
        scratch = Path(scratch)
        source = args.keep or scratch / "crawl"
        truth = build(args.flowers, args.offtopic, args.mislabeled, source, args.seed)
        cache = scratch / "cache"
        env = {"TOOLKIT_CACHE_DIR": str(cache)}
        review = toolkit_command("review", str(source), "--weights", args.weights)
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
                        variant_rows(truth, result, cache, args.weights)))
        if args.cleanlab:
            print()
            print(table(["method", "noise", "images", "flagged", "recall", "precision"],
                        cleanlab_rows(truth, result, cache, args.weights)))


if __name__ == "__main__":
    main()
