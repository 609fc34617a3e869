"""A local pack's processes get two malloc arenas, its own process where glibc still lets it
and the workers Beam starts from it through their environment; a pack with one worker, which
runs the steps in its own process, hands free memory back while it runs."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from conftest import make_class_folders
from toolkit.data import malloc

pytest.importorskip("apache_beam")
pytestmark = pytest.mark.skipif(malloc._glibc() is None, reason="malloc arenas are glibc's")


#: Sixteen threads alive at once, each allocating outside Python's small-object allocator; a
#: worker started meanwhile; then the setting and threads each process has, and glibc's own
#: count of arenas (malloc_stats writes "Arena N:" for each).
PROGRAM = """
import ctypes, os, subprocess, sys, threading
from toolkit.data import malloc
def run():
    barrier = threading.Barrier(16)
    def work():
        block = bytearray(200_000)
        barrier.wait()
    threads = [threading.Thread(target=work) for _ in range(16)]
    for t in threads: t.start()
    for t in threads: t.join()
    worker = "import os; print(os.environ.get('MALLOC_ARENA_MAX'))"
    print(subprocess.run([sys.executable, "-c", worker], capture_output=True, text=True).stdout.strip(),
          [t.name for t in threading.enumerate()][1:], flush=True)
if sys.argv[1] != "plain":
    with malloc.returning_memory(trim=sys.argv[1] == "one worker"):
        with malloc.returning_memory(trim=False):  # a second pack at once, which ends first
            pass
        run()
else:
    run()
print(os.environ.get("MALLOC_ARENA_MAX"), [t.name for t in threading.enumerate()][1:])
ctypes.CDLL(None).malloc_stats()
"""


def run(mode: str, **environment: str) -> tuple[int, list[str]]:
    env = {k: v for k, v in os.environ.items() if k not in (malloc.ENVIRONMENT, "GLIBC_TUNABLES")}
    done = subprocess.run([sys.executable, "-c", PROGRAM, mode], capture_output=True, text=True,
                          env={**env, **environment}, timeout=60, check=True)
    return done.stderr.count("Arena "), done.stdout.splitlines()


def test_a_pack_s_processes_get_two_arenas_and_hand_memory_back_while_it_runs():
    arenas, lines = run("plain")
    assert arenas > malloc.ARENAS  # glibc's own default: more, by threads
    assert lines == ["None []", "None []"]
    arenas, lines = run("one worker")
    assert arenas == malloc.ARENAS
    # a pack with one worker trims until it ends: then its environment is as it was
    assert lines == ["2 ['malloc_trim']", "None []"]
    assert run("workers") == (malloc.ARENAS, ["2 []", "None []"])
    assert run("one worker", MALLOC_ARENA_MAX="4")[1] == ["4 ['malloc_trim']", "4 []"]


def worker_settings(pid: int, seen: set) -> None:
    """The arena settings of the Beam workers among `pid`'s descendants."""
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            children = Path(f"/proc/{pid}/task/{task}/children").read_text().split()
        except OSError:
            continue
        for child in map(int, children):
            try:
                command = Path(f"/proc/{child}/cmdline").read_bytes()
                environ = Path(f"/proc/{child}/environ").read_bytes().decode().split("\0")
            except OSError:
                continue
            if b"sdk_worker_main" in command and b"/bin/sh" not in command:
                seen.update(e for e in environ if e.startswith(f"{malloc.ENVIRONMENT}="))
            worker_settings(child, seen)


def test_a_local_pack_s_workers_run_with_two_arenas_a_pack_in_one_process_trims(tmp_path, monkeypatch):
    from toolkit.data.shard_pack import pack_shards

    if not Path(f"/proc/{os.getpid()}/task/{threading.get_native_id()}/children").exists():
        pytest.skip("this kernel does not list a process's children in /proc")
    monkeypatch.delenv(malloc.ENVIRONMENT, raising=False)
    src = make_class_folders(tmp_path / "src", {"cat": range(0, 5), "dog": range(100, 105)})
    for workers in (2, 1):
        seen: set = set()
        done = threading.Event()

        def watch():
            while not done.wait(0.05):
                worker_settings(os.getpid(), seen)
                seen.update(t.name for t in threading.enumerate() if t.name == "malloc_trim")

        watcher = threading.Thread(target=watch)
        watcher.start()
        try:
            pack_shards(src, tmp_path / f"ds{workers}", workers=workers, per_class=4, size=32, test_size=0.5)
        finally:
            done.set()
            watcher.join()
        assert seen == ({"MALLOC_ARENA_MAX=2"} if workers == 2 else {"malloc_trim"})
        assert malloc.ENVIRONMENT not in os.environ
    assert "malloc_trim" not in [t.name for t in threading.enumerate()]
