"""A local pack's processes get two malloc arenas and hand free memory back: this one where
glibc still lets it, and the workers Beam starts from it, through their environment."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from toolkit.data import malloc

pytestmark = pytest.mark.skipif(malloc._glibc() is None, reason="malloc arenas are glibc's")

#: Sixteen threads alive at once, each allocating outside Python's small-object allocator; then
#: glibc's own count of arenas (malloc_stats writes "Arena N:" for each on standard error), the
#: settings a worker started meanwhile sees, and the threads that hand memory back.
PROGRAM = """
import ctypes, subprocess, sys, threading
from toolkit.data import malloc
def run():
    barrier = threading.Barrier(16)
    def work():
        block = bytearray(200_000)
        barrier.wait()
    threads = [threading.Thread(target=work) for _ in range(16)]
    for t in threads: t.start()
    for t in threads: t.join()
    worker = ("import os, threading; from toolkit.data import malloc; malloc.trim_in_worker(); "
              "print(os.environ.get('MALLOC_ARENA_MAX'), [t.name for t in threading.enumerate()][1:])")
    print(subprocess.run([sys.executable, "-c", worker], capture_output=True, text=True).stdout.strip(),
          [t.name for t in threading.enumerate()][1:], flush=True)
if sys.argv[1] == "pack":
    with malloc.returning_memory():
        malloc.trim_in_worker()  # a step set up in the pack's own process: no second thread
        run()
else:
    run()
print([t.name for t in threading.enumerate()][1:])
ctypes.CDLL(None).malloc_stats()
"""


def run(mode: str, **environment: str) -> tuple[int, list[str]]:
    env = {k: v for k, v in os.environ.items() if k not in (malloc.ENVIRONMENT, malloc.TRIM_ENVIRONMENT)}
    done = subprocess.run([sys.executable, "-c", PROGRAM, mode], capture_output=True, text=True,
                          env={**env, **environment}, timeout=60, check=True)
    return done.stderr.count("Arena "), done.stdout.splitlines()


def test_a_pack_s_processes_get_two_arenas_and_hand_memory_back_while_it_runs():
    arenas, lines = run("plain")
    assert arenas > malloc.ARENAS  # glibc's own default: more, by threads
    assert lines == ["None [] []", "[]"]
    arenas, lines = run("pack")
    assert arenas == malloc.ARENAS
    assert lines == ["2 ['malloc_trim'] ['malloc_trim']", "[]"]  # a worker trims, and so does the pack
    assert run("pack", MALLOC_ARENA_MAX="4")[1][0].startswith("4 ")  # the user's setting stands
    assert malloc.ENVIRONMENT not in os.environ
