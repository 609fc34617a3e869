"""The noisy folder that scripts/bench_review.py judges: flower photos with mislabeled and
off-topic ones injected and recorded, and the recall and precision of the flags against them."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

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
