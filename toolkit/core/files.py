"""Atomic file output: every file the toolkit writes appears whole or not at all."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import secrets
import stat
import textwrap
from collections.abc import Iterable, Iterator
from pathlib import Path

from .errors import ToolkitError

UMASK = os.umask(0o022)  # the process's umask (reading it means setting it)
os.umask(UMASK)


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path beside `target`; rename it onto `target` on success.

    The temporary file lives in the same folder, so the final `os.replace` is atomic:
    a crash or Ctrl-C leaves the old `target` untouched and no partial file behind.
    `suffix` keeps the extension that some writers insist on (Keras wants `.keras`).
    """
    target = Path(target)
    suffix = target.suffix if suffix is None else suffix
    refuse_link(target)
    remove_partials(target)
    # the name is chosen before the file exists, so a Ctrl-C at any moment can remove it;
    # it carries the writer's process id, so that another writer can tell a live one's file
    # from a killed one's
    tmp_path = target.parent / f".{target.name}.{os.getpid()}-{secrets.token_hex(4)}.part{suffix}"
    _writing.add(tmp_path.name)
    try:
        os.close(os.open(tmp_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666 & ~UMASK))
        yield tmp_path
        _fsync_file(tmp_path)
        os.replace(tmp_path, target)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp_path.unlink()
        raise
    finally:
        _writing.discard(tmp_path.name)


#: The temporary files this process is writing now. A killed process's leftover can carry
#: this process's pid (a container's toolkit is pid 1 at every run), so a file with our pid
#: that is not one of these is abandoned too.
_writing: set[str] = set()


#: Why :func:`refuse_link` refuses a file the toolkit would write, and the fix.
NO_WRITING_THROUGH_LINKS = ("the toolkit never writes through one: replace it with a regular file "
                            "(or remove it) and run again")


def refuse_link(target: Path, why: str = NO_WRITING_THROUGH_LINKS) -> None:
    """A file the toolkit writes is never a symbolic link: in a shared folder, a link named
    `decisions.jsonl` could point at `~/.bashrc`. The folders above it may be links (a dataset
    moved to a bigger disk); the file itself may not. `why`: the reason and the fix, for a file
    refused for another reason (a dataset's shard that links elsewhere)."""
    if target.is_symlink():
        raise ToolkitError(f"{target} is a symbolic link, and {why}")


def open_to_append(target: str | os.PathLike) -> int:
    """A file descriptor appending to `target`, created if missing; never through a symbolic
    link (`O_NOFOLLOW`) and only to a regular file (checked on the open file, so nothing can be
    swapped in between the check and the write). The caller closes it."""
    target = Path(target)
    try:
        fd = os.open(target, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
                     | os.O_NONBLOCK, 0o666 & ~UMASK)
    except OSError as e:
        if e.errno == errno.ELOOP:
            refuse_link(target)
        raise
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise ToolkitError(f"{target} is not a regular file, and the toolkit appends only to one: "
                           "move it away and run again")
    return fd


def read_own_file(path: str | os.PathLike, limit: int = 64 * 2**20) -> bytes | None:
    """The bytes of a file the toolkit wrote into a folder it owns (a run's plots), or None
    where it is missing, a symbolic link, not a regular file, or larger than `limit`: a page
    inlines what it reads, and a link planted in a shared folder must not bring a file from
    elsewhere on the disk into it."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError:
        return None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or info.st_size > limit:
            return None
        with os.fdopen(os.dup(fd), "rb") as f:
            return f.read(limit)
    finally:
        os.close(fd)


def write_bytes(target: str | os.PathLike, data: bytes) -> None:
    """Write `data` to `target` atomically."""
    with atomic_path(target) as tmp:
        tmp.write_bytes(data)


def write_text(target: str | os.PathLike, text: str) -> None:
    """Write `text` (UTF-8) to `target` atomically."""
    write_bytes(target, text.encode("utf-8"))


def write_json(target: str | os.PathLike, obj: object) -> None:
    """Write `obj` as indented JSON to `target` atomically."""
    write_text(target, _dumps(obj) + "\n")


def write_json_streamed(target: str | os.PathLike, head: dict, key: str, items: Iterable) -> None:
    """Write `head` with the list `items` under its last key `key`, byte for byte as
    :func:`write_json` writes the whole dict, atomically; `items` are written as they come, so
    that a list of any length never sits in memory."""
    opening = _dumps({**{k: v for k, v in head.items() if k != key}, key: []})
    with atomic_path(target) as tmp, open(tmp, "w", encoding="utf-8", newline="\n") as f:
        f.write(opening.removesuffix("[]\n}"))
        first = True
        for item in items:
            f.write(("[\n" if first else ",\n") + textwrap.indent(_dumps(item), "    "))
            first = False
        f.write("[]\n}\n" if first else "\n  ]\n}\n")


def _dumps(obj: object) -> str:
    return json.dumps(obj, indent=2, ensure_ascii=False, default=str)


def remove_partials(target: Path) -> None:
    """Delete what a killed writer of `target` left (a SIGKILL cannot be cleaned up after);
    a live writer's file, in this process or another, is its own to rename or remove."""
    with contextlib.suppress(OSError):
        for leftover in target.parent.glob(f".{glob_escape(target.name)}.*.part*"):
            if is_abandoned(leftover.name):
                with contextlib.suppress(OSError):
                    leftover.unlink()


def glob_escape(name: str) -> str:
    return "".join(f"[{c}]" if c in "*?[" else c for c in name)


def is_partial(name: str) -> bool:
    """True for the temporary files :func:`atomic_path` writes
    (`.<name>.<writer's pid>-<8 hex digits>.part<suffix>`; older versions wrote no pid), and
    for nothing else a user may keep."""
    return _PARTIAL.fullmatch(name) is not None


def is_abandoned(name: str) -> bool:
    """True for a temporary file of :func:`atomic_path` whose writer is no longer running."""
    match = _PARTIAL.fullmatch(name)
    if match is None:
        return False
    if match["pid"] is None:
        return True
    if int(match["pid"]) == os.getpid():
        return name not in _writing
    try:
        os.kill(int(match["pid"]), 0)
    except ProcessLookupError:
        return True
    except (PermissionError, OverflowError):
        return False  # another user's live process, or not a pid we can ask about
    return False


_PARTIAL = re.compile(r"\..+\.(?:(?P<pid>[0-9]+)-)?[0-9a-f]{8}\.part(\.[^./]*)?", re.DOTALL)


def _fsync_file(path: Path) -> None:
    with contextlib.suppress(OSError), open(path, "rb+") as f:
        os.fsync(f.fileno())
