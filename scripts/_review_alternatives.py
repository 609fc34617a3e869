"""What scripts/bench_review.py compares review's verdicts with: other verdict rules, other
evidence from the same weights, and cleanlab, each scored on the same noisy folder."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from _review_noise import CLEAN, FOUND, MISLABELED, OFF_TOPIC, score


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
