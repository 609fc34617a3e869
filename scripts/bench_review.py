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
                shutil.copyfile(path, into / name)
                truth[name] = MISLABELED
        for k in order[per_pair * (len(classes) - 1):]:
            path = photos[c][k]
            shutil.copyfile(path, into / c / path.name)
            truth[f"{c}/{path.name}"] = FOUND if f"{c}/{path.name}" in audited else CLEAN
    others = sorted(p for p in offtopic.iterdir() if p.is_file())
    for k, path in zip(rng.permutation(len(others)), others):
        name = f"{classes[k % len(classes)]}/offtopic_{path.name}"
        shutil.copyfile(path, into / name)
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


def cleanlab_rows(truth: dict[str, str], review_json: dict, cache: Path, weights: str,
                  size: int) -> list:
    """Cleanlab's confident learning and its kNN out-of-distribution score on the same
    embeddings and out-of-fold probabilities."""
    from cleanlab.filter import find_label_issues
    from cleanlab.outlier import OutOfDistribution

    from toolkit.curate import reviewer

    files, x, labels = judged_evidence(review_json, cache, weights, size)
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


def judged_evidence(review_json: dict, cache: Path, weights: str, size: int):
    """The judged files, their embeddings and labels, as review computed them (from the cache)."""
    from toolkit.core.sources import find_usable
    from toolkit.curate import reviewer
    from toolkit.models.embedder import embed

    _, found = find_usable(review_json["source"])
    files = [f for f in found if not f.status]
    vectors = embed(files, backbone=reviewer.DEFAULT_BACKBONE, weights=weights, size=size,
                    cache_dir=cache)
    return files, reviewer.normalised(vectors), np.array([f.label for f in files])


def variant_rows(truth: dict[str, str], review_json: dict, cache: Path, weights: str,
                 size: int) -> list:
    """Other verdict rules on the same evidence, each scored as `pack --drop-suspects` would
    use it (every flagged image left out): the ideas of issue 9's precision follow-up."""
    from sklearn.neighbors import NearestNeighbors

    from toolkit.curate import reviewer, rules

    files, x, labels = judged_evidence(review_json, cache, weights, size)
    n = len(labels)
    probabilities = reviewer.out_of_fold_probabilities(x, labels)
    z, votes = reviewer.neighbourhood(x, labels, probabilities.shape[1])
    evidence = (probabilities + votes) / 2
    own, other, suggested = reviewer.own_and_other(evidence, labels)
    distances, _ = NearestNeighbors(n_neighbors=reviewer.NEIGHBOURHOOD_SIZE + 1,
                                    metric="cosine").fit(x).kneighbors(x)
    spread = distances[:, 1:].mean(axis=1)  # as reviewer.neighbourhood measures it
    spread_z = np.empty(n)  # its robust z-score within each class, not over all images
    for c in np.unique(labels):
        mine = spread[labels == c]
        median = np.median(mine)
        spread_z[labels == c] = (mine - median) / (np.median(np.abs(mine - median)) * 1.4826)
    self_confidence = np.array([evidence[labels == c, c].mean() for c in range(evidence.shape[1])])
    mislabeled = ((other >= rules.MISLABELED_EVIDENCE)
                  & (other - own >= rules.MISLABELED_MARGIN))
    ambiguous = own < rules.AMBIGUOUS_EVIDENCE
    variants = {
        "current rules": rules.reasons(own, other, z) != rules.FINE,
        "ambiguous shown, not dropped": (z >= rules.OFF_TOPIC_Z) | mislabeled,
        "off-topic z per class": (spread_z >= rules.OFF_TOPIC_Z) | mislabeled | ambiguous,
        "mislabeled without the margin over its own class": (z >= rules.OFF_TOPIC_Z)
            | ambiguous | (other >= rules.MISLABELED_EVIDENCE),
        "off-topic at 5% false alarms of a normal (z 1.64)": (z >= 1.645) | mislabeled | ambiguous,
        "off-topic at 1% false alarms of a normal (z 2.33)": (z >= 2.326) | mislabeled | ambiguous,
        "mislabeled at its class's mean self-confidence": (z >= rules.OFF_TOPIC_Z) | ambiguous
                                                          | (other >= self_confidence[suggested]),
        "mislabeled when another class leads": (z >= rules.OFF_TOPIC_Z) | (other > own),
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


def tuned_on_the_answers(own: np.ndarray, other: np.ndarray, outlier: np.ndarray,
                         kinds: np.ndarray) -> tuple[str, str]:
    """The best the verdict rules can do on this evidence: their four thresholds chosen on
    a grid by looking at the truth. Returns (recall while keeping >= 97% of the clean photos,
    clean photos kept at recall >= 0.95)."""
    injected = np.isin(kinds, [MISLABELED, OFF_TOPIC])
    clean = kinds == CLEAN
    points = []
    for off_topic in np.arange(1.25, 3.01, 0.25):
        for mislabeled in np.arange(0.4, 0.81, 0.05):
            for margin in (0.0, 0.1, 0.2, 0.3, 0.4):
                for ambiguous in (0.0, 0.15, 0.2, 0.25, 0.3):
                    flagged = ((outlier >= off_topic) | (own < ambiguous)
                               | ((other >= mislabeled) & (other - own >= margin)))
                    points.append(((flagged & injected).sum() / injected.sum(),
                                   (~flagged & clean).sum() / clean.sum()))
    recall = max((r for r, kept in points if kept >= 0.97), default=0.0)
    kept = max((k for r, k in points if r >= 0.95), default=0.0)
    return f"{recall:.3f}", f"{kept:.1%}"


def evidence_rows(truth: dict[str, str], review_json: dict, cache: Path, weights: str,
                  size: int, sides: list[int]) -> list:
    """Other evidence from the same weights: other input sizes and views, other classifiers.
    For each, its separation of the noise from the clean photos (ROC AUC), what review's
    rules make of it, and the best the rules' thresholds can do when chosen on the answers:
    how far any verdict rule can go with these weights."""
    from sklearn.calibration import CalibratedClassifierCV
    from sklearn.decomposition import PCA
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.svm import SVC

    from toolkit.core import images
    from toolkit.curate import reviewer, rules
    from toolkit.models.embedder import embed, pooled_backbone

    files, x, labels = judged_evidence(review_json, cache, weights, size)
    kinds = np.array([truth[f.name] for f in files])
    n_classes = labels.max() + 1

    def padded(side: int) -> np.ndarray:
        """The whole image fitted inside the square (review's embeddings are centre crops)."""
        model = pooled_backbone(reviewer.DEFAULT_BACKBONE, weights, side, 0)
        out = [np.asarray(model.predict_on_batch(np.stack([
            images.decode(images.read_file(f.path), images.Checks(), side, "pad")[1]
            for f in files[i:i + 32]]))) for i in range(0, len(files), 32)]
        return reviewer.normalised(np.concatenate(out))

    def folds(seed: int) -> StratifiedKFold:
        return StratifiedKFold(reviewer.FOLDS, shuffle=True, random_state=seed)

    def svm(v: np.ndarray) -> np.ndarray:
        reduced = PCA(min(reviewer.PRINCIPAL_COMPONENTS, *v.shape), random_state=0).fit_transform(v)
        model = CalibratedClassifierCV(SVC(C=3.0), ensemble=False)  # Platt-scaled
        return cross_val_predict(model, reduced, labels, cv=folds(0), method="predict_proba")

    def without_suspects(v: np.ndarray) -> np.ndarray:
        """A second pass whose regressions never learn from the first pass's suspects."""
        first = {e["file"]: e["suspect"] for e in review_json["images"]}
        suspect = np.array([first[f.name] for f in files])
        reduced = PCA(min(reviewer.PRINCIPAL_COMPONENTS, *v.shape), random_state=0).fit_transform(v)
        out = np.zeros((len(v), n_classes))
        for train, test in folds(0).split(reduced, labels):
            train = train[~suspect[train]]
            out[test] = LogisticRegression(max_iter=2000).fit(
                reduced[train], labels[train]).predict_proba(reduced[test])
        return out

    variants = {f"review's: {size} px centre crop, regression + neighbours": (x, None)}
    for side in sides:
        variants[f"{side} px centre crop"] = (reviewer.normalised(embed(
            files, backbone=reviewer.DEFAULT_BACKBONE, weights=weights, size=side,
            cache_dir=cache)), None)
    variants[f"{size} px centre crop + whole image padded (mean of two views)"] = (
        reviewer.normalised(x + padded(size)), None)
    variants.update({
        "regression averaged over 3 draws of the folds": (x, lambda v: np.mean(
            [reviewer.out_of_fold_probabilities(v, labels, seed=s) for s in range(3)], axis=0)),
        "SVM (RBF, Platt-scaled) instead of the regression": (x, svm),
        "second pass, the first pass's suspects not learnt from": (x, without_suspects),
    })
    mislabeled, off_topic = np.isin(kinds, [MISLABELED, CLEAN]), np.isin(kinds, [OFF_TOPIC, CLEAN])
    injected, clean = np.isin(kinds, [MISLABELED, OFF_TOPIC]), kinds == CLEAN
    rows = []
    for name, (v, classify) in variants.items():
        probabilities = (classify or (lambda w: reviewer.out_of_fold_probabilities(w, labels)))(v)
        outlier, votes = reviewer.neighbourhood(v, labels, n_classes)
        own, other, _ = reviewer.own_and_other((probabilities + votes) / 2, labels)
        flagged = rules.reasons(own, other, outlier) != rules.FINE
        rows.append([name, f"{roc_auc_score(kinds[mislabeled] == MISLABELED, -own[mislabeled]):.4f}",
                     f"{roc_auc_score(kinds[off_topic] == OFF_TOPIC, outlier[off_topic]):.4f}",
                     f"{(flagged & injected).sum() / injected.sum():.3f}",
                     f"{(flagged & injected).sum() / flagged.sum():.3f}",
                     f"{(~flagged & clean).sum() / clean.sum():.1%}",
                     *tuned_on_the_answers(own, other, outlier, kinds)])
    return rows


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
