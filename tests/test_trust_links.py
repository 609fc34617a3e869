"""Issue 17: a link (or what is not a regular file) in a folder someone else shared is never
written through, and a link out of its folder is never read or shown."""

from __future__ import annotations

import os

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
