"""Two malloc arenas a process for a pack on this machine, so that its memory follows what it
holds and not how long it ran.

glibc's malloc gives threads their own arenas, up to eight a core, and keeps what is freed in
each for reuse. Beam's local runner passes each step's output between gRPC threads, so blocks
are freed far from where they were made, and the arenas keep growing with the number of images:
at 96,000 images the pack's own process held 137 MiB of live blocks and 254 MiB of anonymous
memory (docs/scale.md, "Where the memory goes"). With two arenas the largest process of a
two-worker pack peaks 1.37x its 1,500-image peak, not 1.71x, at the same speed within the
benchmark's noise. `MALLOC_ARENA_MAX` is glibc's documented setting; Beam starts its workers with
this process's environment, and this process sets its own limit with `mallopt` (glibc fixes the
limit when it first needs one: a process that already made many threads' arenas keeps them).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
from collections.abc import Iterator

#: Arenas a process of a local pack may have: the main one and one for its threads.
ARENAS = 2
#: glibc's `mallopt` parameter for it (malloc.h).
M_ARENA_MAX = -8
ENVIRONMENT = "MALLOC_ARENA_MAX"


@contextlib.contextmanager
def few_arenas(arenas: int = ARENAS) -> Iterator[None]:
    """While the block runs, workers started from this process get `arenas` arenas (unless the
    user's environment says otherwise), and so do this process's threads where glibc still lets
    it. Elsewhere than glibc (macOS, musl), nothing changes."""
    libc = _glibc()
    if libc is None or ENVIRONMENT in os.environ:  # the user's own choice stands
        yield
        return
    libc.mallopt(M_ARENA_MAX, arenas)
    os.environ[ENVIRONMENT] = str(arenas)
    try:
        yield
    finally:
        os.environ.pop(ENVIRONMENT, None)


def _glibc() -> ctypes.CDLL | None:
    try:
        if not os.confstr("CS_GNU_LIBC_VERSION"):
            return None
        libc = ctypes.CDLL(None)
        libc.mallopt  # noqa: B018 (present in glibc only)
    except (ValueError, OSError, AttributeError):
        return None
    return libc
