"""How a local pack's processes use glibc's malloc, so that their memory follows what they hold
and not how many images went through them.

glibc's malloc gives threads arenas of their own, up to eight a core, keeps what is freed for
reuse, and hands memory back to the system only from the top of a heap. Beam's local runner
passes each step's output between gRPC threads, so blocks are freed far from where they were
made, and a pack's memory grew with the number of images beyond what it held: at 96,000 images
the runner's process held 137 MiB of live blocks in 254 MiB of anonymous memory (docs/scale.md,
"Where the memory goes"). So each process of a local pack has two arenas (`MALLOC_ARENA_MAX`,
glibc's documented setting: Beam starts its workers with this process's environment, and this
process sets its own limit with `mallopt`), and hands its free memory back once a second
(`malloc_trim`: a few milliseconds). Elsewhere than glibc (macOS, musl) nothing changes.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import threading
from collections.abc import Iterator

#: Arenas a process of a local pack may have: the main one and one for its threads.
ARENAS = 2
#: Seconds between two hand-backs of free memory.
TRIM_EVERY = 1.0
#: glibc's `mallopt` parameter for the arena limit (malloc.h).
M_ARENA_MAX = -8
ENVIRONMENT = "MALLOC_ARENA_MAX"
#: Set for the workers of a local pack: they hand free memory back too (:func:`trim_in_worker`).
TRIM_ENVIRONMENT = "TOOLKIT_MALLOC_TRIM"

_lock = threading.Lock()
_trimming = False  # whether a thread of this process hands free memory back


@contextlib.contextmanager
def returning_memory(arenas: int = ARENAS) -> Iterator[None]:
    """While the block runs, this process hands free memory back once a second, and the workers
    started from it get `arenas` arenas (unless the user's environment says otherwise) and do
    the same; so do this process's threads where glibc still lets it (it fixes the limit when
    it first needs one: a process that already made many threads' arenas keeps them)."""
    global _trimming
    libc = _glibc()
    with _lock:
        mine = libc is not None and not _trimming
        _trimming = True
    if not mine:
        yield
        return
    saved = {name: os.environ.get(name) for name in (ENVIRONMENT, TRIM_ENVIRONMENT)}
    if saved[ENVIRONMENT] is None:  # the user's own choice stands
        libc.mallopt(M_ARENA_MAX, arenas)
        os.environ[ENVIRONMENT] = str(arenas)
    os.environ[TRIM_ENVIRONMENT] = "1"
    stop = threading.Event()
    trimmer = threading.Thread(target=_trim, args=(libc, stop), name="malloc_trim", daemon=True)
    trimmer.start()
    try:
        yield
    finally:
        stop.set()
        trimmer.join()
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        with _lock:
            _trimming = False


def trim_in_worker() -> None:
    """In a worker process of a local pack (its steps call this when they are set up), hand free
    memory back once a second for the rest of the process's life; elsewhere, nothing."""
    global _trimming
    libc = _glibc()
    with _lock:
        if libc is None or _trimming or not os.environ.get(TRIM_ENVIRONMENT):
            return
        _trimming = True
    threading.Thread(target=_trim, args=(libc, threading.Event()), name="malloc_trim", daemon=True).start()


def _trim(libc: ctypes.CDLL, stop: threading.Event) -> None:
    while not stop.wait(TRIM_EVERY):
        libc.malloc_trim(0)


def _glibc() -> ctypes.CDLL | None:
    try:
        if not os.confstr("CS_GNU_LIBC_VERSION"):
            return None
        libc = ctypes.CDLL(None)
        libc.mallopt, libc.malloc_trim  # noqa: B018 (glibc's own)
    except (ValueError, OSError, AttributeError):
        return None
    return libc
