"""Issue 17: an archive or image someone else made cannot make the toolkit allocate what its
headers claim, nor decoding many at once grow without bound."""

from __future__ import annotations

import numpy as np
import pytest

from toolkit.core.errors import ToolkitError

# --------------------------------------------------------------------------- archives that lie

def small_arrays(rows: int = 10) -> dict[str, np.ndarray]:
    return {"X_train": np.zeros((rows, 8, 8, 3), np.uint8), "y_train": np.arange(rows) % 2,
            "X_test": np.zeros((4, 8, 8, 3), np.uint8), "y_test": np.arange(4) % 2,
            "class_names": np.array(["a", "b"])}


def peak_bytes_of(call) -> int:
    """The most memory Python and numpy held at once during `call` (numpy reports its arrays
    to tracemalloc)."""
    import tracemalloc

    tracemalloc.start()
    try:
        call()
    except ToolkitError:
        pass
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return peak


def test_a_small_archive_cannot_make_the_loader_allocate_what_its_headers_claim(tmp_path):
    from toolkit.data.npz import load_archive

    arrays = small_arrays()
    arrays["y_train"] = np.zeros(13_000_000, np.int64)  # 104 MB of zeros deflate to ~100 KB
    path = tmp_path / "bomb.npz"
    np.savez_compressed(path, **arrays)
    assert path.stat().st_size < 200_000
    with pytest.raises(ToolkitError, match=r"y_train has 13000000 labels for 10 images in X_train"):
        load_archive(path)
    assert peak_bytes_of(lambda: load_archive(path)) < 8 * 2**20


def test_a_member_whose_header_claims_more_than_it_holds_is_refused_before_reading(tmp_path):
    import io
    import zipfile

    from toolkit.data.npz import load_archive

    path = tmp_path / "liar.npz"
    np.savez(path, **small_arrays())
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "<i8", "fortran_order": False,
                                                  "shape": (10_000_000,)})
    with zipfile.ZipFile(path, "a", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("meta.npy", np.lib.format.MAGIC_PREFIX + b"\x01\x00" + header.getvalue()[8:]
                    + b"\x00" * 16)
    with pytest.raises(ToolkitError, match=r"meta declares \(10000000,\) int64"):
        load_archive(path)
    assert peak_bytes_of(lambda: load_archive(path)) < 8 * 2**20


def test_an_honest_compressed_archive_still_loads(tmp_path):
    from toolkit.data.npz import load_archive

    path = tmp_path / "honest.npz"
    np.savez_compressed(path, **small_arrays(rows=200))
    archive = load_archive(path)
    assert archive.X_train.shape == (200, 8, 8, 3) and archive.class_names == ["a", "b"]


# --------------------------------------------------------------------------- decoding memory

def test_sixteen_threads_decoding_16_bit_photos_stay_within_a_bounded_memory(tmp_path):
    """16-bit and float images went through several float64 copies each (1.8 GB for these 16 at
    once); now they convert in bands, and the pixels decoded at once are bounded."""
    import subprocess
    import sys

    script = (
        "import io, resource, threading\n"
        "import numpy as np\n"
        "from PIL import Image\n"
        "from toolkit.core import images\n"
        "buf = io.BytesIO()\n"
        "pixels = np.random.default_rng(0).integers(0, 65535, (2500, 2500), dtype=np.uint16)\n"
        "Image.fromarray(pixels).save(buf, 'PNG')\n"
        "data = buf.getvalue()\n"
        "del pixels\n"
        "images.decode(data)\n"
        "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "threads = [threading.Thread(target=images.decode, args=(data,)) for _ in range(16)]\n"
        "[t.start() for t in threads]\n"
        "[t.join() for t in threads]\n"
        "print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) // 1024)\n")
    grown = int(subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                               check=True).stdout)
    assert grown < 1200, f"decoding grew the process by {grown} MB"


def test_the_pixel_budget_is_never_exceeded_and_a_huge_image_still_decodes_alone():
    import threading
    import time

    from toolkit.core.images import PixelBudget

    budget = PixelBudget(100)
    seen: list[int] = []

    def work(pixels: int) -> None:
        with budget.hold(pixels):
            seen.append(budget.in_use)
            time.sleep(0.01)

    threads = [threading.Thread(target=work, args=(n,)) for n in [40] * 12 + [500]]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=10)
    assert len(seen) == 13 and max(seen) <= 100 and budget.in_use == 0
