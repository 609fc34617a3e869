"""Training on two CPU devices and on two loopback workers, in processes started with the session."""

import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from helpers import LEARNS, assert_one_error_line, run_cli, write_archive

pytestmark = pytest.mark.usefixtures("feature_cache")  # each test's feature cache in its tmp_path


# Each of these tests trains in other processes: its processes start with the session, on
# conftest.py's background worker (start_with_the_session, below), and the test checks what
# they left.

MIRRORED = """
import json, sys
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
from toolkit.training.trainer import train
run = train(sys.argv[1], "cnn", out=sys.argv[2] + "/mirrored", distribute="mirrored", verbose=0,
            **json.loads(sys.argv[3]))
print(json.dumps({"accuracy": run.metrics["accuracy"], "replicas": run.metrics["replicas"],
                  "batch": run.metrics["global_batch_size"]}))
"""

def mirrored_run(folder: Path) -> subprocess.CompletedProcess:
    """LEARNS on two CPU devices, in a process of its own."""
    data = write_archive(folder / "shapes.npz", n_per_class=40, size=24)
    return subprocess.run([sys.executable, "-c", MIRRORED, str(data), str(folder), json.dumps(LEARNS)],
                          capture_output=True, text=True, timeout=270,
                          env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})


def test_mirrored_training_on_two_cpu_devices_reaches_the_same_quality(request):
    """Two CPU devices learn what one does in test_cnn_learns_a_toy_set (the same data and
    settings), each replica taking a whole batch."""
    done, _ = started(request)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["replicas"] == 2 and result["batch"] == 2 * LEARNS["batch_size"]
    assert result["accuracy"] >= 0.9, result


def _free_ports(n: int) -> list[int]:
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


#: what a worker says when another process took its port between the probe and its bind
PORT_TAKEN = "Could not start gRPC server"


def _run_workers(commands: list[list[str]], envs: list[dict], deadline: float) -> list[tuple[int, str]]:
    """Run the workers at once and read both pipes at once (a worker blocked on a full pipe
    would stall the other, which waits for it); (exit code, output) of each. When one fails,
    the other, left waiting for its peer, is stopped."""
    processes = [subprocess.Popen(c, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=e)
                 for c, e in zip(commands, envs)]
    outputs = [""] * len(processes)

    def read(i: int) -> None:
        outputs[i] = processes[i].stdout.read()

    readers = [threading.Thread(target=read, args=(i,), daemon=True) for i in range(len(processes))]
    for reader in readers:
        reader.start()
    try:
        while any(p.poll() is None for p in processes) and time.monotonic() < deadline:
            if any(p.poll() not in (None, 0) for p in processes):
                break
            time.sleep(0.1)
    finally:
        for p in processes:
            if p.poll() is None:
                p.kill()
            p.wait()
        for reader in readers:
            reader.join(10)
    return [(p.returncode, out) for p, out in zip(processes, outputs)]


def multiworker_runs(folder: Path) -> list[tuple[int, str]]:
    """Two `toolkit train --distribute multiworker` processes on loopback ports; (exit code,
    output) of each, or (None, ...) for one that was still running after 240 s."""
    data = write_archive(folder / "shapes.npz", n_per_class=30, size=24)
    deadline = time.monotonic() + 240  # under pytest's 300 s, with room to report
    for attempt in range(3):
        workers = [f"127.0.0.1:{port}" for port in _free_ports(2)]
        commands, envs = [], []
        for index in range(2):
            tf_config = {"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}}
            shutil.rmtree(folder / f"run{index}", ignore_errors=True)
            commands.append([sys.executable, "-m", "toolkit.cli", "train", "--strategy", "cnn",
                             "--data", str(data), "--weights", "none", "--epochs", "8",
                             "--learning-rate", "2e-3", "--batch-size", "8", "--distribute", "multiworker",
                             "--precision", "float32", "--out", str(folder / f"run{index}")])
            envs.append({**os.environ, "TF_CONFIG": json.dumps(tf_config), "TF_CPP_MIN_LOG_LEVEL": "3"})
        results = _run_workers(commands, envs, deadline)
        if not any(code != 0 and PORT_TAKEN in out for code, out in results):
            break  # a port taken by another process between probe and bind: new ports, again
    return [(None if time.monotonic() >= deadline else code, out) for code, out in results]


def test_multiworker_training_on_two_loopback_workers(request):
    results, folder = started(request)
    (code0, out0), (code1, out1) = results
    assert None not in (code0, code1), "the workers did not finish in 240 s:\n" + out0[-3000:] + out1[-3000:]
    assert [code0, code1] == [0, 0], out0[-3000:] + out1[-3000:]
    metrics = json.loads((folder / "run0" / "metrics.json").read_text())
    assert metrics["replicas"] == 2 and metrics["global_batch_size"] == 16
    assert metrics["accuracy"] >= 0.9
    assert not (folder / "run1").exists() and "written by the chief" in out1
    result = run_cli("train", "--resume", folder / "run0")
    assert_one_error_line(result, "cannot be resumed")


#: test -> the work in other processes it checks, given a folder of its own
IN_OTHER_PROCESSES = {"test_mirrored_training_on_two_cpu_devices_reaches_the_same_quality": mirrored_run,
                      "test_multiworker_training_on_two_loopback_workers": multiworker_runs}


#: run last (conftest.py): they wait for their runs
WAITING_TESTS = tuple(IN_OTHER_PROCESSES)


#: test -> (the future of its work, its folder), from start_with_the_session
STARTED: dict = {}


def start_with_the_session(items: list, tmp_path_factory, pool: ThreadPoolExecutor) -> None:
    """Submit to `pool` the work in other processes of the selected tests (conftest.py calls
    it as the session starts)."""
    for test in dict.fromkeys(item.originalname for item in items):
        if test in IN_OTHER_PROCESSES:
            folder = tmp_path_factory.mktemp(test[5:30])
            STARTED[test] = (pool.submit(IN_OTHER_PROCESSES[test], folder), folder)


def started(request):
    """(what the test's work in other processes returned, its folder)."""
    future, folder = STARTED[request.node.originalname]
    return future.result(), folder
