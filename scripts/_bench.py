"""Helpers shared by the benchmarks: run a command in its own process, time it, read its
peak resident memory, and print Markdown tables."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path


@dataclass
class Measured:
    seconds: float
    peak_mib: float
    returncode: int
    #: the peak of the process's anonymous memory (sampled): its own, not pages of files it maps
    anon_peak_mib: float = 0.0


def measure(command: list[str], env: dict | None = None, quiet: bool = True) -> Measured:
    """Run `command`; wall seconds and peak RSS of the process (and its children), and the peak
    of its anonymous memory, sampled every 0.2 s from /proc (resident pages of files it maps,
    like a memory-mapped feature cache or .npz, are the kernel's to drop and not counted there)."""
    start = time.perf_counter()
    process = subprocess.Popen(command, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", **(env or {})},
                               stdout=subprocess.DEVNULL if quiet else None,
                               stderr=subprocess.DEVNULL if quiet else None)
    status, usage, anon = _wait_sampling(process, _anon_kib)
    seconds = time.perf_counter() - start
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        raise SystemExit(f"benchmark step failed ({code}): {' '.join(command)}")
    return Measured(seconds, usage.ru_maxrss / 1024, code, anon / 1024)


def _wait_sampling(process: subprocess.Popen, sample, every: float = 0.2) -> tuple[int, object, int]:
    """Wait for `process`; its wait status, resource usage, and the largest `sample(pid)` seen
    every `every` seconds while it ran."""
    peak = 0
    while True:
        pid, status, usage = os.wait4(process.pid, os.WNOHANG)
        if pid:
            return status, usage, peak
        peak = max(peak, sample(process.pid))
        time.sleep(every)


def _anon_kib(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            return next((int(line.split()[1]) for line in f if line.startswith("RssAnon:")), 0)
    except OSError:
        return 0


#: The CPU features that TensorFlow's and Pillow's speed depends on.
SPEED_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16")


def machine() -> str:
    """The machine a number was measured on: cores, CPU model and its speed flags, memory."""
    cpu, flags = platform.processor() or platform.machine(), set()
    try:
        with open("/proc/cpuinfo") as f:
            info = {key.strip(): value for key, value in (
                line.split(":", 1) for line in f.read().split("\n\n")[0].splitlines() if ":" in line)}
        cpu = info["model name"].strip()
        flags = set(info.get("flags", "").split())
    except (OSError, KeyError):
        pass
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    speed = ",".join(f for f in SPEED_FLAGS if f in flags) or "none of " + ",".join(SPEED_FLAGS)
    return (f"{os.cpu_count()} cores ({cpu}; {speed}), {memory:.0f} GiB, "
            f"Python {sys.version.split()[0]}")


def table(head: list[str], rows: list[list[object]]) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def toolkit_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "toolkit.cli", *args]


def scratch_folder() -> tempfile.TemporaryDirectory:
    """A temporary folder under runs/ (git-ignored, on the project's disk): a benchmark
    killed half-way leaves its gigabytes where git does not pick them up."""
    Path("runs").mkdir(exist_ok=True)
    return tempfile.TemporaryDirectory(dir="runs", prefix="bench-")


#: ../shared beside the repository root (TOOLKIT_SHARED names it elsewhere: a git worktree)
SHARED = Path(os.environ.get("TOOLKIT_SHARED") or Path(__file__).resolve().parents[2] / "shared")
WEIGHTS = SHARED / "weights" / "mobilenet_v2_imagenet_notop.weights.h5"


def flowers_archive(path: str) -> None:
    """Pack ../shared/data/flowers (3 x 400 at 224 px, the defaults) into `path`, unless it
    is there; exit with the reason when the shared photos are absent."""
    if Path(path).exists():
        return
    flowers = SHARED / "data" / "flowers"
    if not flowers.is_dir():
        sys.exit(f"{flowers} is absent (../shared); or give an archive that exists")
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(toolkit_command("pack", str(flowers), "--out", path), check=True)


def weights_option(value: str) -> str:
    """A --weights value (a file, imagenet or none); exit with the reason when the file is
    absent (the shared weights, by default)."""
    if value not in ("imagenet", "none") and not Path(value).exists():
        sys.exit(f"{value} is absent (../shared/weights); or pass --weights none")
    return value


@dataclass
class Tree:
    """A command's wall time and CPU time (all its processes), the peak resident memory of its
    largest process and of all its processes together, and the machine's load average (1 minute)
    before and after."""

    seconds: float
    cpu_seconds: float
    peak_mib: float
    tree_peak_mib: float
    load_before: float
    load_after: float


def measure_tree(command: list[str], every: float = 0.2) -> Tree:
    """Run `command`; besides `measure`'s numbers, the sum of the resident memory of it and its
    descendants (worker processes), sampled from /proc every `every` seconds."""
    load_before = os.getloadavg()[0]
    start = time.perf_counter()
    process = subprocess.Popen(command, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    status, usage, tree_peak = _wait_sampling(process, _tree_rss, every)
    seconds = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"benchmark step failed: {' '.join(command)}")
    return Tree(seconds, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024,
                max(tree_peak, usage.ru_maxrss * 1024) / 2**20, load_before, os.getloadavg()[0])


def _tree_rss(root: int) -> int:
    """Bytes resident in `root` and every process below it."""
    parent, rss = {}, {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            parent[int(entry)], rss[int(entry)] = int(fields[1]), int(fields[21]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, IndexError, ValueError):
            continue
    total, todo = 0, [root]
    while todo:
        pid = todo.pop()
        total += rss.get(pid, 0)
        todo += [child for child, up in parent.items() if up == pid]
    return total
