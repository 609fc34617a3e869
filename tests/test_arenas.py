"""A local pack's processes get two malloc arenas: this one where glibc still lets it, and the
workers Beam starts from it, through their environment."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from toolkit.data import arenas

pytestmark = pytest.mark.skipif(arenas._glibc() is None, reason="malloc arenas are glibc's")

#: Sixteen threads alive at once, each allocating outside Python's small-object allocator; then
#: glibc's own count of arenas (malloc_stats writes "Arena N:" for each on standard error), and
#: the setting a process started meanwhile sees.
PROGRAM = """
import ctypes, subprocess, sys, threading
from toolkit.data import arenas
def run():
    barrier = threading.Barrier(16)
    def work():
        block = bytearray(200_000)
        barrier.wait()
    threads = [threading.Thread(target=work) for _ in range(16)]
    for t in threads: t.start()
    for t in threads: t.join()
    seen = subprocess.run([sys.executable, "-c", "import os; print(os.environ.get('MALLOC_ARENA_MAX'))"],
                          capture_output=True, text=True).stdout.strip()
    print(seen, flush=True)
if sys.argv[1] == "few":
    with arenas.few_arenas():
        run()
else:
    run()
ctypes.CDLL(None).malloc_stats()
"""


def arenas_and_setting(mode: str, **environment: str) -> tuple[int, str]:
    env = {k: v for k, v in os.environ.items() if k != arenas.ENVIRONMENT}
    done = subprocess.run([sys.executable, "-c", PROGRAM, mode], capture_output=True, text=True,
                          env={**env, **environment}, timeout=60, check=True)
    return done.stderr.count("Arena "), done.stdout.strip()


def test_a_pack_s_processes_get_two_arenas_and_the_user_s_setting_stands():
    many, seen = arenas_and_setting("plain")
    assert many > arenas.ARENAS and seen == "None"  # glibc's own default: more, by threads
    assert arenas_and_setting("few") == (arenas.ARENAS, "2")
    assert arenas_and_setting("few", MALLOC_ARENA_MAX="4")[1] == "4"
    assert arenas.ENVIRONMENT not in os.environ
