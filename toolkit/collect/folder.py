"""A class folder of a crawl: its images on disk, kept consistent with its manifest and rejected log."""

from __future__ import annotations

import contextlib
import os
import threading
from pathlib import Path

from ..core import images
from ..core.files import atomic_path, is_abandoned, is_partial, refuse_link
from . import manifest
from .engines import Result


class ClassFolder:
    """A class's images under `root/<label>/` and its manifest `root/<label>.manifest.jsonl`.

    Images are named by content (`<sha256[:16]>.<ext>`), written atomically, and recorded
    in the manifest right after; :meth:`reconcile` repairs what a kill between the two left.
    URLs refused for good are logged in `root/<label>.rejected.jsonl` and never fetched again.
    """

    def __init__(self, root: Path, label: str):
        self.label = label
        self.dir = root / label
        self.manifest = manifest.manifest_path(root, label)
        self.rejected_log = manifest.rejected_path(root, label)
        self.reject_error: OSError | None = None  # the first failed write to rejected_log
        self._lock = threading.Lock()

    def reconcile(self, checks: images.Checks) -> list[dict]:
        """Make the manifest match the folder; return its entries (one per kept image).

        Drops entries whose file is gone, removes the partial files a killed write of
        this tool left, and records files that are in the folder but not in the manifest
        (added by hand, or kept just before a kill) as engine `local` when they are usable.
        """
        self.dir.mkdir(parents=True, exist_ok=True)
        for record in (self.manifest, self.rejected_log):  # appended to: refused up front
            refuse_link(record)
        entries, kept = self._scan(checks, remove_partials=True)
        if list(kept) != list(entries) or not self.manifest.exists():
            manifest.write(self.manifest, kept)
        return kept

    def entries(self, checks: images.Checks) -> list[dict]:
        """What :meth:`reconcile` would return, changing nothing (for another class)."""
        return self._scan(checks, remove_partials=False)[1] if self.dir.is_dir() else []

    def _scan(self, checks: images.Checks, remove_partials: bool) -> tuple[list[dict], list[dict]]:
        entries = {e["file"]: e for e in manifest.read_entries(self.manifest)}
        on_disk = {}
        for entry in os.scandir(self.dir):
            if is_partial(entry.name):
                if remove_partials and is_abandoned(entry.name):
                    with contextlib.suppress(OSError):
                        os.unlink(entry.path)
            elif entry.is_file() and not entry.name.startswith("."):
                on_disk[entry.name] = entry.stat().st_size
        kept = {name: e for name, e in entries.items()
                if name in on_disk and e.get("bytes") in (None, on_disk[name])}
        for name in sorted(set(on_disk) - set(kept)):
            try:
                data = images.read_file(self.dir / name, checks)
                info, _ = images.decode(data, checks)
            except images.Unusable:
                continue
            kept[name] = manifest.entry(name, info, len(data), None, engine="local", query=None,
                                        license=None)
        return list(entries.values()), list(kept.values())

    def refused_urls(self) -> set[str]:
        try:
            return manifest.refused_urls(self.rejected_log)
        except OSError as e:
            self.reject_error = e
            return set()

    def commit(self, data: bytes, info: images.ImageInfo, result: Result, engine: str,
               query: str, license: str) -> dict:
        """Write one image atomically, then its manifest line; undo the file on failure."""
        name = f"{info.sha256[:16]}.{info.extension}"
        path = self.dir / name
        with atomic_path(path) as tmp:
            tmp.write_bytes(data)
        entry = manifest.entry(name, info, len(data), result, engine=engine, query=query,
                               license=license)
        try:
            manifest.append(self.manifest, entry, self._lock)
        except BaseException:
            with contextlib.suppress(OSError):
                path.unlink()
            raise
        return entry

    def reject(self, url: str, reason: str, detail: str) -> None:
        """Remember a URL refused for good; a failed write is kept for a warning."""
        try:
            manifest.append(self.rejected_log, manifest.rejection(url, reason, detail), self._lock)
        except OSError as e:
            self.reject_error = self.reject_error or e
