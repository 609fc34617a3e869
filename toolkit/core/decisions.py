"""What a person decided in `toolkit review`: keep, drop, or move an image to another class.

Decisions are data, never changes on disk: nothing is deleted or moved. They live in
`SOURCE/decisions.jsonl`, one JSON line per decision, each appended in one write and
fsynced before the call returns, so a crash or a closed tab loses nothing. The last
decision about a file wins; a last line cut short by a kill is skipped on reading.

`pack` honours them, and `crawl` neither counts a dropped image nor downloads its URL again.
This module is the one that writes and reads decisions.jsonl (on the ground floor, because
the crawl reads what the review wrote); review's verdicts are another file
(:mod:`toolkit.curate.verdicts`).
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

from .errors import ToolkitError
from .files import open_to_append
from .text import timestamp

DECISIONS_FILE = "decisions.jsonl"

KEEP, DROP, MOVE = "keep", "drop", "move"
ACTIONS = (KEEP, DROP, MOVE)

_write_lock = threading.Lock()  # the gallery's server handles requests on several threads


@dataclass(frozen=True)
class Decision:
    """One decision about one image (`file` is its path relative to SOURCE)."""

    file: str
    action: str
    label: str | None = None  # the class a `move` puts it in
    url: str | None = None    # where a crawl found it, so that a top-up never fetches it again
    time: str = ""


def read(source: str | os.PathLike) -> dict[str, Decision]:
    """The decision in force for each file: the last one written about it."""
    try:
        data = (Path(source) / DECISIONS_FILE).read_bytes()
    except OSError:
        return {}
    return parse(data)


def parse(data: bytes) -> dict[str, Decision]:
    """The decision in force for each file, from the bytes of a decisions.jsonl."""
    text = data.decode("utf-8", errors="replace")
    made: dict[str, Decision] = {}
    for line in text.split("\n"):  # not splitlines(): a name may hold U+2028
        decision = _parse(line)
        if decision is not None:
            made[decision.file] = decision
    return made


def append(source: str | os.PathLike, decisions: Iterable[Decision],
           url_of: Callable[[str], str | None] = lambda file: None) -> list[Decision]:
    """Record `decisions` at the end of SOURCE/decisions.jsonl; return them as written.

    All of them go in one write of whole lines, flushed and fsynced before returning; never
    through a link (a shared folder's decisions.jsonl could point at ~/.bashrc). `url_of(file)`
    gives the URL a crawl found a file at, for a decision that does not carry one.
    """
    source = Path(source)
    now = timestamp()
    written = []
    for d in decisions:
        if d.action not in ACTIONS:
            raise ToolkitError(f"decision {d.action!r}: choose from {', '.join(ACTIONS)}")
        if (d.action == MOVE) != bool(d.label):
            raise ToolkitError("a move needs the class to move to, and only a move has one")
        written.append(Decision(d.file, d.action, d.label if d.action == MOVE else None,
                                d.url or url_of(d.file), d.time or now))
    if not written:
        return []
    data = "".join(json.dumps(asdict(d), ensure_ascii=False) + "\n" for d in written).encode()
    path = source / DECISIONS_FILE
    with _write_lock:
        fd = open_to_append(path)
        try:
            size = os.fstat(fd).st_size
            if size and os.pread(fd, 1, size - 1) != b"\n":
                data = b"\n" + data  # end a line a kill cut short, so this one stands alone
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
    return written


def left_out(root: str | os.PathLike, label: str,
             made: dict[str, Decision] | None = None) -> set[str]:
    """Names of the files in `root/label/` that review dropped or moved to another class:
    a crawl top-up does not count them. `made`: root's decisions, when already read."""
    prefix = f"{label}/"
    return {d.file[len(prefix):] for d in (read(root) if made is None else made).values()
            if d.file.startswith(prefix) and (d.action == DROP
                                              or (d.action == MOVE and d.label != label))}


def dropped_urls(root: str | os.PathLike, made: dict[str, Decision] | None = None) -> set[str]:
    """URLs of every image review dropped: a crawl never downloads them again."""
    return {d.url for d in (read(root) if made is None else made).values()
            if d.action == DROP and d.url}


def _parse(line: str) -> Decision | None:
    try:
        record = json.loads(line)
        decision = Decision(str(record["file"]), str(record["action"]), record.get("label"),
                            record.get("url"), str(record.get("time", "")))
    except (ValueError, KeyError, TypeError, AttributeError):
        return None  # a line cut short by a kill, or not ours
    if decision.action not in ACTIONS or (decision.action == MOVE and not decision.label):
        return None
    if not all(value is None or _is_text(value) for value in (decision.label, decision.url)):
        return None  # a class or a URL that is no text (5, "\ud800"): not ours
    return decision


def _is_text(value: object) -> bool:
    """A str that UTF-8 writes (JSON's "\\ud800" is a str that it cannot)."""
    try:
        value.encode("utf-8")
    except (AttributeError, UnicodeEncodeError):  # not a str (5, a list), or a lone surrogate
        return False
    return isinstance(value, str)
