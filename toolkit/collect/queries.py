"""Class labels and the search words for them, from the command line or a file of URLs, checked
before anything is fetched."""

from __future__ import annotations

import collections
import os
import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ..core.errors import ToolkitError
from ..core.names import class_name_problem


@dataclass(frozen=True)
class Query:
    """A class label (its folder name) and the words searched for it."""

    label: str
    keywords: str


def parse_query(text: str) -> Query:
    """`poodle` searches "poodle" into class poodle; `poodle="poodle dog"` names both."""
    label, sep, keywords = text.partition("=")
    label = label.strip()
    keywords = keywords.strip().strip("\"'").strip() if sep else label
    if not keywords:
        raise ToolkitError(f"query {text!r} has no search words; write LABEL=\"search words\"")
    return Query(check_label(label, keywords), keywords)


def check_label(label: str, keywords: str | None = None) -> str:
    """Return `label` (NFC) if it is a folder name safe on every OS, else raise."""
    label = unicodedata.normalize("NFC", label)
    problem = class_name_problem(label)
    if problem:
        example = keywords if keywords and keywords != label else "search words"
        raise ToolkitError(f"class label {label!r} {problem}; name the class with a plain "
                           f"word, e.g. myclass=\"{example}\"")
    return label


def check_labels(queries: Sequence[Query]) -> None:
    """Refuse an empty list and labels that would share a folder on some OS."""
    if not queries:
        raise ToolkitError("no query given; e.g. `toolkit crawl hedgehog hamster poodle`")
    seen: dict[str, str] = {}
    for q in queries:
        key = q.label.casefold()
        if key in seen:
            raise ToolkitError(f"class label {q.label!r} is given twice (as {seen[key]!r}); "
                               "each class needs its own label")
        seen[key] = q.label


def read_url_list(path: str | os.PathLike, queries: Sequence[Query]) -> dict[str, list[str]]:
    """Read a URL list: one URL per line, optionally after a label (`poodle https://...`).

    Unlabelled lines belong to the only query given. Returns {label: [url, ...]}.
    """
    try:
        lines = Path(path).read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError as e:
        raise ToolkitError(f"cannot read --urls {path}: {e.strerror}") from None
    by_label: dict[str, list[str]] = collections.defaultdict(list)
    for number, line in enumerate(lines, 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = re.split(r"[\s,]+", line, maxsplit=1)
        if len(parts) == 1 or "://" in parts[0]:  # a URL alone (commas are common inside URLs)
            if len(queries) != 1:
                raise ToolkitError(f"--urls {path} line {number} has no label; with "
                                   f"{len(queries) or 'no'} queries, write `LABEL URL` per line")
            by_label[queries[0].label].append(line)
        else:
            by_label[check_label(parts[0])].append(parts[1].strip())
    if not by_label:
        raise ToolkitError(f"--urls {path} lists no URLs")
    return dict(by_label)
