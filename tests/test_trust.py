"""Issue 17: what the toolkit reads or writes in a folder someone else shared cannot make it write
outside that folder, run code, or read files from elsewhere."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from toolkit.core.errors import ToolkitError
from toolkit.core.files import open_to_append, write_text


def test_a_dangling_link_is_refused_too_and_nothing_is_created(tmp_path):
    (tmp_path / "log.jsonl").symlink_to(tmp_path / "elsewhere.txt")
    with pytest.raises(ToolkitError, match="symbolic link"):
        open_to_append(tmp_path / "log.jsonl")
    assert not (tmp_path / "elsewhere.txt").exists()


def test_an_append_refuses_what_is_not_a_regular_file(tmp_path):
    os.mkfifo(tmp_path / "fifo.jsonl")
    with pytest.raises(ToolkitError, match="not a regular file"):
        open_to_append(tmp_path / "fifo.jsonl")


def test_an_atomic_write_refuses_a_link_and_leaves_its_target_alone(tmp_path):
    outside = tmp_path / "profile"
    outside.write_text("mine\n")
    (tmp_path / "review.json").symlink_to(outside)
    with pytest.raises(ToolkitError, match=r"review\.json is a symbolic link"):
        write_text(tmp_path / "review.json", "{}")
    assert outside.read_text() == "mine\n"
    assert (tmp_path / "review.json").is_symlink()


def test_a_linked_folder_above_the_file_still_works(tmp_path):
    """A dataset moved to a bigger disk and linked back keeps working: only the file itself
    may not be a link."""
    disk = tmp_path / "bigdisk"
    disk.mkdir()
    (tmp_path / "datasets").symlink_to(disk)
    fd = open_to_append(tmp_path / "datasets" / "cat.manifest.jsonl")
    try:
        os.write(fd, b"{}\n")
    finally:
        os.close(fd)
    write_text(tmp_path / "datasets" / "review.json", "{}")
    assert (disk / "cat.manifest.jsonl").read_text() == "{}\n"
    assert (disk / "review.json").read_text() == "{}"


# --------------------------------------------------------------------------- export folders

def export_folder(tmp_path, fmt: str, model: str) -> Path:
    folder = tmp_path / "export"
    folder.mkdir()
    (folder / "export.json").write_text(json.dumps({
        "format": fmt, "model": model, "class_names": ["a", "b"],
        "input": {"shape": [None, 32, 32, 3], "fit": "crop"}}))
    return folder


@pytest.mark.parametrize("model", ["../../elsewhere/model.tflite", "/tmp/model.tflite", "other.tflite"])
def test_an_export_loads_its_model_only_from_the_name_its_format_fixes(tmp_path, model):
    from toolkit.ship.export_folder import load_export

    with pytest.raises(ToolkitError, match="model is always 'model.tflite'"):
        load_export(export_folder(tmp_path, "litert", model))


def test_an_export_model_that_is_a_link_out_of_its_folder_is_refused(tmp_path):
    from toolkit.ship.export_folder import load_export

    outside = tmp_path / "someone-elses.tflite"
    outside.write_bytes(b"TFL3")
    folder = export_folder(tmp_path, "litert", "model.tflite")
    (folder / "model.tflite").symlink_to(outside)
    with pytest.raises(ToolkitError, match="leads outside"):
        load_export(folder)


def test_a_saved_model_export_loads_only_when_trusted(tmp_path):
    from toolkit.ship.export_folder import load_export
    from toolkit.ship.inference import predict

    folder = export_folder(tmp_path, "saved_model", "saved_model")
    (folder / "saved_model").mkdir()
    for load in (lambda: load_export(folder), lambda: predict(folder, [tmp_path / "x.png"])):
        with pytest.raises(ToolkitError, match=r"which is code.*your own exports included.*"
                                               r"--trust-saved-model"):
            load()
    # trusted, it goes on to TensorFlow, which finds no graph in the empty folder
    with pytest.raises(ToolkitError, match="cannot be loaded by tensorflow"):
        load_export(folder, trust_saved_model=True)


def test_onnx_external_data_must_lie_inside_the_export_folder(tmp_path):
    onnx = pytest.importorskip("onnx")  # tf2onnx, a dependency, brings it
    from onnx import TensorProto, helper

    from toolkit.ship.export_folder import load_export

    secret = tmp_path / "secret.bin"
    secret.write_bytes(np.arange(4, dtype="float32").tobytes())
    weights = TensorProto(name="w", data_type=TensorProto.FLOAT, dims=[4])
    weights.data_location = TensorProto.EXTERNAL
    for key, value in {"location": "../secret.bin", "offset": "0", "length": "16"}.items():
        weights.external_data.add(key=key, value=value)
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "w"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])], initializer=[weights])
    folder = export_folder(tmp_path, "onnx", "model.onnx")
    onnx.save(helper.make_model(graph), str(folder / "model.onnx"), save_as_external_data=False)
    with pytest.raises(ToolkitError, match=r"secret\.bin leads outside"):
        load_export(folder)


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


# --------------------------------------------------------------------------- two programs at once

def hold_in_another_process(target, what: str):
    """A child process that holds the lock of `target` (core/locks.holding) until killed;
    returned once it holds it. The caller kills it."""
    import subprocess
    import sys

    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\nfrom toolkit.core.locks import holding\n"
         f"with holding({str(target)!r}, {what!r}):\n    print('held', flush=True)\n"
         "    time.sleep(60)\n"], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    return holder


def test_a_second_holder_is_refused_with_the_first_ones_pid_and_takes_over_when_it_is_gone(tmp_path):

    from toolkit.core.locks import holding

    target = tmp_path / "cat"
    holder = hold_in_another_process(target, "class cat")
    try:
        with pytest.raises(ToolkitError, match=rf"^class cat is in use by another toolkit process "
                                               rf"\(pid {holder.pid}\); wait"):
            with holding(target, "class cat"):
                pass
    finally:
        holder.kill()
        holder.wait()
    with holding(target, "class cat"):  # the killed holder's lock went with it
        assert (tmp_path / ".cat.lock").read_text() == f"{os.getpid()}\n"
    assert not (tmp_path / ".cat.lock").exists()  # removed on release


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


# --------------------------------------------------------------------------- pages

@pytest.mark.slow
def test_a_page_never_inlines_a_file_that_a_link_in_a_run_folder_points_to(finished_run, tmp_path):
    import base64
    import io
    import shutil

    from PIL import Image

    from toolkit.reports.report_html import write_comparison_page

    private = io.BytesIO()
    Image.new("RGB", (7, 5), (1, 2, 3)).save(private, "PNG")
    (tmp_path / "private.png").write_bytes(private.getvalue())
    own = finished_run[0]
    shared = tmp_path / "shared-run"
    shutil.copytree(own, shared)
    (shared / "curves.png").unlink()
    (shared / "curves.png").symlink_to(tmp_path / "private.png")
    rows = [{"strategy": "cnn", "run": str(run), "accuracy": 0.5, "macro_f1": 0.5, "epochs": 1,
             "seconds": 1} for run in (own, shared)]
    (tmp_path / "cmp").mkdir()
    page = write_comparison_page(tmp_path / "cmp", rows).read_text()
    assert base64.b64encode((own / "curves.png").read_bytes()).decode() in page  # its own plot
    assert base64.b64encode(private.getvalue()).decode() not in page


def test_the_gallery_never_appends_decisions_through_a_link(tmp_path):
    from toolkit.core import decisions

    outside = tmp_path / "bashrc"
    outside.write_text("# profile\n")
    shared = tmp_path / "shared"
    shared.mkdir()
    (shared / "decisions.jsonl").symlink_to(outside)
    with pytest.raises(ToolkitError, match=r"decisions\.jsonl is a symbolic link"):
        decisions.append(shared, [decisions.Decision("cat/$(touch pwned).jpg", decisions.DROP)])
    assert outside.read_text() == "# profile\n"


@pytest.mark.parametrize("command", ["pack", "review"])
def test_a_second_pack_or_review_of_the_same_target_stops_with_one_line_naming_the_holder(
        tmp_path, command):

    from conftest import make_class_folders
    from helpers import assert_one_error_line, run_cli
    from toolkit.core.locks import lock_path

    source = make_class_folders(tmp_path / "src", {"a": range(0, 6), "b": range(6, 12)}, size=(128, 128))
    target = tmp_path / "a.npz" if command == "pack" else source / "review.json"
    holder = hold_in_another_process(target, "x")
    try:
        args = (["pack", source, "--out", target, "--size", "32", "--allow-fewer"] if command == "pack"
                else ["review", source, "--weights", "none", "--size", "32"])
        result = run_cli(*args)
        assert result.exit_code == 1
        assert_one_error_line(result, f"in use by another toolkit process (pid {holder.pid})")
    finally:
        holder.kill()
        holder.wait()
    assert lock_path(target).exists()  # the killed holder's, left for the next to take over
    assert not (target.exists() and command == "pack")


def test_a_link_out_of_its_class_folder_is_never_read_but_a_linked_class_folder_is(tmp_path):
    from conftest import make_class_folders
    from toolkit.core.sources import OUTSIDE, find_usable
    from toolkit.data.npz import load_archive
    from toolkit.data.packer import pack

    private = make_class_folders(tmp_path / "home", {"photos": range(100, 102)}) / "photos"
    disk = make_class_folders(tmp_path / "bigdisk", {"dog": range(10, 16)})
    source = make_class_folders(tmp_path / "shared", {"cat": range(0, 6)})
    (source / "dog").symlink_to(disk / "dog")  # moved to a bigger disk, linked back: still read
    (source / "cat" / "img9000.jpg").symlink_to(private / "img0100.jpg")
    (source / "cat" / "more").symlink_to(private)  # a folder link out: nothing in it is read
    _, files = find_usable(source)
    outside = sorted(f.name for f in files if f.status == OUTSIDE)
    assert outside == ["cat/img9000.jpg", "cat/more/img0100.jpg", "cat/more/img0101.jpg"]
    assert all(f.info is None for f in files if f.status == OUTSIDE)  # never even decoded
    report = pack(source, tmp_path / "a.npz", per_class=6, size=32, test_size=0.5)
    archive = load_archive(tmp_path / "a.npz")
    assert len(archive.y_train) + len(archive.y_test) == 12
    assert "a link out of its class folder, skipped" in report.table()


# --------------------------------------------------------------------------- names someone else chose

def test_pack_refuses_a_class_folder_name_that_crawl_would_refuse(tmp_path):
    from conftest import make_class_folders
    from helpers import assert_one_error_line, run_cli

    source = make_class_folders(tmp_path / "src", {"cat": range(0, 4), "dog\nfox": range(4, 8)})
    result = run_cli("pack", source, "--out", tmp_path / "a.npz", "--size", "32", "--allow-fewer")
    assert_one_error_line(result, "class folder 'dog\\nfox' holds a character that is not allowed")
    assert not (tmp_path / "a.npz").exists()


def test_an_archive_whose_class_names_hold_a_newline_is_refused(tmp_path):
    from helpers import write_archive
    from toolkit.data.npz import load_archive

    path = write_archive(tmp_path / "a.npz", n_per_class=5,
                         class_names=np.array(["circle", "square\ncircle", "triangle"]))
    with pytest.raises(ToolkitError, match=r"class name 'square\\ncircle' holds a control character"):
        load_archive(path)


@pytest.mark.slow
def test_markup_in_class_names_stays_text_in_the_model_card_and_the_terminal(tmp_path):
    import re

    from PIL import Image

    from helpers import run_cli, write_archive
    from toolkit.training.trainer import train

    names = np.array(["a|b", "<b>bold</b>", "`tick`"])
    data = write_archive(tmp_path / "a.npz", n_per_class=10, class_names=names)
    run = train(data, "cnn", out=tmp_path / "run", epochs=1, weights="none", batch_size=16,
                precision="float32", verbose=0, cache_dir=str(tmp_path / "cache"))
    card = (run.folder / "MODEL_CARD.md").read_text()
    outside_code = re.sub(r"`[^`]*`", "", card)  # inside a code span, markup is text
    assert "<b>" not in outside_code and "\\<b\\>bold\\</b\\>" in card
    rows = [line for line in card.splitlines() if line.startswith("| ") and "precision" not in line]
    assert len(rows) == 3 and all(len(re.findall(r"(?<!\\)\|", row)) == 6 for row in rows), rows
    odd = tmp_path / "evil\x1b]0;pwned\x07.png"
    Image.new("RGB", (40, 40), (9, 9, 9)).save(odd, "PNG")
    broken = tmp_path / "broken\x1b[2J.png"
    broken.write_bytes(b"not an image")
    result = run_cli("predict", run.folder, odd, broken)
    assert result.exit_code == 0, result.output
    assert "\x1b" not in result.output and "\\x1b]0;pwned\\x07" in result.output
    assert "warning: " in result.output and "broken\\x1b[2J.png" in result.output


def test_the_gallery_shows_no_file_outside_its_class_folder_whatever_review_json_names(tmp_path):
    import json
    from urllib.parse import quote

    from conftest import distinct_image
    from gallery_client import fetch, key, start, stop, write_review

    private = tmp_path / "home"
    private.mkdir()
    (private / "secret.jpg").write_bytes(distinct_image(99))
    source = write_review(tmp_path / "shared", {"cat": ["a.jpg", "b.jpg"], "dog": ["c.jpg", "d.jpg"]})
    (source / "cat" / "link.jpg").symlink_to(private / "secret.jpg")
    review = json.loads((source / "review.json").read_text())
    for name in ("cat/../../home/secret.jpg", str(private / "secret.jpg"), "cat/link.jpg"):
        review["images"].append({**review["images"][0], "file": name})
    (source / "review.json").write_text(json.dumps(review))
    server = start(source)
    try:
        cookie = key(server)
        assert fetch(server.address + "image?f=cat/a.jpg", headers=cookie)[0] == 200
        for name in ("cat/../../home/secret.jpg", str(private / "secret.jpg"), "cat/link.jpg"):
            assert fetch(server.address + f"image?f={quote(name)}", headers=cookie)[0] == 404, name
    finally:
        stop(server)


def test_the_command_line_asks_for_trust_before_loading_a_saved_model(tmp_path):
    from helpers import assert_one_error_line, run_cli

    folder = export_folder(tmp_path, "saved_model", "saved_model")
    (folder / "saved_model").mkdir()
    (tmp_path / "x.png").write_bytes(b"")
    for command in (["predict", folder, tmp_path / "x.png"], ["evaluate", folder]):
        assert_one_error_line(run_cli(*command), "pass --trust-saved-model")
        assert_one_error_line(run_cli(*command, "--trust-saved-model"), "cannot be loaded by tensorflow")


@pytest.mark.slow
def test_a_run_folder_has_one_writer_at_a_time(finished_run, tmp_path):
    import shutil

    from helpers import assert_one_error_line, run_cli

    run = tmp_path / "run"
    shutil.copytree(finished_run[0], run)
    holder = hold_in_another_process(run, "x")
    try:
        result = run_cli("train", "--resume", run)
        assert_one_error_line(result, f"the run {run} is in use by another toolkit process "
                                      f"(pid {holder.pid})")
    finally:
        holder.kill()
        holder.wait()
    assert_one_error_line(run_cli("train", "--resume", run), "already finished")
