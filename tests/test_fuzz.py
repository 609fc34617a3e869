"""Property tests: hostile bytes, any valid image, any archive - never a traceback or a hang."""

import io
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings, strategies as st
from PIL import Image

from conftest import png_bomb
from toolkit.core import images
from toolkit.core.errors import ToolkitError
from toolkit.data.npz import load_archive

FUZZ = settings(max_examples=150, deadline=2000, suppress_health_check=[HealthCheck.too_slow])

FORMATS = {"PNG": {"RGB", "RGBA", "L", "LA", "P", "1", "I;16"}, "JPEG": {"RGB", "L", "CMYK"},
           "GIF": {"P", "L", "1", "RGB"}, "WEBP": {"RGB", "RGBA"}, "BMP": {"RGB", "L", "P", "1"},
           "TIFF": {"RGB", "RGBA", "L", "CMYK", "I;16", "F", "1", "P"}}


def outcome(data, size=32):
    """decode's result, or the Unusable reason: any other exception fails the test."""
    try:
        info, pixels = images.decode(data, size=size)
    except images.Unusable as e:
        assert e.reason in images.REASONS
        return e.reason
    assert pixels.shape == (size, size, 3) and pixels.dtype == np.uint8
    assert len(info.sha256) == 64 and 0 <= info.phash < 2**64
    return "ok"


@FUZZ
@given(st.binary(max_size=4096))
def test_random_bytes(data):
    outcome(data)


@st.composite
def valid_images(draw):
    fmt = draw(st.sampled_from(sorted(FORMATS)))
    mode = draw(st.sampled_from(sorted(FORMATS[fmt])))
    width, height = draw(st.integers(1, 300)), draw(st.integers(1, 300))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    image = Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))
    if mode in ("I;16", "I", "F"):
        gray = np.asarray(image.convert("L"))
        image = Image.fromarray(gray.astype({"I;16": np.uint16, "I": np.int32, "F": np.float32}[mode])
                                * {"I;16": 257, "I": 257, "F": 1 / 255}[mode])
    else:
        image = image.convert(mode)
    buffer = io.BytesIO()
    image.save(buffer, fmt)
    return buffer.getvalue(), min(width, height)


@FUZZ
@given(valid_images(), st.sampled_from([8, 32, 100]), st.sampled_from(images.FITS))
def test_any_valid_image_decodes_or_is_too_small(case, size, fit):
    data, short_side = case
    try:
        info, pixels = images.decode(data, size=size, fit=fit)
    except images.Unusable as e:
        assert e.reason == "too_small" and short_side < images.Checks().min_side
        return
    assert short_side >= images.Checks().min_side
    assert pixels.shape == (size, size, 3) and pixels.dtype == np.uint8


@st.composite
def damaged_images(draw):
    fmt = draw(st.sampled_from(["PNG", "JPEG", "GIF", "WEBP", "TIFF", "BMP"]))
    rng = np.random.default_rng(draw(st.integers(0, 1000)))
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (120, 130, 3), dtype=np.uint8)).convert(
        "P" if fmt == "GIF" else "RGB").save(buffer, fmt)
    data = bytearray(buffer.getvalue())
    for _ in range(draw(st.integers(1, 20))):
        position = draw(st.integers(0, len(data) - 1))
        data[position] = draw(st.integers(0, 255))
    cut = draw(st.integers(1, len(data)))
    return bytes(data[:cut])


@FUZZ
@given(damaged_images())
def test_damaged_images_never_crash(data):
    outcome(data)


BOMBS = """
import sys
from pathlib import Path
from toolkit.core import images

def kib(field):
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))

def peak_growth(path):
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # the peak resident size starts again from the current one
    before = kib("VmHWM")
    try:
        images.decode(Path(path).read_bytes(), size=32)
        outcome = "ok"
    except images.Unusable as e:
        outcome = e.reason
    return outcome, kib("VmHWM") - before

peak_growth(sys.argv[1])  # the same small image first: plugins and lazy imports load now
for path in sys.argv[1:]:
    print(*peak_growth(path))
"""


def test_bombs_do_not_allocate(tmp_path):
    """In a fresh process (not TensorFlow's), with the peak resident size reset before each
    image, decoding a bomb raises the peak by almost nothing, while a real 3000x3000 image
    raises it by megabytes."""
    paths = [tmp_path / "small.png", tmp_path / "real.png"]
    Image.new("RGB", (200, 200), "red").save(paths[0])
    Image.new("RGB", (3000, 3000), "red").save(paths[1])
    for side in (9_000, 20_000, 50_000, 65_535):
        paths.append(tmp_path / f"bomb{side}.png")
        paths[-1].write_bytes(png_bomb(side, side))
    if not os.path.exists("/proc/self/clear_refs"):
        pytest.skip("needs Linux's /proc/self/clear_refs to reset the peak resident size")
    done = subprocess.run([sys.executable, "-c", BOMBS, *map(str, paths)], capture_output=True,
                          text=True, timeout=120, cwd=Path(__file__).resolve().parents[1])
    assert done.returncode == 0, done.stderr
    rows = [line.split() for line in done.stdout.splitlines()]
    assert rows[0][0] == "ok" and rows[1][0] == "ok" and int(rows[1][1]) > 20_000  # KiB: it can tell
    for outcome_, growth in rows[2:]:
        assert outcome_ == "too_large" and int(growth) < 1_000, rows


# ---- archives

ARRAY = st.one_of(
    st.builds(lambda shape, dtype: np.zeros(shape, dtype=dtype),
              st.lists(st.integers(0, 4), min_size=0, max_size=5).map(tuple),
              st.sampled_from(["uint8", "int64", "float32", "bool", "<U3", "int8"])),
    st.lists(st.integers(-3, 5), max_size=8).map(lambda v: np.array(v, dtype=np.int64)),
)
KEYS = ["X_train", "X_test", "y_train", "y_test", "class_names", "meta", "extra"]


@settings(max_examples=80, deadline=3000, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.dictionaries(st.sampled_from(KEYS), ARRAY, max_size=7), st.booleans())
def test_any_archive_loads_or_is_refused(tmp_path, arrays, compressed):
    path = tmp_path / "fuzz.npz"
    (np.savez_compressed if compressed else np.savez)(path, **arrays)
    try:
        archive = load_archive(path)
    except ToolkitError as e:
        assert str(e) and "\n" not in str(e)
        return
    assert archive.X_train.dtype == np.uint8 and archive.X_train.ndim == 4
    assert archive.y_train.max() < len(archive.class_names)


@settings(max_examples=60, deadline=3000, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.binary(min_size=0, max_size=2000), st.integers(0, 1500))
def test_damaged_archive_files(tmp_path, noise, cut):
    path = tmp_path / "a.npz"
    x = np.zeros((4, 8, 8, 3), np.uint8)
    np.savez(path, X_train=x, X_test=x, y_train=np.array([0, 1, 0, 1]), y_test=np.array([0, 1, 1, 0]))
    data = bytearray(path.read_bytes())
    assume(cut < len(data))
    data[cut:cut + len(noise)] = noise
    path.write_bytes(bytes(data))
    try:
        load_archive(path)
    except ToolkitError as e:
        assert "\n" not in str(e)
