"""toolkit pack: a messy folder in, a clean, stratified, duplicate-free archive out."""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from conftest import (
    add_duplicates_and_odd_names,
    distinct_image,
    encode,
    grid_image,
    make_class_folders,
    png_bomb,
)
from helpers import assert_one_error_line, run_cli
from toolkit.core import images
from toolkit.data.npz import load_archive
from toolkit.data.packer import NotEnoughImages, pack


@pytest.fixture
def messy(tmp_path):
    """3 classes of distinct images with junk, odd formats, duplicates and label noise."""
    src = make_class_folders(tmp_path / "src", {"cat": range(0, 14), "dog": range(100, 114),
                                                "fox": range(200, 214)})
    cat, dog, fox = (src / c for c in ("cat", "dog", "fox"))
    base = grid_image(5, (200, 150))
    # junk, every kind of it
    (cat / "empty.jpg").write_bytes(b"")
    (cat / "page.jpg").write_bytes(b"<!DOCTYPE html><html>Access denied</html>")
    (cat / "notes.txt").write_text("not a picture")
    (cat / "vector.svg").write_text('<svg xmlns="http://www.w3.org/2000/svg"/>')
    (cat / "truncated.jpg").write_bytes(distinct_image(40)[:-300])
    (cat / "tiny.png").write_bytes(encode(base.resize((50, 40)), "PNG"))
    (cat / "bomb.png").write_bytes(png_bomb())
    # odd formats, all usable
    (dog / "cmyk.jpg").write_bytes(encode(grid_image(150).convert("CMYK"), "JPEG"))
    (dog / "gray_alpha.png").write_bytes(encode(grid_image(151).convert("LA"), "PNG"))
    frames = [grid_image(152).convert("P"), grid_image(999).convert("P")]
    (dog / "animated.gif").write_bytes(encode(frames[0], "GIF", save_all=True, append_images=frames[1:]))
    sixteen = Image.fromarray(np.asarray(grid_image(153).convert("L")).astype(np.uint16) * 257)
    (dog / "sixteen.png").write_bytes(encode(sixteen, "PNG"))
    (dog / "photo.webp").write_bytes(encode(grid_image(154).convert("RGBA"), "WEBP"))
    add_duplicates_and_odd_names(src)
    (fox / "loop").symlink_to(fox)  # a link loop
    return src


def files_under(src):
    seen = set()
    for dirpath, dirnames, filenames in os.walk(src, followlinks=False):
        for name in filenames:
            seen.add(os.path.join(dirpath, name))
    return seen


def test_messy_folder_packs_clean(messy, tmp_path):
    out = tmp_path / "x.npz"
    report = pack(messy, out, per_class=10, size=32, seed=1)
    with np.load(out) as a:  # plain np.load: no pickle needed
        assert a["X_train"].shape == (24, 32, 32, 3) and a["X_train"].dtype == np.uint8
        assert a["X_test"].shape == (6, 32, 32, 3)
        assert np.bincount(a["y_train"]).tolist() == [8, 8, 8]
        assert np.bincount(a["y_test"]).tolist() == [2, 2, 2]
        assert a["class_names"].tolist() == ["cat", "dog", "fox"]
        assert len(a["paths_train"]) == 24 and len(a["paths_test"]) == 6
        packed = [*a["paths_train"].tolist(), *a["paths_test"].tolist()]
    assert len(set(packed)) == 30

    counts = {name: dict(c) for name, c in zip(report.class_names, report.counts())}
    assert counts["cat"] == {"packed": 10, "surplus": 4, "empty": 1,
                             "not_image": 3, "corrupt": 1, "too_small": 1, "too_large": 1,
                             "label_conflict": 1}
    assert counts["dog"]["label_conflict"] == 1 and counts["dog"]["packed"] + counts["dog"]["surplus"] == 19
    assert counts["fox"] == {"packed": 10, "surplus": 6, "duplicate": 1, "hidden": 1}
    # the report accounts for every file, once
    assert len(report.files) == len(files_under(messy))
    saved = json.loads((tmp_path / "x.report.json").read_text())
    assert len(saved["files"]) == len(report.files)
    assert "label_conflict" in (tmp_path / "x.report.txt").read_text()


def test_archive_holds_no_near_duplicate_pair(messy, tmp_path):
    out = tmp_path / "x.npz"
    report = pack(messy, out, per_class=10, size=32)
    hashes = [f.info.phash for f in report.files if f.status == "packed"]
    assert len(hashes) == 30
    for i in range(len(hashes)):
        for j in range(i + 1, len(hashes)):
            assert bin(hashes[i] ^ hashes[j]).count("1") > 8


def test_same_seed_same_archive_other_seed_other_pick(messy, tmp_path):
    pack(messy, tmp_path / "a.npz", per_class=10, size=32, seed=3)
    pack(messy, tmp_path / "b.npz", per_class=10, size=32, seed=3, workers=1)
    pack(messy, tmp_path / "c.npz", per_class=10, size=32, seed=4)
    a, b, c = (np.load(tmp_path / f"{k}.npz") for k in "abc")
    for key in ("X_train", "X_test", "y_train", "y_test", "paths_train"):
        assert np.array_equal(a[key], b[key])
    assert set(a["paths_train"]) != set(c["paths_train"])


def test_default_sizes_give_the_notebook_shapes(tmp_path):
    src = make_class_folders(tmp_path / "src", {"a": range(0, 402), "b": range(500, 902),
                                                "c": range(1000, 1402)}, size=(112, 112))
    pack(src, tmp_path / "animal.npz", size=40)
    with np.load(tmp_path / "animal.npz") as a:
        assert a["X_train"].shape == (960, 40, 40, 3) and a["X_test"].shape == (240, 40, 40, 3)
        assert np.bincount(a["y_train"]).tolist() == [320] * 3
        assert np.bincount(a["y_test"]).tolist() == [80] * 3


def test_too_few_images_is_an_error_with_counts_unless_allowed(messy, tmp_path):
    with pytest.raises(NotEnoughImages, match=r"cat 14, fox 16"):
        pack(messy, tmp_path / "x.npz", per_class=17, size=32)
    assert not list(tmp_path.glob("x*"))
    report = pack(messy, tmp_path / "x.npz", per_class=17, size=32, allow_fewer=True)
    assert report.train_counts == [11, 14, 13] and report.test_counts == [3, 3, 3]


def test_existing_archive_is_kept_unless_forced_and_failures_leave_it_whole(messy, tmp_path):
    out = tmp_path / "x.npz"
    pack(messy, out, per_class=10, size=32)
    before = out.read_bytes()
    with pytest.raises(Exception, match="already exists"):
        pack(messy, out, per_class=10, size=32)
    with pytest.raises(NotEnoughImages):
        pack(messy, out, per_class=50, size=32, force=True)
    assert out.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src", "x.npz", "x.report.json", "x.report.txt"]
    pack(messy, out, per_class=10, size=32, seed=9, force=True)
    assert out.read_bytes() != before


def test_load_archive_memory_maps_images(messy, tmp_path):
    pack(messy, tmp_path / "x.npz", per_class=10, size=32)
    archive = load_archive(tmp_path / "x.npz")
    assert isinstance(archive.X_train, np.memmap)
    with np.load(tmp_path / "x.npz") as plain:
        assert np.array_equal(archive.X_train, plain["X_train"])
    assert archive.class_names == ["cat", "dog", "fox"] and archive.meta["size"] == 32


def test_packed_pixels_are_the_decoded_images(tmp_path):
    src = make_class_folders(tmp_path / "src", {"a": range(3), "b": range(10, 13)})
    pack(src, tmp_path / "x.npz", per_class=3, test_size=0.34, size=24, fit="stretch")
    with np.load(tmp_path / "x.npz") as a:
        for x, path in zip(a["X_train"], a["paths_train"]):
            expected = images.decode((src / path).read_bytes(), size=24, fit="stretch")[1]
            assert np.array_equal(x, expected)


# ---- the command line

def test_cli_pack_prints_the_report_and_writes_it(messy, tmp_path):
    result = run_cli("pack", messy, "--out", tmp_path / "x.npz", "--per-class", 10, "--size", 32)
    assert result.exit_code == 0, result.output
    assert "label_conflict" in result.output and "24 train / 6 test" in result.output
    assert (tmp_path / "x.report.txt").exists()


@pytest.mark.parametrize("args,message", [
    (["{missing}", "--out", "{out}"], "does not exist"),
    (["{src}", "--out", "{tmp}/nowhere/x.npz"], "does not exist; create it first"),
    (["{src}", "--out", "{out}", "--test-size", "1.5"], "between 0 and 1"),
    (["{src}", "--out", "{out}", "--test-size", "0"], "between 0 and 1"),
    (["{src}", "--out", "{tmp}/x.zip"], "must end in .npz"),
    (["{src}", "--out", "{out}", "--per-class", "0"], "at least 2"),
    (["{one}", "--out", "{out}"], "at least two"),
    (["{empty}", "--out", "{out}"], "no class folders"),
    (["{src}", "--out", "{out}", "--per-class", "50"], "too few usable images"),
])
def test_cli_pack_errors_are_one_line(messy, tmp_path, args, message):
    one = make_class_folders(tmp_path / "one", {"only": range(3)})
    (tmp_path / "empty").mkdir()
    values = dict(missing=tmp_path / "missing", out=tmp_path / "x.npz", src=messy, tmp=tmp_path,
                  one=one, empty=tmp_path / "empty")
    result = run_cli("pack", *[a.format(**values) for a in args])
    assert result.exit_code == 1
    assert_one_error_line(result, message)
    assert not (tmp_path / "x.npz").exists()


def test_cli_pack_refuses_to_overwrite_without_force(messy, tmp_path):
    out = tmp_path / "x.npz"
    assert run_cli("pack", messy, "--out", out, "--per-class", 10, "--size", 32).exit_code == 0
    result = run_cli("pack", messy, "--out", out, "--per-class", 10, "--size", 32)
    assert result.exit_code == 1
    assert_one_error_line(result, "--force")
    assert run_cli("pack", messy, "--out", out, "--per-class", 10, "--size", 32, "--force").exit_code == 0


def test_cli_pack_warns_about_a_size_too_small_for_backbones(messy, tmp_path):
    result = run_cli("pack", messy, "--out", tmp_path / "x.npz", "--per-class", 10, "--size", 16)
    assert result.exit_code == 0 and "below 32" in result.output


#: pack in a child process; its report says what it made of each file
PACK_AND_REPORT = """
import json, sys
from toolkit.data.packer import pack
report = pack(sys.argv[1], sys.argv[2], per_class=10, size=32)
print(json.dumps({f.name: [f.status, f.detail] for f in report.files}))
"""


def without_read_privilege() -> list[str]:
    """A command prefix under which a file's permissions hold: none for a user; for root (CI
    runs as root), root without the capabilities that let it read any file."""
    if os.geteuid() != 0:
        return []
    setpriv = shutil.which("setpriv")
    assert setpriv, "setpriv (util-linux) is needed to test unreadable files as root"
    return [setpriv, "--bounding-set=-dac_override,-dac_read_search", "--"]


def test_unreadable_files_are_reported(messy, tmp_path):
    locked = messy / "fox" / "locked.jpg"
    locked.write_bytes(distinct_image(260))
    locked.chmod(0)
    done = subprocess.run([*without_read_privilege(), sys.executable, "-c", PACK_AND_REPORT,
                           str(messy), str(tmp_path / "x.npz")],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    files = json.loads(done.stdout.splitlines()[-1])
    assert files["fox/locked.jpg"][0] == "unreadable" and "ermission" in files["fox/locked.jpg"][1]
    assert sum(status == "unreadable" for status, _ in files.values()) == 1
    with np.load(tmp_path / "x.npz") as a:  # the others are packed as without it
        assert len(a["y_train"]) + len(a["y_test"]) == 30
        assert not any(p.endswith("locked.jpg") for p in [*a["paths_train"], *a["paths_test"]])
