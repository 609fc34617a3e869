"""Review a crawl: find off-topic and mislabeled images before they reach the archive.

Review judges exactly the images `pack` would consider (:func:`toolkit.data.archive.find_usable`:
the same "usable" and duplicate rules). For each it computes an embedding with a frozen
pretrained backbone, globally average-pooled, cached on disk per image; then

- out-of-fold class probabilities: a logistic regression on the embeddings, k-fold, so no
  image is judged by a model that saw it;
- an outlier score: how far the image is from its nearest neighbours in embedding space,
  against how far images usually are from theirs (a robust z-score);

and from these a verdict: `mislabeled` (with the class it most likely belongs to),
`off-topic` (close to no class), `ambiguous` (torn between its class and another), or
fine, with a score to sort by. It writes `SOURCE/review.json` and a self-contained
`SOURCE/review.html`; `toolkit review --serve` opens the gallery (:mod:`toolkit.gallery`)
where a person keeps, drops or moves images (:mod:`toolkit.decisions`).
"""

from __future__ import annotations

import base64
import collections
import hashlib
import html
import io
import json
import os
import time
import warnings
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from .. import __version__
from ..core import dedupe, images
from ..core.errors import ToolkitError
from ..core.files import atomic_path, write_json, write_text
from ..core.text import text_table, timestamp
from ..data.archive import InputFile, class_folders, find_usable
from ..training.features import cache_root, weights_fingerprint
from .decisions import REVIEW_FILE

DEFAULT_BACKBONE = "mobilenet_v2"
#: The side of the square review embeds. Larger than the 224 px the backbone was trained at:
#: training's random crops show objects larger than a centre crop at the same size does, so
#: a frozen ImageNet backbone sees test photos best somewhat above its training size (the
#: FixRes effect, Touvron et al. 2019). Of 224, 256, 288, 320 and 384 px on the benchmark,
#: 320 gave the highest precision and share of clean photos kept on both draws, and recall
#: within 0.004 of the best (README, Performance 6), for twice the embedding time of 224.
DEFAULT_SIZE = 320
FOLDS = 5
NEIGHBOURS = 10
PRINCIPAL_COMPONENTS = 128
EMBED_BATCH = 32

#: Verdicts, best first in the gallery's sort.
MISLABELED, OFF_TOPIC, AMBIGUOUS, FINE = "mislabeled", "off-topic", "ambiguous", "fine"
REASONS = {
    MISLABELED: "looks like another class",
    OFF_TOPIC: "close to no class",
    AMBIGUOUS: "between its class and another",
    FINE: "",
}

#: The rules that turn evidence into verdicts, chosen on the benchmark
#: (scripts/bench_review.py) among round values, and kept simple so that they carry to
#: other data. A class's evidence for an image is the mean of its out-of-fold probability
#: and its share of the image's nearest neighbours. Off-topic: the distance to its nearest
#: neighbours is this many robust standard deviations above the median...
OFF_TOPIC_Z = 1.75
#: ...mislabeled: another class has at least this evidence, and leads the image's own class
#: by at least the margin (an image torn between two classes is not called mislabeled)...
MISLABELED_EVIDENCE = 0.6
MISLABELED_MARGIN = 0.3
#: ...ambiguous: its own class has less than this.
AMBIGUOUS_EVIDENCE = 0.25

REVIEW_HTML = "review.html"
HTML_THUMBNAIL = 96
#: review.html shows every suspect but at most this many fine images per class, so that a
#: crawl of 20,000 images still gives a page a browser opens (the gallery shows them all).
HTML_FINE_PER_CLASS = 300


@dataclass
class Verdict:
    """What review thinks of one image."""

    file: str                # path relative to SOURCE
    label: str               # the class folder it is in
    suspect: bool
    reason: str              # mislabeled, off-topic, ambiguous or fine
    score: float             # 0..1, higher is more suspect: the gallery's sort
    suggested: str | None    # the class it most likely belongs to, if not its own
    probability: float       # out-of-fold probability of its own class
    outlier: float           # robust z-score of the distance to its nearest neighbours
    sha256: str = ""         # the content judged: pack tells an image changed since


@dataclass
class Review:
    """The verdicts on every usable image of SOURCE."""

    source: str
    class_names: list[str]
    verdicts: list[Verdict]
    backbone: str
    weights: str
    reference: str | None = None  # the folder of what the classes are not, if any
    reference_classes: list[str] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)

    def suspects(self) -> list[Verdict]:
        return sorted((v for v in self.verdicts if v.suspect), key=lambda v: -v.score)

    def table(self) -> str:
        """Per class: images judged and suspects by reason."""
        counts = {name: collections.Counter() for name in self.class_names}
        for v in self.verdicts:
            counts[v.label][v.reason] += 1
        reasons = [MISLABELED, OFF_TOPIC, AMBIGUOUS]

        def row(name: str, c: collections.Counter) -> list:
            return [name, sum(c.values()), sum(c.values()) - c[FINE], *(c[r] for r in reasons)]

        total = collections.Counter()
        for c in counts.values():
            total.update(c)
        return text_table(["class", "images", "suspects", *reasons],
                          [row(name, c) for name, c in counts.items()], total=row("total", total))

    def to_json(self) -> dict:
        return {"toolkit": __version__, "source": self.source, "class_names": self.class_names,
                "backbone": self.backbone, "weights": self.weights,
                "reference": self.reference, "reference_classes": self.reference_classes,
                "created": timestamp(),
                "seconds": {k: round(v, 2) for k, v in self.seconds.items()},
                "images": [asdict(v) for v in self.verdicts]}


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
    _check_class_sizes(class_names + [f"{name} (of the reference)" for name in references],
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
        write_json(Path(source) / REVIEW_FILE, result.to_json())
        write_html(result, files, Path(source) / REVIEW_HTML, checks)
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


def _check_class_sizes(class_names: list[str], labels: list[int]) -> None:
    counts = np.bincount(np.array(labels, dtype=np.int64), minlength=len(class_names))
    if counts.min() < 2:
        thin = ", ".join(f"{n} ({c})" for n, c in zip(class_names, counts) if c < 2)
        raise ToolkitError(f"class {thin} has fewer than 2 usable images; review compares each "
                           "image with the rest of its class: add images or remove the folder")


# --------------------------------------------------------------------------- embeddings

def embed(files: Sequence[InputFile], *, backbone: str = DEFAULT_BACKBONE,
          weights: str = "imagenet", size: int = DEFAULT_SIZE, checks: images.Checks = images.Checks(),
          cache_dir: str | os.PathLike | None = None, seed: int = 0, workers: int | None = None,
          progress: bool = False) -> np.ndarray:
    """Globally pooled backbone features of `files` (usable images, with their `info`),
    float32 (n, channels); only images the cache lacks are computed."""
    cache = EmbeddingCache(cache_root(cache_dir), backbone, weights, size, seed)
    known = cache.load()
    todo = [f for f in files if f.info.sha256 not in known]
    if todo:
        model = pooled_backbone(backbone, weights, size, seed)
        executor = ThreadPoolExecutor(max_workers=workers or os.cpu_count() or 1)

        def pixels(f: InputFile) -> np.ndarray:
            try:
                info, x = images.decode(images.read_file(f.path, checks), checks, size, "crop")
            except images.Unusable as e:
                raise ToolkitError(f"{f.name} changed during the review ({e}); run "
                                   "`toolkit review` again") from None
            if info.sha256 != f.info.sha256:  # never cache these pixels under the old content
                raise ToolkitError(f"{f.name} changed during the review; run `toolkit review` "
                                   "again")
            return x

        try:
            with tqdm(total=len(todo), desc=f"embed ({backbone})", unit="img",
                      disable=not progress) as bar:
                for start in range(0, len(todo), cache.SHARD):
                    shard = todo[start:start + cache.SHARD]
                    batches = [shard[i:i + EMBED_BATCH] for i in range(0, len(shard), EMBED_BATCH)]
                    # the pool decodes the next batch while the backbone runs on this one
                    pending = [executor.submit(pixels, f) for f in batches[0]]
                    out = []
                    for i in range(len(batches)):
                        x = np.stack([p.result() for p in pending])
                        if i + 1 < len(batches):
                            pending = [executor.submit(pixels, f) for f in batches[i + 1]]
                        padded = np.concatenate([x, np.repeat(x[-1:], EMBED_BATCH - len(x), 0)])
                        out.append(np.asarray(model.predict_on_batch(padded))[:len(x)])
                        bar.update(len(x))
                    vectors = np.concatenate(out).astype(np.float32)
                    cache.save([f.info.sha256 for f in shard], vectors)
                    known.update(zip((f.info.sha256 for f in shard), vectors))
        finally:
            executor.shutdown(wait=True, cancel_futures=True)
    return np.stack([known[f.info.sha256] for f in files]).astype(np.float32)


class EmbeddingCache:
    """Embeddings by image content (sha256), for one backbone, weights, input size.

    Stored as shards (`<hash>.npz`: `sha256` and `vectors`), each written atomically, so an
    interrupted review keeps every shard it finished.
    """

    SHARD = 256  # images per shard file

    def __init__(self, root: Path, backbone: str, weights: str, size: int, seed: int):
        self.key = {"backbone": backbone, "weights": weights_fingerprint(weights, seed),
                    "size": size, "fit": "crop", "pooling": "average", "toolkit": __version__}
        name = hashlib.sha256(json.dumps(self.key, sort_keys=True).encode()).hexdigest()[:24]
        self.folder = root / "embeddings" / name

    def load(self) -> dict[str, np.ndarray]:
        known: dict[str, np.ndarray] = {}
        for path in sorted(self.folder.glob("*.npz")) if self.folder.is_dir() else []:
            try:
                with np.load(path, allow_pickle=False) as shard:
                    known.update(zip(shard["sha256"].tolist(), shard["vectors"]))
            except (OSError, ValueError, KeyError):
                continue  # a damaged shard is computed again
        return known

    def save(self, shas: list[str], vectors: np.ndarray) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        if not (self.folder / "key.json").exists():  # what the folder's name stands for
            write_json(self.folder / "key.json", self.key)
        name = hashlib.sha256("".join(shas).encode()).hexdigest()[:24]
        with atomic_path(self.folder / f"{name}.npz") as tmp:
            np.savez(tmp, sha256=np.array(shas, dtype=str), vectors=vectors)


def pooled_backbone(backbone: str, weights: str, size: int, seed: int):
    """The model review embeds with: raw 0-255 RGB (size x size) -> the backbone's
    preprocessing -> frozen base -> global average pool. (Public for other views of the same
    images than `embed`'s centre crops, as scripts/bench_review.py compares.)"""
    import keras

    from ..models import Preprocess, backbone_spec, load_backbone

    keras.utils.set_random_seed(seed)  # only `--weights none` depends on it
    spec = backbone_spec(backbone)
    base = load_backbone(backbone, weights, (size, size, 3))
    base.trainable = False
    inputs = keras.Input((size, size, 3), name="image")
    features = base(Preprocess(spec.preprocess)(inputs), training=False)
    return keras.Model(inputs, keras.layers.GlobalAveragePooling2D()(features), name="embed")


# --------------------------------------------------------------------------- verdicts

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


def reasons(own: np.ndarray, other: np.ndarray, outlier: np.ndarray) -> np.ndarray:
    """The verdict rules: off-topic first, then mislabeled, then ambiguous, else fine."""
    return np.select([outlier >= OFF_TOPIC_Z,
                      (other >= MISLABELED_EVIDENCE) & (other - own >= MISLABELED_MARGIN),
                      own < AMBIGUOUS_EVIDENCE],
                     [OFF_TOPIC, MISLABELED, AMBIGUOUS], default=FINE)


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
                  neighbours: int = NEIGHBOURS) -> tuple[np.ndarray, np.ndarray]:
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


# --------------------------------------------------------------------------- review.html

def thumbnail(path: str | os.PathLike, side: int, checks: images.Checks = images.Checks()) -> bytes:
    """A square JPEG of the image as pack would crop it: what the model sees."""
    pixels = images.decode(images.read_file(path, checks), checks, side, "crop")[1]
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "JPEG", quality=80)
    return buffer.getvalue()


def write_html(result: Review, files: Sequence[InputFile], path: Path,
               checks: images.Checks = images.Checks()) -> None:
    """A page that needs nothing else: per class, suspects first, thumbnails inlined."""
    shown = {name: sorted((v for v in result.verdicts if v.label == name),
                          key=lambda v: (not v.suspect, -v.score, v.file))
             for name in result.class_names}
    for name, mine in shown.items():
        shown[name] = mine[:sum(v.suspect for v in mine) + HTML_FINE_PER_CLASS]
    on_page = {v.file for mine in shown.values() for v in mine}
    paths = {f.name: f.path for f in files if f.name in on_page}

    def inline(path: str) -> str:
        try:
            return "data:image/jpeg;base64," + base64.b64encode(
                thumbnail(path, HTML_THUMBNAIL, checks)).decode()
        except (images.Unusable, OSError):  # changed or deleted since it was judged
            return ""

    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as executor:
        inlined = dict(zip(paths, executor.map(inline, paths.values())))
    sections = []
    for name in result.class_names:
        mine, cards = shown[name], []
        for v in mine:
            if v.suggested and v.reason == OFF_TOPIC:  # like a class of the reference
                note = f"looks like {v.suggested}, a reference class"
            else:
                note = REASONS[v.reason] + (f": {v.suggested}?" if v.suggested else "")
            cards.append(
                f'<figure class="{"suspect" if v.suspect else "fine"}">'
                f'<img src="{inlined[v.file]}" alt="(no longer readable)">'
                f'<figcaption><b>{html.escape(v.reason)}</b> {v.score:.2f}<br>'
                f'{html.escape(note)}<br><small>{html.escape(v.file)}</small>'
                '</figcaption></figure>')
        n_images = sum(v.label == name for v in result.verdicts)
        n_suspects = sum(v.suspect for v in mine)
        more = (f'<p class="more">and {n_images - len(mine)} more fine images: '
                '<code>toolkit review --serve</code> shows every one</p>'
                if n_images > len(mine) else "")
        sections.append(f'<h2>{html.escape(name)} <small>{n_images} images, {n_suspects} '
                        f'suspects</small></h2><div class="grid">{"".join(cards)}</div>{more}')
    page = f"""<!doctype html><html lang="en"><head><meta charset="utf-8">
<title>review of {html.escape(result.source)}</title><style>
body{{font:14px system-ui,sans-serif;margin:1em 2em}}
.grid{{display:flex;flex-wrap:wrap;gap:8px}}
figure{{margin:0;width:{HTML_THUMBNAIL + 24}px;padding:4px;border:3px solid #ddd;border-radius:4px}}
figure.suspect{{border-color:#d33}} figcaption{{font-size:11px;overflow-wrap:anywhere}}
</style></head><body><h1>review of {html.escape(result.source)}</h1>
<p>{len(result.verdicts)} images, {len(result.suspects())} suspects ({html.escape(result.backbone)},
weights {html.escape(result.weights)}). Act on them with <code>toolkit review --serve</code>.</p>
{"".join(sections)}</body></html>
"""
    write_text(path, page)
