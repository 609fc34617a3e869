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


#: What a lock that cannot be made says to do, unless its caller knows better.
READ_ONLY_FIX = "copy it somewhere you can write"


@contextlib.contextmanager
def holding(target: str | os.PathLike, what: str, *, read_only: str = READ_ONLY_FIX) -> Iterator[None]:
    """Hold the lock of `target` (described to the user as `what`) while the block runs.
    A folder where the lock cannot be made (read-only, or not yours) is one line that ends
    with `read_only`, the fix.

    A second holder stops at once with one line that names the first one's pid: no silent
    wait. The lock is an advisory `flock`, so a holder that is killed gives it up with its
    last breath, and the next writer takes it over; the pid in the file is only for the
    message. The lock file is removed on release; a writer that locked a file removed
    meanwhile (its inode no longer at the path) tries again on the new one.
    """
    path = lock_path(target)
    while True:
        fd = _open(path, what, read_only)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "unknown"
            os.close(fd)
            raise ToolkitError(f"{what} is in use by another toolkit process (pid {holder}); wait "
                               "for it to finish, or stop it, then run again") from None
        if _still_at(fd, path):
            break
        os.close(fd)  # its holder removed it as we locked it: lock the one at the path now
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        with contextlib.suppress(OSError):
            os.unlink(path)  # while still held: no one can lock this inode at this path after
        os.close(fd)  # closing the last descriptor releases the lock


def _open(path: Path, what: str, read_only: str) -> int:
    try:
        return os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o666 & ~UMASK)
    except OSError as e:
        if e.errno == errno.ELOOP:
            refuse_link(path)
        if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            raise ToolkitError(f"{what} cannot be written: {path.parent} is read-only ({e.strerror}); "
                               f"{read_only}") from None
        raise


def _still_at(fd: int, path: Path) -> bool:
    try:
        here = os.stat(path, follow_symlinks=False)
    except FileNotFoundError:
        return False
    mine = os.fstat(fd)
    return (here.st_dev, here.st_ino) == (mine.st_dev, mine.st_ino)
