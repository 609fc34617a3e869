"""Probabilities that mean what they say, and an answer for "none of these".

Both are fitted at the end of training on the validation split only, and stored with the
model (`calibration.json` and `calibration.npz` in the run folder, copied into an export):

- temperature scaling (Guo et al. 2017): one number T that divides the log-probabilities
  before the softmax, chosen to minimise the validation log-loss; it changes confidences,
  never the predicted class;
- the unknown detector: an image is `unknown` when its embedding is far from the training
  images' (the cosine distance to its k-th nearest training embedding, Sun et al. 2022).
  The threshold is a quantile of the validation images' distances, so about 2% of
  in-class images are rejected. (The calibrated top probability is not used: off-topic
  photos often get a confident class, so a threshold on it mostly rejects in-class images.)
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..core.errors import ToolkitError
from ..core.files import atomic_path, write_json
from ..reports.metrics import CalibrationSummary

#: k of the k-th nearest training embedding, whose distance is the unknown score (it was
#: 5 before): 20 was chosen once, with the 98% quantile, on scripts/bench_unknown.py (README,
#: unknown). Review's 10 (reviewer.NEIGHBOURHOOD_SIZE) counts another thing: the neighbours
#: whose mean distance and classes it weighs.
KTH_NEIGHBOUR = 20
REFERENCE_ROWS = 2000      # training embeddings kept (seeded sample) for the distances
DISTANCE_QUANTILE = 0.98   # of validation distances: ~2% of in-class images rejected
ECE_BINS = 15
DISTANCE_ROWS = 1024       # embeddings whose distances are computed together
FILES = ("calibration.json", "calibration.npz")


@dataclass
class Calibration:
    """A temperature and the unknown detector's threshold (None: never unknown)."""

    temperature: float = 1.0
    distance_threshold: float | None = None
    neighbours: int = KTH_NEIGHBOUR
    reference: np.ndarray | None = field(default=None, repr=False)  # unit rows, float16
    # the reference as float32 columns, made once for the array it was made from (a split's
    # distances are asked for a batch at a time)
    _columns: tuple = field(default=(None, None), init=False, repr=False, compare=False)

    def probabilities(self, probabilities: np.ndarray) -> np.ndarray:
        """Calibrated probabilities: softmax(log p / T)."""
        return _softmax(np.log(np.clip(probabilities, 1e-12, 1.0)) / self.temperature)

    def distances(self, embeddings: np.ndarray) -> np.ndarray:
        """Cosine distance of each embedding to its k-th nearest training embedding, DISTANCE_ROWS
        embeddings at a time (a whole split's similarities to the reference would be 8 KB an image,
        three times over)."""
        if self.reference is None or not len(self.reference):
            return np.zeros(len(embeddings), dtype="float32")
        if self._columns[0] is not self.reference:
            self._columns = (self.reference, self.reference.astype("float32").T)
        reference = self._columns[1]
        k = min(self.neighbours, reference.shape[1])
        out = np.empty(len(embeddings), dtype="float32")
        for start in range(0, len(embeddings), DISTANCE_ROWS):
            similarity = _unit(embeddings[start:start + DISTANCE_ROWS]) @ reference
            out[start:start + DISTANCE_ROWS] = 1.0 - -np.partition(-similarity, k - 1, axis=1)[:, k - 1]
        return out

    def unknown(self, embeddings: np.ndarray) -> np.ndarray:
        """True where an image is unlike every class."""
        if self.distance_threshold is None:
            return np.zeros(len(embeddings), dtype=bool)
        return self.too_far(self.distances(embeddings))

    def too_far(self, distances: np.ndarray) -> np.ndarray:
        """True where a distance (of :meth:`distances`) makes its image unknown."""
        if self.distance_threshold is None:
            return np.zeros(len(distances), dtype=bool)
        return distances > self.distance_threshold

    def settings(self) -> dict:
        """What export.json and metrics.json record (no arrays)."""
        return {"temperature": self.temperature, "distance_threshold": self.distance_threshold,
                "neighbours": self.neighbours}

    def save(self, folder: str | os.PathLike) -> None:
        folder = Path(folder)
        write_json(folder / FILES[0], self.settings())
        if self.reference is not None:
            with atomic_path(folder / FILES[1]) as tmp:
                np.savez(tmp, reference=self.reference)

    @classmethod
    def load(cls, folder: str | os.PathLike) -> Calibration | None:
        """The calibration stored in a run or export folder, or None (an older run)."""
        folder = Path(folder)
        if not (folder / FILES[0]).exists():
            return None
        try:
            settings = json.loads((folder / FILES[0]).read_text())
            calibration = cls(**{k: settings[k] for k in ("temperature", "distance_threshold",
                                                          "neighbours")})
            if (folder / FILES[1]).exists():
                with np.load(folder / FILES[1], allow_pickle=False) as data:
                    calibration.reference = data["reference"]
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise ToolkitError(f"{folder / FILES[0]} is damaged ({e}); train the run again or "
                               "delete calibration.json to predict without calibration") from None
        return calibration


@dataclass
class Fitted:
    """What `fit` gives training: the calibration, and the numbers for metrics.json."""

    calibration: Calibration
    summary: CalibrationSummary
    test_probabilities: np.ndarray  # calibrated
    uncalibrated: np.ndarray        # the model's own test probabilities


def detector(train_embeddings: np.ndarray, n_classes: int, seed: int) -> Calibration:
    """An uncalibrated Calibration whose unknown detector has its reference (a seeded sample of
    the training embeddings) and its k, so that a split's distances can be taken batch by batch."""
    rows = reference_rows(len(train_embeddings), seed)
    # the k-th neighbour should lie within the image's own class, even for small classes
    return Calibration(neighbours=max(1, min(KTH_NEIGHBOUR, len(rows) // (4 * n_classes))),
                       reference=_unit(train_embeddings[rows]).astype("float16"))


def fit(calibration: Calibration, val_probabilities: np.ndarray | None, val_distances: np.ndarray | None,
        val_labels: np.ndarray | None, test_probabilities: np.ndarray, test_distances: np.ndarray,
        test_labels: np.ndarray) -> Fitted:
    """Fit the temperature and the threshold on validation data; measure on the test set. The
    distances are `calibration.distances` of each image's embedding, taken where it was computed.

    Without a validation split nothing is fitted (T = 1, never unknown).
    """
    if val_probabilities is not None and len(val_labels):
        calibration.temperature = fit_temperature(val_probabilities, val_labels)
        calibration.distance_threshold = float(np.quantile(val_distances, DISTANCE_QUANTILE))
    calibrated = calibration.probabilities(test_probabilities)
    summary: CalibrationSummary = {
        **calibration.settings(),
        "validation_images": 0 if val_labels is None else len(val_labels),
        "test_ece_before": expected_calibration_error(test_probabilities, test_labels),
        "test_ece_after": expected_calibration_error(calibrated, test_labels),
        "test_rejected_as_unknown": float(np.mean(calibration.too_far(test_distances)))
        if len(test_labels) else 0.0,
    }
    return Fitted(calibration, summary, calibrated, test_probabilities)


def reference_rows(n: int, seed: int) -> np.ndarray:
    """Which of n training rows the unknown detector keeps: a seeded sample, in order. A
    caller that embeds only these rows gets the same detector (of at most REFERENCE_ROWS
    rows, this keeps every one)."""
    return np.sort(np.random.default_rng(seed).permutation(n)[:REFERENCE_ROWS])


def fit_temperature(probabilities: np.ndarray, labels: np.ndarray) -> float:
    """The T in [0.05, 20] that minimises the log-loss of softmax(log p / T)."""
    from scipy.optimize import minimize_scalar

    logits = np.log(np.clip(probabilities.astype("float64"), 1e-12, 1.0))
    labels = np.asarray(labels, dtype=int)

    def loss(log_t: float) -> float:
        p = _softmax(logits / np.exp(log_t))
        return float(-np.mean(np.log(np.clip(p[np.arange(len(labels)), labels], 1e-12, 1.0))))

    best = minimize_scalar(loss, bounds=(np.log(0.05), np.log(20.0)), method="bounded")
    return round(float(np.exp(best.x)), 4)


def expected_calibration_error(probabilities: np.ndarray, labels: np.ndarray,
                               bins: int = ECE_BINS) -> float:
    """The gap between confidence and accuracy, averaged over equal-width confidence bins."""
    if not len(labels):
        return 0.0
    confidence = probabilities.max(axis=1)
    correct = probabilities.argmax(axis=1) == np.asarray(labels)
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(confidence, edges[1:-1], right=True), 0, bins - 1)
    error = 0.0
    for b in range(bins):
        members = which == b
        if members.any():
            error += members.mean() * abs(correct[members].mean() - confidence[members].mean())
    return round(float(error), 5)


def _softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return (e / e.sum(axis=1, keepdims=True)).astype("float32")


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype="float32").reshape(len(x), -1)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def calibrate(model, train_inputs, validation_inputs, validation_labels: np.ndarray | None,
              test_inputs, test_labels: np.ndarray, *, seed: int = 0) -> Fitted:
    """`fit` on a trained Keras model's outputs; inputs are batches of images or of cached
    frozen features (a Keras PyDataset or a tf.data stream), read one batch at a time: of a
    split, only each image's probabilities and distance are kept, never its embedding."""
    from ..models.serving import batch_outputs, with_embedding

    served = with_embedding(model)
    n_classes = served.output["probabilities"].shape[-1]
    calibration = Calibration()
    val_p = val_d = None
    if validation_inputs is not None and validation_labels is not None and len(validation_labels):
        reference = [e for _, e in batch_outputs(served, train_inputs)]  # the detector's rows only
        calibration = detector(np.concatenate(reference), n_classes, seed)
        val_p, val_d = _scores(batch_outputs(served, validation_inputs), calibration, n_classes)
    test_p, test_d = _scores(batch_outputs(served, test_inputs), calibration, n_classes)
    return fit(calibration, val_p, val_d, validation_labels, test_p, test_d, test_labels)


def _scores(outputs: Iterable[tuple[np.ndarray, np.ndarray]], calibration: Calibration,
            n_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """(probabilities, unknown distances) of a split from its batches' (probabilities, embeddings)."""
    probabilities, distances = [np.zeros((0, n_classes), "float32")], [np.zeros(0, "float32")]
    for p, embeddings in outputs:
        probabilities.append(p)
        distances.append(calibration.distances(embeddings))
    return np.concatenate(probabilities), np.concatenate(distances)
