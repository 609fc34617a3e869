"""SOURCE as the sharded pack reads it, a local folder or a URL: its class folders' files in pack's
order (by class, then by path) with the hidden ones marked, the crawl's manifests, and review's
decisions and verdicts.

At a URL (:mod:`toolkit.data.locations`) the local rules (:mod:`toolkit.core.sources`) hold on the
objects' names: a class folder is a first part that does not start with a dot, a folder below it
whose name does is not entered, and a file whose name does is hidden. An object store has no links,
and no empty folders (an empty class folder there is one that holds a `cat/` placeholder object).
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

from ..collect import manifest
from ..core import decisions
from ..core.sources import HIDDEN, check_class_count, class_folders, iter_inputs, missing_source, printable
from ..curate.verdicts import REVIEW_FILE, Judged, read_review, review_from
from . import locations


class Listed(NamedTuple):
    """A file of SOURCE as the listing records it."""

    label: int
    path: str      # where a worker reads it: a path or a URL
    name: str      # relative to SOURCE, printable
    status: str    # "" or why it is not considered (hidden, ...)
    in_class: str  # relative to its class folder, as the class's manifest names it


class LocalSource:
    """A folder on this machine (or one that every worker mounts at the same path)."""

    def __init__(self, root: str | os.PathLike):
        self.root = root

    def __str__(self) -> str:
        return str(self.root)

    def resolved(self) -> str:
        return str(Path(self.root).resolve())

    def class_names(self) -> list[str]:
        return [name for name, _ in class_folders(self.root)]

    def inputs(self) -> tuple[list[str], Iterator[Listed]]:
        class_names, files = iter_inputs(self.root)
        self._folders = [folder for _, folder in class_folders(self.root)]
        return class_names, (Listed(f.label, str(f.path), f.name, f.status,
                                    f.path.relative_to(self._folders[f.label]).as_posix()) for f in files)

    def manifest(self, label: int) -> list[dict]:
        """The crawl's entries for class `label` (after :meth:`inputs`)."""
        return manifest.read_entries(manifest.manifest_path(self.root, self._folders[label].name))

    def decisions(self) -> dict[str, decisions.Decision]:
        return decisions.read(self.root)

    def review(self, needed_for: str) -> Judged:
        return read_review(self.root, needed_for=needed_for)


class UrlSource:
    """A folder of objects at a URL, listed once (every name in memory: about 200 bytes a file)."""

    def __init__(self, url: str):
        self.url = url
        self._tree: dict[str, list[tuple[str, ...]]] | None = None
        self._empty = True

    def __str__(self) -> str:
        return self.url

    def resolved(self) -> str:
        return self.url

    def _classes(self) -> dict[str, list[tuple[str, ...]]]:
        """Each class folder's files as the parts of their names below it, in pack's order: a
        sorted walk, in which a folder comes where its name sorts among the files."""
        if self._tree is None:
            tree: dict[str, list[tuple[str, ...]]] = {}
            for name in locations.files_under(self.url):
                self._empty = False
                folder, *parts = name.split("/")
                if not parts or folder.startswith("."):  # a file of SOURCE itself, or a hidden folder
                    continue
                found = tree.setdefault(folder, [])
                if parts[-1] and not any(p.startswith(".") for p in parts[:-1]):  # "": a folder's placeholder
                    found.append(tuple(parts))
            self._tree = {folder: sorted(tree[folder]) for folder in sorted(tree)}
        return self._tree

    def class_names(self) -> list[str]:
        names = [printable(folder) for folder in self._classes()]
        if self._empty:
            raise missing_source(self.url)
        check_class_count(self.url, names)
        return names

    def inputs(self) -> tuple[list[str], Iterator[Listed]]:
        class_names = self.class_names()

        def files() -> Iterator[Listed]:
            for label, (folder, found) in enumerate(self._classes().items()):
                for parts in found:
                    in_class = "/".join(parts)
                    yield Listed(label, f"{self.url}/{folder}/{in_class}", printable(f"{folder}/{in_class}"),
                                 HIDDEN if parts[-1].startswith(".") else "", in_class)
        return class_names, files()

    def manifest(self, label: int) -> list[dict]:
        text = self._text(manifest.manifest_name(list(self._classes())[label]), errors="replace")
        return [e for e in manifest.parse_jsonl(text or "") if manifest.is_entry(e)]

    def decisions(self) -> dict[str, decisions.Decision]:
        data = locations.read_if_any(f"{self.url}/{decisions.DECISIONS_FILE}")
        return decisions.parse(data or b"")

    def review(self, needed_for: str) -> Judged:
        def read() -> str:
            text = self._text(REVIEW_FILE)
            if text is None:
                raise FileNotFoundError(REVIEW_FILE)
            return text
        return review_from(read, f"{self.url}/{REVIEW_FILE}", self.url, needed_for)

    def _text(self, name: str, errors: str = "strict") -> str | None:
        """A file's text as a local one reads (UTF-8, universal newlines); None if missing."""
        data = locations.read_if_any(f"{self.url}/{name}")
        if data is None:
            return None
        return io.TextIOWrapper(io.BytesIO(data), encoding="utf-8", errors=errors).read()


def source_at(where: str | os.PathLike) -> LocalSource | UrlSource:
    """SOURCE, as checked by :func:`toolkit.data.locations.checked`."""
    return UrlSource(where) if locations.is_url(where) else LocalSource(where)
