"""Shared fixtures: a loopback search engine, generated image folders, ../shared data."""

from __future__ import annotations

import atexit
import io
import os
import shutil
import signal
import struct
import tempfile
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pillow_heif
import pytest
from PIL import Image

from fake_engine import FakeEngine, distinct_image, near_copy  # noqa: F401 (tests import them from here)

pillow_heif.register_heif_opener()  # so that tests can write HEIC files

# Keras reads KERAS_HOME once, when it is imported, and no test module has imported it yet:
# every test sees an empty Keras cache (no downloaded weights), whatever ~/.keras holds.
os.environ["KERAS_HOME"] = tempfile.mkdtemp(prefix="toolkit-tests-keras-")
atexit.register(shutil.rmtree, os.environ["KERAS_HOME"], True)

# ../shared from the repository root; TOOLKIT_SHARED names it elsewhere (a git worktree)
SHARED = Path(os.environ.get("TOOLKIT_SHARED", Path(__file__).resolve().parents[2] / "shared"))
FLOWERS = SHARED / "data" / "flowers"
MOBILENET_WEIGHTS = SHARED / "weights" / "mobilenet_v2_imagenet_notop.weights.h5"


def fake_cpu(monkeypatch, cpuinfo: str) -> None:
    """Make `--precision auto` see the CPU that `cpuinfo` (/proc/cpuinfo's text) describes."""
    from toolkit.training import precision

    read = precision.cpu_bf16_flags
    monkeypatch.setattr(precision, "cpu_bf16_flags",
                        lambda text=None: read(cpuinfo if text is None else text))


@pytest.fixture(autouse=True)
def cpu_without_bfloat16_units(monkeypatch):
    """`auto` decides by the CPU's bfloat16 units: every test sees a CPU without them, on any
    machine (Intel with AMX, AMD with AVX512_BF16, neither); a test of another kind fakes it
    with fake_cpu. (A child process started with `python -m toolkit.cli` reads the real CPU:
    such tests pin their precision.)"""
    fake_cpu(monkeypatch, "processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f\n")


# ---- under CI a skip is a failure, unless the test needs a GPU
# On a machine without a GPU every test must run: a test that skips there (a missing tool, a
# missing ../shared, root privileges) hides a feature nobody checked. `.ci/run` sets CI=true.

_UNEXPECTED_SKIPS: list[str] = []


def _under_ci() -> bool:
    return os.environ.get("CI", "").lower() not in ("", "0", "false", "no")


def _note_skip(report) -> None:
    if not report.skipped or hasattr(report, "wasxfail"):
        return
    longrepr = report.longrepr
    reason = longrepr[2] if isinstance(longrepr, tuple) and len(longrepr) == 3 else str(longrepr)
    if "gpu" not in reason.lower():
        _UNEXPECTED_SKIPS.append(f"{report.nodeid}: {reason}")


def pytest_runtest_logreport(report):
    _note_skip(report)


def pytest_collectreport(report):
    _note_skip(report)


def pytest_sessionfinish(session, exitstatus):
    if _under_ci() and _UNEXPECTED_SKIPS and exitstatus == 0:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    if _under_ci() and _UNEXPECTED_SKIPS:
        terminalreporter.section("skips that fail under CI (only a test that needs a GPU may skip)",
                                 red=True)
        for line in _UNEXPECTED_SKIPS:
            terminalreporter.line(line, red=True)


def pytest_configure(config):
    """Ctrl-C reaches the children that tests interrupt, however the suite was started: a shell
    starts a background job (`pytest &`, a script's `cmd &`) with SIGINT ignored, and a process
    inherits that, so a crawl or pack the test interrupts would (rightly) ignore it too."""
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


def pytest_collection_modifyitems(items):
    """The tests that wait for work started with the session (a module's WAITING_TESTS) run
    last: until then the tests before them keep the other core busy, instead of standing idle
    while a background run they wait for finishes."""
    items.sort(key=lambda item: item.originalname in getattr(getattr(item, "module", None),
                                                              "WAITING_TESTS", ()))


@pytest.fixture(scope="session", autouse=True)
def started_with_the_session(request, tmp_path_factory):
    """Tests that wait for minutes of subprocesses (the smoke runs of scripts/, training on
    two devices or two workers) have them started as the session starts, on one background
    worker beside the tests before them, instead of when they come up. A test module opts in
    with start_with_the_session(its selected items, tmp_path_factory, pool): it submits its
    work to `pool` and keeps the futures its tests wait for. When only such modules are
    selected, the pool has a few workers."""
    selected: dict = {}
    for item in request.session.items:
        selected.setdefault(getattr(item, "module", None), []).append(item)
    starting = [(module, items) for module, items in selected.items()
                if hasattr(module, "start_with_the_session")]
    if not starting:
        yield
        return
    alone = len(starting) == len(selected)
    pool = ThreadPoolExecutor(max_workers=max(2, min(4, os.cpu_count() or 1)) if alone else 1)
    for module, items in starting:
        module.start_with_the_session(items, tmp_path_factory, pool)
    yield
    pool.shutdown(wait=True, cancel_futures=True)


@pytest.fixture(scope="session")
def finished_run(tmp_path_factory) -> tuple[Path, Path]:
    """(run folder, archive): a cnn trained one epoch on the toy shapes (10 per class at 32 px,
    float32), for the tests that need any finished run. Trained once per session: a test that
    changes the folder changes a copy (shutil.copytree). Beside the folder, `predicted.npy`: what
    the trained model, still in memory, predicted for the first 4 test images."""
    from helpers import write_archive
    from toolkit.training.trainer import train

    root = tmp_path_factory.mktemp("finished-run")
    data = write_archive(root / "shapes.npz", n_per_class=10)
    run = train(data, "cnn", out=root / "run", epochs=1, weights="none", batch_size=16,
                precision="float32", verbose=0, cache_dir=str(root / "cache"))
    np.save(root / "predicted.npy", run.model.predict(np.load(data)["X_test"][:4], verbose=0))
    return run.folder, data


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    """The shapes toy set as pack would write it (40 per class at 32 px), once per test module."""
    from helpers import write_archive

    return write_archive(tmp_path_factory.mktemp("data") / "shapes.npz")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """24 images: for tests of an option, not of learning."""
    from helpers import write_archive

    return write_archive(tmp_path_factory.mktemp("data") / "tiny.npz", n_per_class=8)


@pytest.fixture
def feature_cache(tmp_path, monkeypatch):
    """The feature cache in the test's own tmp_path/cache (a module opts in with
    `pytestmark = pytest.mark.usefixtures("feature_cache")`)."""
    monkeypatch.setenv("TOOLKIT_CACHE_DIR", str(tmp_path / "cache"))


@pytest.fixture
def folder(tmp_path, monkeypatch):
    """3 classes x 8 distinct images; the embedding cache in tmp_path."""
    monkeypatch.setenv("TOOLKIT_CACHE_DIR", str(tmp_path / "cache"))
    return make_class_folders(tmp_path / "src", {"cat": range(8), "dog": range(100, 108),
                                                 "fox": range(200, 208)})


@pytest.fixture
def engine(monkeypatch):
    """A fake Bing/DuckDuckGo/Baidu/Google on 127.0.0.1; the crawler is pointed at it, and may
    fetch its images there (a loopback address: the user's opt-in, as for an intranet)."""
    from toolkit.collect.addresses import ALLOW_PRIVATE_ENV
    from toolkit.collect.engines import SEARCH_ENGINES, search_engine
    server = FakeEngine()
    for name in SEARCH_ENGINES:
        monkeypatch.setenv(search_engine(name).env_var, server.url)
    monkeypatch.setenv(ALLOW_PRIVATE_ENV, "1")
    yield server
    server.close()


def png_bomb(width: int = 50_000, height: int = 50_000) -> bytes:
    """A 100-byte PNG whose header claims width x height pixels."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\0" * 1024)) + chunk(b"IEND", b""))


def encode(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **kwargs)
    return buffer.getvalue()


def grid_image(seed: int, size=(160, 120)) -> Image.Image:
    return Image.open(io.BytesIO(distinct_image(seed, size, "PNG"))).convert("RGB")


def make_class_folders(root: Path, classes: dict[str, range], size=(160, 120)) -> Path:
    """One folder per class, each image a distinct random grid, saved as JPEG."""
    for name, seeds in classes.items():
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        for s in seeds:
            (folder / f"img{s:04d}.jpg").write_bytes(distinct_image(s, size))
    return root


def add_duplicates_and_odd_names(src: Path) -> None:
    """In the class folders cat, dog and fox: a near copy within fox, one picture under both cat
    and dog, a hidden file, a nested folder, and a name that is not UTF-8 (pack's messy cases)."""
    cat, dog, fox = (src / c for c in ("cat", "dog", "fox"))
    (fox / "near_copy.jpg").write_bytes(near_copy(distinct_image(200)))
    (cat / "shared.jpg").write_bytes(distinct_image(300))
    (dog / "shared_too.png").write_bytes(encode(grid_image(300), "PNG"))
    (fox / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    (fox / "sub").mkdir()
    (fox / "sub" / "nested.jpg").write_bytes(distinct_image(250))
    with open(os.path.join(os.fsencode(fox), b"caf\xe9.jpg"), "wb") as f:
        f.write(distinct_image(251))


def shapes_dataset(n_per_class: int = 60, size: int = 32, seed: int = 0):
    """A learnable toy set: class 0 a red square, 1 a green disc, 2 a blue bar; random
    positions, sizes and backgrounds. Returns (x uint8 (n,size,size,3), y int64)."""
    rng = np.random.default_rng(seed)
    xs, ys = [], []
    yy, xx = np.mgrid[:size, :size]
    for label in range(3):
        for _ in range(n_per_class):
            img = rng.integers(0, 90, (size, size, 3)).astype(np.uint8)
            r = rng.integers(size // 6, size // 3)
            cy, cx = rng.integers(r, size - r, 2)
            if label == 0:
                mask = (abs(yy - cy) <= r) & (abs(xx - cx) <= r)
            elif label == 1:
                mask = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
            else:
                mask = (abs(yy - cy) <= r // 3) & (abs(xx - cx) <= r)
            img[mask] = [(230, 30, 30), (30, 230, 30), (30, 30, 230)][label]
            xs.append(img)
            ys.append(label)
    order = rng.permutation(len(ys))
    return np.stack(xs)[order], np.array(ys, dtype=np.int64)[order]
