"""toolkit: from search queries to a trained, evaluated image classifier.

The library API, which the `toolkit` command is a thin layer over::

    from toolkit import crawl, review, pack, train, evaluate, predict, compare

    crawl(["hedgehog", "hamster", "poodle"], per_class=400)
    review("datasets").table()
    pack("datasets", "animal.npz")
    run = train("animal.npz", strategy="finetune")

TensorFlow is imported only when a training function is first used. (Modules are named
apart from the functions - `crawler`, `reviewer`, `training`, `inference`, `exporter` - so
that importing one never shadows the function of the same name.)
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_API = {
    "crawl": "toolkit.collect.crawler",
    "review": "toolkit.curate.reviewer",
    "review_dataset": "toolkit.data.review_shards",
    "pack": "toolkit.data.packer",
    "pack_shards": "toolkit.data.shard_pack",
    "load_archive": "toolkit.data.npz",
    "train": "toolkit.training.trainer",
    "compare": "toolkit.training.comparison",
    "evaluate": "toolkit.ship.inference",
    "predict": "toolkit.ship.inference",
    "export": "toolkit.ship.exporter",
    "ToolkitError": "toolkit.core.errors",
}

__all__ = [*_API, "__version__"]


def __getattr__(name: str):
    if name in _API:
        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(f"module 'toolkit' has no attribute {name!r}")
