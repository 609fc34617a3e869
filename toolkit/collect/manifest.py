"""The crawl's two record files beside each class folder: their names, how they are written and read.

- `<root>/<class>.manifest.jsonl`: one JSON line per image kept in `<root>/<class>/`, with where
  it came from (url, engine, query, license, page, title), its identity (sha256, phash as 16
  hex digits) and size (width, height, bytes), and when (time). Rewritten whole by a reconcile,
  otherwise appended one whole line at a time.
- `<root>/<class>.rejected.jsonl`: one JSON line per URL refused for good (url, reason,
  detail, time): the crawl never fetches it again.

A line cut short by a kill is skipped on reading; an entry without a file name, a hash or a
size is not an entry. Everyone who reads these files (review, report pages) calls this module.
"""

from __future__ import annotations

import collections
import contextlib
import json
import os
from pathlib import Path
from urllib.parse import urlsplit

from ..core import dedupe, images
from ..core.files import open_to_append, write_text
from ..core.text import timestamp
from .engines import Result

MANIFEST_SUFFIX = ".manifest.jsonl"
REJECTED_SUFFIX = ".rejected.jsonl"


def manifest_path(root: str | os.PathLike, label: str) -> Path:
    """Where the images kept in `root/<label>/` are recorded."""
    return Path(root) / manifest_name(label)


def manifest_name(label: str) -> str:
    """The name of class `label`'s manifest, beside its folder."""
    return f"{label}{MANIFEST_SUFFIX}"


def rejected_path(root: str | os.PathLike, label: str) -> Path:
    """Where the URLs refused for good for class `label` are recorded."""
    return Path(root) / f"{label}{REJECTED_SUFFIX}"


# --------------------------------------------------------------------------- records

def entry(name: str, info: images.ImageInfo, size: int, result: Result | None, engine: str,
          query: str | None, license: str | None) -> dict:
    """The manifest record of one kept image (`result` is None for a file found on disk)."""
    return {"file": name, "url": result and result.url, "engine": engine, "query": query,
            "license": license, "page": result and result.page, "title": result and result.title,
            "sha256": info.sha256, "phash": f"{info.phash:016x}", "width": info.width,
            "height": info.height, "bytes": size, "time": timestamp()}


def rejection(url: str, reason: str, detail: str) -> dict:
    """The record of a URL refused for good."""
    return {"url": url, "reason": reason, "detail": detail, "time": timestamp()}


def is_entry(e: dict) -> bool:
    """True for a manifest record that names a file, its hashes and a positive size."""
    try:
        return (isinstance(e["file"], str) and isinstance(e["sha256"], str)
                and int(e["phash"], 16) >= 0 and all(isinstance(e[side], int) and e[side] > 0
                                                     for side in ("width", "height")))
    except (KeyError, TypeError, ValueError):
        return False


# --------------------------------------------------------------------------- reading

def read_jsonl(path: Path) -> list[dict]:
    """Records of a JSON-lines file; a line cut short by a kill is skipped."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return []
    return parse_jsonl(text)


def parse_jsonl(text: str) -> list[dict]:
    """Records of a JSON-lines file's text; a line cut short by a kill is skipped."""
    records = []
    for line in text.split("\n"):  # not splitlines(): a title may hold U+2028 or \x85
        with contextlib.suppress(ValueError):
            record = json.loads(line)
            if isinstance(record, dict):
                records.append(record)
    return records


def read_entries(path: Path) -> list[dict]:
    """The valid entries of a manifest, in file order."""
    return [e for e in read_jsonl(path) if is_entry(e)]


def file_urls(root: str | os.PathLike, label: str) -> dict[str, str]:
    """The URL each file of `root/<label>/` was downloaded from, where the manifest says;
    {} if it cannot be read."""
    try:
        records = read_jsonl(manifest_path(root, label))
    except OSError:
        return {}
    return {str(e["file"]): e["url"] for e in records
            if isinstance(e.get("url"), str) and "file" in e}


def refused_urls(path: Path) -> set[str]:
    """The URLs a rejected log lists; raises OSError if it exists but cannot be read."""
    return {e["url"] for e in read_jsonl(path) if isinstance(e.get("url"), str)}


# --------------------------------------------------------------------------- writing

def _line(record: dict) -> str:
    return json.dumps(record, ensure_ascii=False) + "\n"


def write(path: Path, records: list[dict]) -> None:
    """Replace the file with `records`, atomically."""
    write_text(path, "".join(_line(r) for r in records))


def append(path: Path, record: dict, lock: contextlib.AbstractContextManager) -> None:
    """Append one line whole; sync it to disk outside `lock` (held by the threads that share
    the file), so that their syncs overlap (the file system commits them together)."""
    line = _line(record).encode("utf-8")
    fd = open_to_append(path)  # never through a link: the line would land in its target
    try:
        with lock:
            os.write(fd, line)
        os.fsync(fd)
    finally:
        os.close(fd)


# --------------------------------------------------------------------------- what the entries add up to

def top_hosts(entries: list[dict], n: int = 3) -> list[tuple[str, int]]:
    """The hosts most of a class's images come from (their page's host, else the image's)."""
    hosts = collections.Counter(urlsplit(e.get("page") or e.get("url") or "").hostname
                                for e in entries)
    hosts.pop(None, None)
    return hosts.most_common(n)


def usable_counts(entries: dict[str, list[dict]], checks: images.Checks, threshold: int
                  ) -> dict[str, int]:
    """How many usable images each class already has: the kept entries that pack would keep
    (big enough, not a bomb, no duplicate within or across classes). The one place a crawl
    decides how far a class is from full."""
    labels = list(entries)
    flat = _packable(entries, checks)
    candidates = [dedupe.Candidate(labels.index(label), e["sha256"], int(e["phash"], 16),
                                   e["width"] * e["height"], e["file"]) for label, e in flat]
    dropped = dedupe.find_duplicates(candidates, threshold)
    usable = collections.Counter(label for i, (label, _) in enumerate(flat) if i not in dropped)
    return {label: usable[label] for label in labels}


def hash_index(entries: dict[str, list[dict]], checks: images.Checks, threshold: int
               ) -> dedupe.HashIndex:
    """Every image pack would see, so that a download duplicating one is refused."""
    index = dedupe.HashIndex(threshold)
    for label, e in _packable(entries, checks):
        index.add(e["sha256"], int(e["phash"], 16), label)
    return index


def _packable(entries: dict[str, list[dict]], checks: images.Checks) -> list[tuple[str, dict]]:
    return [(label, e) for label, kept in entries.items() for e in kept
            if images.size_problem(e["width"], e["height"], checks) is None]
