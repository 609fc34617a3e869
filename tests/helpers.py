"""What many test files need: run the CLI as a user would, check its one-line errors, and
make the small inputs (archives, crawl options, bad responses) that several files share."""

from __future__ import annotations

import contextlib
import json
import signal
import sys
import traceback
import urllib.parse
from pathlib import Path

import numpy as np
from click.testing import CliRunner, Result

from conftest import distinct_image, png_bomb, shapes_dataset
from fake_engine import Item
from toolkit.cli import cli
from toolkit.collect.fetch import FetchOptions
from toolkit.core import images
from toolkit.core.files import is_partial

#: Crawl options that fail fast against the loopback engine.
FAST = FetchOptions(timeout=2, total_timeout=3, retries=1, backoff=0.05)

#: The classes of :func:`write_archive`'s toy set.
NAMES = np.array(["square", "disc", "bar"])

#: train() options for a run that takes seconds.
# float32 on every CPU: these tests check behaviour; test_precision.py checks bfloat16
QUICK = dict(weights="none", batch_size=32, precision="float32", verbose=0)

#: review() options for a review of a second or two: MobileNetV2, random weights, 32 px.
REVIEW_QUICK = {"weights": "none", "size": 32}
#: the same as `toolkit review` flags.
REVIEW_QUICK_FLAGS = ("--weights", "none", "--size", "32")

#: a cnn that learns the toy shapes (40 per class at 24 px) in 6 epochs: on one device in
#: test_train_runs.py::test_cnn_learns_a_toy_set, on two in
#: test_train_distributed.py::test_mirrored_training_on_two_cpu_devices_reaches_the_same_quality
LEARNS = dict(epochs=6, batch_size=16, learning_rate=2e-3, patience=6, weights="none", precision="float32")


def run_cli(*args, **kwargs) -> Result:
    """`toolkit ARGS...` in-process; every argument is turned into a string."""
    return CliRunner().invoke(cli, [str(a) for a in args], **kwargs)


def tree(folder: Path) -> dict[str, int]:
    """Every file below folder (relative path -> size): compare before and after a command."""
    folder = Path(folder)
    if not folder.exists():
        return {}
    return {str(p.relative_to(folder)): p.stat().st_size for p in sorted(folder.rglob("*")) if p.is_file()}


def assert_no_traceback(result: Result) -> None:
    """The command ended as the CLI ends it (normally, or by Click's exit with its code), not
    by an uncaught exception. CliRunner catches such an exception into `result.exception` and
    never prints its traceback into `result.output`, so the output alone cannot tell."""
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise AssertionError("the command raised (a user would see this traceback):\n"
                             + "".join(traceback.format_exception(*result.exc_info)) + result.output)


def assert_one_error_line(result: Result, message: str) -> None:
    """A non-zero exit, no traceback, and exactly one `Error:` line that contains message."""
    assert result.exit_code not in (0, None), result.output
    assert_no_traceback(result)
    errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and message in errors[0], result.output


def write_archive(path: Path, n_per_class: int = 40, size: int = 32, seed: int = 0, **extra) -> Path:
    """A small archive of the shapes toy set (every fifth image in the test set), as pack
    would write it; `extra` replaces or adds arrays."""
    x, y = shapes_dataset(n_per_class, size, seed)
    test = np.arange(len(y)) % 5 == 0
    arrays = dict(X_train=x[~test], y_train=y[~test], X_test=x[test], y_test=y[test],
                  class_names=NAMES, meta=np.array(json.dumps({"fit": "crop", "size": size})))
    arrays.update(extra)
    np.savez(path, **arrays)
    return path


def write_shape_folders(root: Path, n_per_class: int, size: int, seed: int) -> Path:
    """The toy shapes (:func:`conftest.shapes_dataset`) as class folders of PNGs under `root`."""
    from PIL import Image

    x, y = shapes_dataset(n_per_class, size, seed=seed)
    for i, (pixels, label) in enumerate(zip(x, y)):
        folder = root / ["square", "disc", "bar"][label]
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).save(folder / f"{i:03d}.png")
    return root


def add_bad_responses(engine, keyword, slow=True):
    """Every kind of response a crawl must refuse, listed for `keyword` on the fake engine; a slow
    drip too, unless `slow` is False."""
    engine.add(keyword, f"{keyword}-404.jpg", Item(status=404))
    engine.add(keyword, f"{keyword}-500.jpg", Item(b"oops", status=500, content_type="text/plain"))
    engine.add(keyword, f"{keyword}-html.jpg", Item(b"<html><body>blocked</body></html>"))
    engine.add(keyword, f"{keyword}-trunc.jpg", Item(distinct_image(990)[:-500]))
    engine.add(keyword, f"{keyword}-svg.jpg", Item(b"<svg xmlns='http://www.w3.org/2000/svg'/>",
                                                   content_type="image/svg+xml"))
    engine.add(keyword, f"{keyword}-bomb.jpg", Item(png_bomb(), content_type="image/png"))
    engine.add(keyword, f"{keyword}-tiny.jpg", Item(distinct_image(991, (40, 30))))
    engine.add(keyword, f"{keyword}-loop.jpg", Item(behaviour="redirect_loop"))
    engine.add(keyword, f"{keyword}-huge.jpg", Item(behaviour="huge"))
    if slow:
        engine.add(keyword, f"{keyword}-slow.jpg", Item(b"\xff\xd8" * 150, behaviour="slow"))


def folder_state(root: Path, label: str) -> tuple[set[str], list[dict]]:
    """(files on disk but hidden ones, files in the manifest) for a class."""
    on_disk = {p.name for p in (root / label).iterdir() if not p.name.startswith(".")}
    manifest = [json.loads(line) for line in (root / f"{label}.manifest.jsonl").read_text().splitlines()]
    return on_disk, manifest


def assert_consistent(root: Path, label: str) -> list[dict]:
    """A class folder and its manifest agree, hold no partial file, and every file decodes to
    what the manifest says; returns the manifest."""
    on_disk, manifest = folder_state(root, label)
    assert on_disk == {e["file"] for e in manifest}, "manifest must match the folder"
    assert not [p for p in (root / label).iterdir() if is_partial(p.name)], "no partial files"
    for e in manifest:
        info, _ = images.decode((root / label / e["file"]).read_bytes())
        assert info.sha256 == e["sha256"] and (info.width, info.height) == (e["width"], e["height"])
    return manifest


@contextlib.contextmanager
def interrupted_after_first_epoch(monkeypatch, real_signal: bool = False):
    """Within the block, a run is interrupted as epoch 0 ends, once its checkpoint is written, as
    by Ctrl-C (a real SIGINT with `real_signal`, while the run's own handler is in place; else a
    KeyboardInterrupt); after it, epochs end as usual again."""
    from toolkit.training.checkpoints import Checkpointer

    end_of_epoch = Checkpointer.on_epoch_end

    def ctrl_c_after_epoch_0(self, epoch, logs=None):
        end_of_epoch(self, epoch, logs)
        if epoch == 0:
            if real_signal:
                signal.raise_signal(signal.SIGINT)
            else:
                raise KeyboardInterrupt

    monkeypatch.setattr(Checkpointer, "on_epoch_end", ctrl_c_after_epoch_0)
    try:
        yield
    finally:
        monkeypatch.setattr(Checkpointer, "on_epoch_end", end_of_epoch)


def assert_resumed_as_whole(resumed, whole, epochs: int) -> None:
    """A resumed run ran every epoch, with the losses of the run that was never interrupted."""
    assert len(resumed.history["loss"]) == epochs
    np.testing.assert_allclose(resumed.history["loss"], whole.history["loss"], rtol=1e-5)
    np.testing.assert_allclose(resumed.history["val_loss"], whole.history["val_loss"], rtol=1e-5)


#: The lists that :func:`recording_the_internet` is filling now.
_RECORDING: list[list[str]] = []
_LOOPBACK = ("127.0.0.1", "::1", "localhost")


def _note_the_internet(event: str, args: tuple) -> None:
    if not _RECORDING:
        return
    if event == "urllib.Request":
        where = urllib.parse.urlsplit(args[0]).hostname or ""
    elif event in ("socket.getaddrinfo", "socket.connect"):
        where = args[0] if event == "socket.getaddrinfo" else args[1]
        where = str(where[0] if isinstance(where, tuple) else where)
    else:
        return
    if where and where not in _LOOPBACK:
        for asked in _RECORDING:
            asked.append(f"{event} {where}")


@contextlib.contextmanager
def recording_the_internet(asked: list[str]):
    """Append to `asked` every URL opened, name looked up and address connected to, in this
    process, that is not this machine (Python's audit events: no setting of the process is
    changed, so other tests' loopback servers are left alone)."""
    if not hasattr(recording_the_internet, "hooked"):
        sys.addaudithook(_note_the_internet)  # a hook cannot be removed: it records only in here
        recording_the_internet.hooked = True
    _RECORDING.append(asked)
    try:
        yield
    finally:
        _RECORDING.remove(asked)


def groups_of(pairs, members) -> set[frozenset[int]]:
    """The transitive groups of `members` that `pairs` join (each member alone unless joined)."""
    parent = {m: m for m in members}

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = i = parent[parent[i]]
        return i

    for i, j in pairs:
        parent[root(i)] = root(j)
    groups: dict[int, set[int]] = {}
    for m in parent:
        groups.setdefault(root(m), set()).add(m)
    return {frozenset(g) for g in groups.values()}
