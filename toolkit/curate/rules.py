"""The verdict rules of review: which evidence makes an image mislabeled, off-topic, ambiguous or fine."""

from __future__ import annotations

import numpy as np

#: Verdicts, best first in the gallery's sort (an image's `reason` in review.json).
MISLABELED, OFF_TOPIC, AMBIGUOUS, FINE = "mislabeled", "off-topic", "ambiguous", "fine"

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


def reasons(own: np.ndarray, other: np.ndarray, outlier: np.ndarray) -> np.ndarray:
    """The verdict rules: off-topic first, then mislabeled, then ambiguous, else fine."""
    return np.select([outlier >= OFF_TOPIC_Z,
                      (other >= MISLABELED_EVIDENCE) & (other - own >= MISLABELED_MARGIN),
                      own < AMBIGUOUS_EVIDENCE],
                     [OFF_TOPIC, MISLABELED, AMBIGUOUS], default=FINE)
