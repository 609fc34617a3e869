"""How a local pack's processes use glibc's malloc, so that their memory follows what they hold
and not how many images went through them.

glibc's malloc gives threads arenas of their own, up to eight a core, keeps what is freed for
reuse, and hands memory back to the system only from the top of a heap. Beam's local runner
passes each step's output between gRPC threads, so blocks are freed far from where they were
made, and a pack's memory grew with the number of images beyond what it held: at 96,000 images
the runner's process held 137 MiB of live blocks at its peak, where its anonymous memory peaked
at 254 MiB (docs/scale.md, "Where the memory goes"). So every process of a local pack has two
arenas (`MALLOC_ARENA_MAX`, glibc's documented setting: Beam starts its workers with this
process's environment, and this process sets its own limit with `mallopt`). A pack whose steps
run in its own process beside the runner also hands its free memory back once a second
(`malloc_trim`: a few milliseconds); with worker processes, trimming measured no lower peak (one
run each). Elsewhere than glibc (macOS, musl) nothing changes.
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

_lock = threading.Lock()
_packs = 0  # local packs running in this process: the first sets things up (and decides whether
# this process trims), the last undoes them
_saved: str | None = None
_stop = threading.Event()
_trimmer: threading.Thread | None = None


@contextlib.contextmanager
def returning_memory(trim: bool, arenas: int = ARENAS) -> Iterator[None]:
    """While the block runs, the workers started from this process get `arenas` arenas (unless
    the user's environment says otherwise) and, if `trim`, this process hands its free memory
    back once a second. This process's threads get `arenas` arenas too where glibc still lets
    it, for the rest of its life: glibc fixes its limit the first time it needs one (a process
    that already made many threads' arenas keeps them, and nothing undoes a limit once set). Of
    packs running at once in one process, the first decides whether it trims."""
    libc = _glibc()
    if libc is None:
        yield
        return
    _enter(libc, trim, arenas)
    try:
        yield
    finally:
        _leave()


def _enter(libc: ctypes.CDLL, trim: bool, arenas: int) -> None:
    global _packs, _saved, _trimmer
    with _lock:
        _packs += 1
        if _packs > 1:
            return
        _saved = os.environ.get(ENVIRONMENT)
        try:
            if _saved is None:  # the user's own choice stands
                libc.mallopt(M_ARENA_MAX, arenas)
                os.environ[ENVIRONMENT] = str(arenas)
            if trim:
                _stop.clear()
                trimmer = threading.Thread(target=_trim, args=(libc,), name="malloc_trim", daemon=True)
                trimmer.start()
                _trimmer = trimmer
        except BaseException:
            _packs -= 1
            _restore()
            raise


def _leave() -> None:
    global _packs
    with _lock:
        _packs -= 1
        if not _packs:
            _restore()


def _restore() -> None:
    global _trimmer
    if _trimmer is not None:
        _stop.set()
        _trimmer.join()
        _trimmer = None
    if _saved is None:
        os.environ.pop(ENVIRONMENT, None)


def _trim(libc: ctypes.CDLL) -> None:
    while not _stop.wait(TRIM_EVERY):
        libc.malloc_trim(0)


def _glibc() -> ctypes.CDLL | None:
    try:
        if not os.confstr("CS_GNU_LIBC_VERSION"):
            return None
        libc = ctypes.CDLL(None)
        libc.mallopt.argtypes, libc.malloc_trim.argtypes = [ctypes.c_int, ctypes.c_int], [ctypes.c_size_t]
    except (ValueError, OSError, AttributeError):
        return None
    return libc
