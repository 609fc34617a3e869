"""Ctrl-C (SIGINT) and SIGTERM during a run: always stop, at a point where Keras cannot lose it.

Python turns SIGINT into a KeyboardInterrupt raised wherever the main thread happens to
be. Inside `fit` that may be a bare `except:` in Keras (its compile utilities, while it
traces the first step or starts an epoch), which swallows it: the run then trained to the
end and exited 0. So while a run is `handled`, both signals are caught here: outside `fit`
they raise at once, as before; inside `fit` they only set a flag, and the `StopOnSignal`
callback raises at the next batch or epoch boundary, after the checkpoint callback has
written the last finished epoch (the flag is kept too when a signal raised at once: should
that be swallowed, `fit` stops at its first batch). A second signal raises at once.
The handlers in place before the run are put back after it (a notebook keeps its own).
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from pathlib import Path

import keras

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Stopped(KeyboardInterrupt):
    """The run was stopped by `signum` (SIGINT or SIGTERM); a shell exits 128 + signum."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


class _State:
    """What the handlers share with the callback: whether `fit` runs, the signal pending."""

    deferring = False
    pending: int | None = None


def _on_signal(signum, frame) -> None:
    first = _State.pending is None
    if first:  # kept even when raised at once: if Keras swallows that, fit still stops
        _State.pending = signum
    if _State.deferring and first:
        return  # raised by StopOnSignal at the next batch
    raise Stopped(signum)


@contextlib.contextmanager
def handled() -> Iterator[None]:
    """Catch SIGINT and SIGTERM while inside (in the main thread: elsewhere Python's own
    handling stays); the previous handlers are restored on the way out."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    # a signal the process was started ignoring (`cmd &` in a script: SIGINT) stays ignored
    previous = {signum: signal.getsignal(signum) for signum in SIGNALS
                if signal.getsignal(signum) is not signal.SIG_IGN}
    saved = (_State.deferring, _State.pending)
    _State.deferring, _State.pending = False, None
    for signum in previous:
        signal.signal(signum, _on_signal)
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        _State.deferring, _State.pending = saved


def raise_if_stopped() -> None:
    """Raise `Stopped` if a signal arrived since the last check."""
    if _State.pending is not None:
        signum, _State.pending = _State.pending, None
        raise Stopped(signum)


class StopOnSignal(keras.callbacks.Callback):
    """Inside `fit`, turn a pending SIGINT/SIGTERM into `Stopped` at the next batch or epoch
    boundary. List it after the checkpoint callback, which then has written the epoch."""

    def on_train_begin(self, logs=None):
        _State.deferring = True
        raise_if_stopped()

    def on_train_end(self, logs=None):
        _State.deferring = False
        raise_if_stopped()

    def on_epoch_begin(self, epoch, logs=None):
        raise_if_stopped()

    def on_epoch_end(self, epoch, logs=None):
        raise_if_stopped()

    def on_train_batch_begin(self, batch, logs=None):
        raise_if_stopped()

    def on_train_batch_end(self, batch, logs=None):
        raise_if_stopped()

    def on_test_batch_end(self, batch, logs=None):
        raise_if_stopped()


class Interrupted(KeyboardInterrupt):
    """Ctrl-C (or SIGTERM: `signum`) during a run; `folder` is what `resume` continues."""

    def __init__(self, folder: Path, signum: int = signal.SIGINT):
        super().__init__(str(folder))
        self.folder, self.signum = folder, signum


@contextlib.contextmanager
def interruptible(folder: Path) -> Iterator[None]:
    """SIGINT and SIGTERM stop the run at the next batch (interrupts.py) as `Interrupted`."""
    try:
        with handled():
            yield
    except KeyboardInterrupt as e:
        raise Interrupted(folder, getattr(e, "signum", signal.SIGINT)) from None
