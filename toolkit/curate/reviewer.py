"""Review a crawl: find off-topic and mislabeled images before they reach the archive.

Review judges exactly the images `pack` would consider (:func:`toolkit.core.sources.find_usable`:
the same "usable" and duplicate rules). For each it computes an embedding with a frozen
pretrained backbone, globally average-pooled, cached on disk per image; then

- out-of-fold class probabilities: a logistic regression on the embeddings, k-fold, so no
  image is judged by a model that saw it;
- an outlier score: how far the image is from its nearest neighbours in embedding space,
  against how far images usually are from theirs (a robust z-score);

and from these a verdict: `mislabeled` (with the class it most likely belongs to),
`off-topic` (close to no class), `ambiguous` (torn between its class and another), or
fine, with a score to sort by (the rules: :mod:`toolkit.curate.rules`). It writes
`SOURCE/review.json` (:mod:`toolkit.curate.verdicts`) and a self-contained `SOURCE/review.html`
(:mod:`toolkit.curate.review_page`); `toolkit review --serve` opens the gallery
(:mod:`toolkit.curate.gallery`) where a person keeps, drops or moves images
(:mod:`toolkit.core.decisions`).
"""

from __future__ import annotations

import contextlib
import os
import time
import warnings
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np

from ..core import dedupe, images
from ..core.errors import ToolkitError
from ..core.locks import holding
from ..core.sources import class_folders, find_usable
from .review_page import REVIEW_HTML, write_html
from .rules import AMBIGUOUS, FINE, MISLABELED, OFF_TOPIC, OFF_TOPIC_Z, reasons
from .verdicts import REVIEW_FILE, Review, Verdict, write_review

DEFAULT_BACKBONE = "mobilenet_v2"
#: The side of the square review embeds. Larger than the 224 px the backbone was trained at:
#: training's random crops show objects larger than a centre crop at the same size does, so
#: a frozen ImageNet backbone sees test photos best somewhat above its training size (the
#: FixRes effect, Touvron et al. 2019). Of 224, 256, 288, 320 and 384 px on the benchmark,
#: 320 gave the highest precision and share of clean photos kept on both draws, and recall
#: within 0.004 of the best (README, Performance 6), for twice the embedding time of 224.
DEFAULT_SIZE = 320
FOLDS = 5
#: How many nearest neighbours (in the whole folder, of any class) each image is compared
#: with: the mean distance to them is its outlier score, and their classes vote in its
#: evidence. A round value, set with the first review and not tuned (README, review); few
#: beside a class of a crawl (hundreds), so that the vote is the image's closest look-alikes'.
#: Training's unknown detector counts another thing (calibration.KTH_NEIGHBOUR = 20): one
#: distance, to the 20th nearest of up to 2,000 training images.
NEIGHBOURHOOD_SIZE = 10
PRINCIPAL_COMPONENTS = 128
#: review.html shows every suspect but at most this many fine images per class, so that a
#: crawl of 20,000 images still gives a page a browser opens (the gallery shows them all).
HTML_FINE_PER_CLASS = 300


def review(source: str | os.PathLike = "datasets", *, reference: str | os.PathLike | None = None,
           backbone: str = DEFAULT_BACKBONE, weights: str = "imagenet", size: int = DEFAULT_SIZE,
           checks: images.Checks = images.Checks(), threshold: int = dedupe.DEFAULT_THRESHOLD,
           cache_dir: str | os.PathLike | None = None, folds: int = FOLDS, seed: int = 0,
           workers: int | None = None, write: bool = True, progress: bool = False) -> Review:
    """Judge every image `pack` would consider in SOURCE; write review.json and review.html.

    `reference` is a folder of class folders of what SOURCE's classes are not (`sonic/`
    beside `hedgehog/`): they are judged alongside, so that a group of such intruders in a
    class, which would look like part of it, is called off-topic with the reference class
    suggested. Nothing of `reference` is written or packed.

    Raises :class:`ToolkitError` (nothing written) for a SOURCE that is missing, holds one
    class, or has a class with fewer than 2 usable images, for a reference inside SOURCE
    (or holding it) or naming a class as SOURCE does, and for weights that cannot be loaded.
    """
    from ..models.embedder import embed  # Keras loads here, not when the gallery imports this

    lock = holding(Path(source) / REVIEW_FILE, f"the review of {source}",
                   read_only="copy SOURCE, or call review(write=False)") if write else \
        contextlib.nullcontext()
    with lock:  # two reviews of one folder would overwrite each other's verdicts
        clock = {"start": time.perf_counter()}
        class_names, found = find_usable(source, checks=checks, threshold=threshold,
                                         workers=workers, progress=progress)
        files = [f for f in found if not f.status]
        labels = [f.label for f in files]
        references: list[str] = []
        if reference is not None:
            check_reference(source, reference)
            references, found = find_usable(reference, checks=checks, threshold=threshold,
                                            workers=workers, progress=progress, min_classes=1)
            known = [f for f in found if not f.status]
            labels += [len(class_names) + f.label for f in known]
            files += known
        check_class_sizes(class_names + [f"{name} (of the reference)" for name in references],
                           labels)
        clock["find"] = time.perf_counter()
        vectors = embed(files, backbone=backbone, weights=weights, size=size, checks=checks,
                        cache_dir=cache_dir, seed=seed, workers=workers, progress=progress)
        clock["embed"] = time.perf_counter()
        judged = judge(vectors, np.array(labels, dtype=np.int64), class_names + references,
                       [f.name for f in files], folds=folds, seed=seed, references=len(references))
        files = files[:len(judged)]  # SOURCE's images come first
        verdicts = [replace(v, sha256=f.info.sha256) for v, f in zip(judged, files)]
        clock["judge"] = time.perf_counter()
        result = Review(str(source), class_names, verdicts, backbone, weights,
                        reference=None if reference is None else str(reference),
                        reference_classes=references)
        result.seconds = {"find": clock["find"] - clock["start"],
                          "embed": clock["embed"] - clock["find"],
                          "judge": clock["judge"] - clock["embed"]}
        if write:
            write_review(source, result)
            write_html(result, files, Path(source) / REVIEW_HTML, checks,
                       fine_per_class=HTML_FINE_PER_CLASS)
            result.seconds["write"] = time.perf_counter() - clock["judge"]
        result.seconds["total"] = time.perf_counter() - clock["start"]
        return result


def check_reference(source: str | os.PathLike, reference: str | os.PathLike) -> None:
    """Refuse a reference folder that `pack` would read as part of SOURCE (inside it, or
    holding it), or that names a class as SOURCE does."""
    inner, outer = Path(source).resolve(), Path(reference).resolve()
    if inner == outer or inner.is_relative_to(outer) or outer.is_relative_to(inner):
        raise ToolkitError(f"the reference {reference} and {source} must be separate folders, "
                           "neither inside the other: pack would read the reference as classes")
    names = {name for name, _ in class_folders(reference, min_classes=1)}
    clash = sorted(names & {name for name, _ in class_folders(source)})
    if clash:
        raise ToolkitError(f"{clash[0]} is a class of both {source} and the reference "
                           f"{reference}; the reference holds what the classes are not: "
                           "rename its folder")


def check_class_sizes(class_names: list[str], labels: list[int]) -> None:
    """Refuse a class of fewer than 2 images: one line that names it (review compares each
    image with the rest of its class)."""
    counts = np.bincount(np.array(labels, dtype=np.int64), minlength=len(class_names))
    if counts.min() < 2:
        thin = ", ".join(f"{n} ({c})" for n, c in zip(class_names, counts) if c < 2)
        raise ToolkitError(f"class {thin} has fewer than 2 usable images; review compares each "
                           "image with the rest of its class: add images or remove the folder")


# --------------------------------------------------------------------------- embeddings

def judge(vectors: np.ndarray, labels: np.ndarray, class_names: Sequence[str],
          files: Sequence[str], *, folds: int = FOLDS, seed: int = 0,
          references: int = 0) -> list[Verdict]:
    """Verdicts from embeddings: out-of-fold probabilities and nearest neighbours.

    The last `references` classes are reference classes: their images are evidence only
    (no verdict), and an image that looks like one of them is off-topic.
    """
    x = normalised(vectors)
    probabilities = out_of_fold_probabilities(x, labels, folds, seed)
    outlier, votes = neighbourhood(x, labels, len(class_names))
    evidence = (probabilities + votes) / 2
    own, other, suggested = own_and_other(evidence, labels)
    found = reasons(own, other, outlier)
    named = np.isin(found, [MISLABELED, AMBIGUOUS])  # with the class it looks like
    n_classes = len(class_names) - references
    found[named & (suggested >= n_classes)] = OFF_TOPIC  # it looks like what no class is
    verdicts = []
    for i in np.flatnonzero(labels < n_classes):
        reason = str(found[i])
        # one scale for sorting: how little evidence for its own class, or how far out it lies
        score = max(1.0 - float(own[i]),
                    float(1.0 - np.exp(-max(outlier[i], 0.0) / OFF_TOPIC_Z)))
        verdicts.append(Verdict(
            files[i], class_names[labels[i]], reason != FINE, reason, round(score, 4),
            class_names[suggested[i]] if named[i] else None,
            round(float(probabilities[i, labels[i]]), 4), round(float(outlier[i]), 3)))
    return verdicts


def own_and_other(evidence: np.ndarray, labels: np.ndarray
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per image: its own class's evidence, the strongest other class's, and that class."""
    others = np.where(np.eye(evidence.shape[1], dtype=bool)[labels], -1.0, evidence)
    return evidence[np.arange(len(labels)), labels], others.max(axis=1), others.argmax(axis=1)


def out_of_fold_probabilities(x: np.ndarray, labels: np.ndarray, folds: int = FOLDS,
                              seed: int = 0) -> np.ndarray:
    """Class probabilities of every image from a logistic regression that never saw it.

    The embeddings are first projected on their 128 principal components (no labels are
    used, so nothing leaks between folds): as good on the benchmark, four times faster.
    """
    from sklearn.decomposition import PCA
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_predict

    components = min(PRINCIPAL_COMPONENTS, *x.shape)
    reduced = PCA(components, random_state=seed).fit_transform(x)
    # A class with fewer images than folds is in fewer test folds, but in every training
    # set (it has 2 or more): a small class does not shrink every other class's training set.
    n_splits = int(min(folds, np.bincount(labels).max()))
    model = LogisticRegression(C=1.0, max_iter=2000)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The least populated class",
                                category=UserWarning)
        return cross_val_predict(model, reduced, labels, method="predict_proba",
                                 cv=StratifiedKFold(n_splits, shuffle=True, random_state=seed))


def neighbourhood(x: np.ndarray, labels: np.ndarray, n_classes: int,
                  neighbours: int = NEIGHBOURHOOD_SIZE) -> tuple[np.ndarray, np.ndarray]:
    """Per image: the robust z-score of its mean cosine distance to its nearest neighbours
    (of any class; high for an image close to nothing else in the folder), and the share
    of those neighbours in each class."""
    from sklearn.neighbors import NearestNeighbors

    k = min(neighbours, len(x) - 1)
    distances, index = NearestNeighbors(n_neighbors=k + 1, metric="cosine").fit(x).kneighbors(x)
    spread = distances[:, 1:].mean(axis=1)  # the first neighbour is the image itself
    median = np.median(spread)
    mad = np.median(np.abs(spread - median)) * 1.4826 or 1e-9
    votes = np.stack([(labels[index[:, 1:]] == c).mean(axis=1) for c in range(n_classes)], 1)
    return (spread - median) / mad, votes


def normalised(vectors: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (a zero row stays zero): what `judge` compares."""
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.where(norms == 0, 1.0, norms)
