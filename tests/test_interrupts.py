"""Ctrl-C and SIGTERM always stop a training run: exit 130 / 143, the last epoch
checkpointed, the resume command printed; the caller's own handlers are back afterwards.

`pytest -m interrupt` runs these on their own. No signal can reach pytest itself: a child
process gets it through Popen.send_signal (which sends nothing once the child has been
reaped, so never to a reused pid; never to a process group), and in-process tests raise it
synchronously (signal.raise_signal) inside the run."""

import json
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from helpers import write_archive
from toolkit.training import interrupts
from toolkit.training.checkpoints import Checkpointer
from toolkit.training.trainer import Interrupted, train

pytestmark = pytest.mark.interrupt


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_archive(tmp_path_factory.mktemp("data") / "d.npz", n_per_class=20, size=24)


@pytest.fixture
def handlers():
    """The process's SIGINT and SIGTERM handlers, put back after the test whatever it set."""
    before = {signum: signal.getsignal(signum) for signum in interrupts.SIGNALS}
    yield
    for signum, handler in before.items():
        signal.signal(signum, handler)


def interrupted_child(data, run, sig: signal.Signals) -> tuple[int, str]:
    """Start `toolkit train` on `data`, send `sig` once its first checkpoint exists (again
    every 20 s while it runs on), and return (exit code, output); the child never outlives
    the test."""
    process = subprocess.Popen(
        [sys.executable, "-m", "toolkit.cli", "train", "--strategy", "cnn", "--data", str(data),
         "--epochs", "200", "--patience", "200", "--batch-size", "8", "--precision", "float32",
         "--out", str(run)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        # as a terminal's foreground job: a shell without job control starts `cmd &` with
        # SIGINT ignored, which the toolkit (as Python) respects
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        deadline = time.time() + 120
        while time.time() < deadline and not (run / "checkpoint" / "state.json").exists():
            assert process.poll() is None, process.communicate()[0]
            time.sleep(0.05)
        assert (run / "checkpoint" / "state.json").exists(), "no checkpoint within 120 s"
        for _ in range(3):
            process.send_signal(sig)  # a no-op once the child is reaped
            try:
                output, _ = process.communicate(timeout=20)
                return process.returncode, output
            except subprocess.TimeoutExpired:
                continue
        pytest.fail(f"{sig.name} sent three times, the run still trains")
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()


@pytest.mark.slow
@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_stops_training_with_the_resume_command(data, tmp_path, sig, code):
    run = tmp_path / "run"
    returncode, output = interrupted_child(data, run, sig)
    assert returncode == code, output
    assert f"toolkit train --resume {run}" in output and "Traceback" not in output, output
    state = json.loads((run / "checkpoint" / "state.json").read_text())
    assert not state["finished"] and len(state["history"]["loss"]) == state["epoch"] + 1 < 200
    assert (run / "checkpoint" / "last.npz").exists()
    assert not (run / "model.keras").exists() and not list(run.rglob(".*part*"))


def test_a_sigint_inside_keras_tracing_still_stops_the_run(data, tmp_path, monkeypatch, handlers):
    """Keras traces the first step inside a bare `except:` (compile_utils, CompileLoss.build):
    a KeyboardInterrupt raised there is swallowed. Ctrl-C exactly then must still stop."""
    from keras.src import tree
    from keras.src.trainers import compile_utils

    # Python's own Ctrl-C (KeyboardInterrupt where the main thread is), as in a terminal; the
    # signal is raised synchronously inside train(), so it cannot reach pytest later
    signal.signal(signal.SIGINT, signal.default_int_handler)
    sent = []

    class CtrlCWhileTracing:
        """keras.src.tree, but its first pack_sequence_as (inside the bare except) is where
        Ctrl-C arrives."""

        def __getattr__(self, name):
            return getattr(tree, name)

        def pack_sequence_as(self, *args, **kwargs):
            if not sent:
                sent.append(signal.SIGINT)
                signal.raise_signal(signal.SIGINT)
            return tree.pack_sequence_as(*args, **kwargs)

    monkeypatch.setattr(compile_utils, "tree", CtrlCWhileTracing())
    with pytest.raises(Interrupted) as stopped:
        train(data, "cnn", out=tmp_path / "run", epochs=3, weights="none", batch_size=8,
              precision="float32", verbose=0)
    assert sent, "the signal was never sent: Keras no longer builds its loss there"
    assert stopped.value.signum == signal.SIGINT
    assert not (tmp_path / "run" / "model.keras").exists()
    # the caller's handler is back once train() is over
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_a_finished_run_leaves_the_callers_handlers_in_place(data, tmp_path, handlers):
    """A notebook's kernel keeps its own Ctrl-C behaviour after train() returns."""
    received = []

    def notebook(signum, frame):
        received.append(signum)

    for signum in interrupts.SIGNALS:
        signal.signal(signum, notebook)
    train(data, "cnn", out=tmp_path / "run", epochs=1, weights="none", batch_size=32,
          precision="float32", verbose=0)
    assert [signal.getsignal(s) for s in interrupts.SIGNALS] == [notebook, notebook]
    signal.raise_signal(signal.SIGINT)
    assert received == [signal.SIGINT]


def test_a_signal_at_an_epochs_end_stops_after_that_epoch_is_saved(data, tmp_path, monkeypatch,
                                                                   handlers):
    """A real SIGTERM, sent from inside the run right after epoch 0 is checkpointed: the run
    stops there (SIGTERM's number kept for the exit code), whatever comes next."""
    reached_the_test = []
    for signum in interrupts.SIGNALS:
        signal.signal(signum, lambda signum, frame: reached_the_test.append(signum))
    end_of_epoch = Checkpointer.on_epoch_end

    def sigterm_after_epoch_0(self, epoch, logs=None):
        end_of_epoch(self, epoch, logs)
        if epoch == 0:
            signal.raise_signal(signal.SIGTERM)

    monkeypatch.setattr(Checkpointer, "on_epoch_end", sigterm_after_epoch_0)
    with pytest.raises(Interrupted) as stopped:
        train(data, "cnn", out=tmp_path / "run", epochs=5, weights="none", batch_size=8,
              precision="float32", verbose=0)
    assert stopped.value.signum == signal.SIGTERM and not reached_the_test
    state = json.loads((tmp_path / "run" / "checkpoint" / "state.json").read_text())
    assert state["epoch"] == 0 and len(state["history"]["loss"]) == 1
    assert np.isfinite(state["history"]["loss"][0])
