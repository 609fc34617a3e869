"""One writer at a time: a lock beside each thing the toolkit writes (a class folder, an archive,
a review, a run), held by a live process and released by the kernel when that process ends."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

from .errors import ToolkitError
from .files import UMASK, refuse_link


def lock_path(target: str | os.PathLike) -> Path:
    """The hidden file beside `target` that its writer locks: `.NAME.lock`."""
    target = Path(target)
    return target.parent / f".{target.name}.lock"


@contextlib.contextmanager
def holding(target: str | os.PathLike, what: str) -> Iterator[None]:
    """Hold the lock of `target` (described to the user as `what`) while the block runs.

    A second holder stops at once with one line that names the first one's pid: no silent
    wait. The lock is an advisory `flock`, so a holder that is killed gives it up with its
    last breath, and the next writer takes it over; the pid in the file is only for the
    message.
    """
    path = lock_path(target)
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o666 & ~UMASK)
    except OSError as e:
        if e.errno == errno.ELOOP:
            refuse_link(path)
        raise
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "unknown"
            raise ToolkitError(f"{what} is in use by another toolkit process (pid {holder}); wait "
                               "for it to finish, or stop it, then run again") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # closing the last descriptor releases the lock
