"""A run's pages for people: report.html and MODEL_CARD.md."""

from __future__ import annotations

import os

import numpy as np


def write_pages(folder: str | os.PathLike, archive, test_probabilities: np.ndarray) -> None:
    """Write report.html and MODEL_CARD.md into a finished run's folder."""
