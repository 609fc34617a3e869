"""Where what a backbone computes is cached, and what names the backbone's weights in a cache key.

Training's frozen features and review's embeddings share the root folder, and both key
their files by :func:`weights_fingerprint`.
"""

from __future__ import annotations

import functools
import hashlib
import os
from pathlib import Path

from ..core.errors import OptionError


def cache_root(cache_dir: str | os.PathLike | None) -> Path:
    """Where frozen features (and review's embeddings) are cached: `cache_dir`,
    $TOOLKIT_CACHE_DIR or ~/.cache/toolkit."""
    return Path(cache_dir or os.environ.get("TOOLKIT_CACHE_DIR")
                or os.path.join(os.path.expanduser("~"), ".cache", "toolkit"))


def weights_fingerprint(weights: str, seed: int) -> str:
    """What identifies the weights: a file by its content, random weights by their seed."""
    if weights == "none":
        return f"none:seed{seed}"
    if weights == "imagenet":
        return "imagenet"
    try:
        st = os.stat(weights)
        return "file:" + _content_hash(os.path.realpath(weights), st.st_size, st.st_mtime_ns)
    except OSError as e:
        raise OptionError("weights", weights, f"{e.strerror}; give imagenet, none or the path "
                          "of a .weights.h5 file") from None


@functools.lru_cache(maxsize=16)
def _content_hash(path: str, size: int, mtime_ns: int) -> str:
    """sha256 of a file, read once per (path, size, mtime) however many keys ask for it."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
