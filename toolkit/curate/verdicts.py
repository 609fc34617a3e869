"""The review.json file: a review's verdicts on every image, written, read and checked here only.

`toolkit review` writes it (:func:`write_review`); the gallery shows it and `pack --drop-suspects`
leaves its suspects out (:func:`read_review`). A person's decisions about these images are another
file with another owner (:mod:`toolkit.core.decisions`).
"""

from __future__ import annotations

import collections
import functools
import json
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .. import __version__
from ..core.errors import ToolkitError
from ..core.files import write_json
from ..core.text import text_table, timestamp
from .rules import AMBIGUOUS, FINE, MISLABELED, OFF_TOPIC

REVIEW_FILE = "review.json"


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
        suspect_reasons = [MISLABELED, OFF_TOPIC, AMBIGUOUS]

        def row(name: str, c: collections.Counter) -> list:
            n = sum(c.values())
            return [name, n, n - c[FINE], *(c[r] for r in suspect_reasons)]

        total = collections.Counter()
        for c in counts.values():
            total.update(c)
        return text_table(["class", "images", "suspects", *suspect_reasons],
                          [row(name, c) for name, c in counts.items()], total=row("total", total))

    def to_json(self) -> dict:
        return {"toolkit": __version__, "source": self.source, "class_names": self.class_names,
                "backbone": self.backbone, "weights": self.weights,
                "reference": self.reference, "reference_classes": self.reference_classes,
                "created": timestamp(),
                "seconds": {k: round(v, 2) for k, v in self.seconds.items()},
                "images": [asdict(v) for v in self.verdicts]}


def write_review(source: str | os.PathLike, review: Review) -> None:
    """SOURCE/review.json, atomically."""
    write_json(Path(source) / REVIEW_FILE, review.to_json())


@dataclass(frozen=True)
class Judged:
    """What SOURCE/review.json says: the classes and each image's verdict as written
    (`file`, `label`, `suspect`, `reason`, ...), by file."""

    class_names: list[str]
    entries: dict[str, dict]

    @functools.cached_property
    def suspects(self) -> set[str]:
        return {file for file, e in self.entries.items() if e.get("suspect")}

    def unjudged(self, file: str, sha256: str) -> bool:
        """True for an image the review did not see as it is now: added or changed since
        (an older review recorded no content, "": it counts as seen)."""
        entry = self.entries.get(file)
        if entry is None:
            return True
        seen = str(entry.get("sha256") or "")
        return seen != "" and seen != sha256


def read_review(source: str | os.PathLike, *, needed_for: str = "") -> Judged:
    """SOURCE/review.json, checked; a missing or damaged file is a ToolkitError that says
    to run the review (`needed_for`: the option that needs the file, for that message)."""
    path = Path(source) / REVIEW_FILE
    return review_from(lambda: path.read_text(encoding="utf-8"), str(path), str(source), needed_for)


def review_from(read: Callable[[], str], path: str, source: str, needed_for: str = "") -> Judged:
    """:func:`read_review` of a review.json that `read()` returns the text of (FileNotFoundError:
    there is none) and that the messages call `path`: SOURCE may be a URL."""
    try:
        state = json.loads(read())
        class_names = [str(c) for c in state["class_names"]]
        entries = {str(e["file"]): e for e in state["images"]}
    except FileNotFoundError:
        missing = f"{needed_for} needs {path}" if needed_for else f"{path} is missing"
        raise ToolkitError(f"{missing}: run `toolkit review {source}` first") from None
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise ToolkitError(f"{path} is damaged ({type(e).__name__}); run `toolkit review "
                           f"{source}` again") from None
    return Judged(class_names, entries)


def suspects(source: str | os.PathLike) -> set[str]:
    """Files that SOURCE/review.json marks as suspects."""
    return read_review(source).suspects
