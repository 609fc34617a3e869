"""What every command does the same way: one `Error:` line for a ToolkitError, exit 130 on
Ctrl-C, TensorFlow started quietly, progress bars only on a terminal."""

from __future__ import annotations

import functools
import os
import signal
import sys

import click

from ..core.errors import OptionError, ToolkitError


def user_errors(command):
    """Turn a ToolkitError into one line on stderr and exit 1; Ctrl-C into exit 130 (143 for
    a training's SIGTERM)."""
    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except OptionError as e:  # the library names the parameter; here, its flag
            raise click.ClickException(e.for_command_line()) from None
        except ToolkitError as e:
            raise click.ClickException(str(e)) from None
        except KeyboardInterrupt as e:
            click.echo("\nInterrupted: nothing partial was left behind; run the same command "
                       "again to continue.", err=True)
            raise click.exceptions.Exit(interrupted_exit_code(e)) from None
    return wrapper


def interrupted_exit_code(interrupt: KeyboardInterrupt) -> int:
    """128 + the signal, as a shell reports it: 130 for Ctrl-C, 143 for a run's SIGTERM."""
    return 128 + getattr(interrupt, "signum", signal.SIGINT)


def load_tensorflow() -> None:
    """Import TensorFlow with its C++ start-up chatter (CUDA probes on a CPU machine) muted;
    errors after start-up still reach stderr."""
    if "tensorflow" in sys.modules:
        return
    saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        import tensorflow as tf
        tf.config.list_physical_devices()
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def progress_enabled() -> bool:
    return sys.stderr.isatty()
