"""toolkit review DIR/ of a packed dataset (pack --format tfrecord): every record judged from its own
pixels, as review judges the folder it was packed from, and what it refuses."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from dataclasses import asdict

import pytest

from browser import browser, console_errors, requested_urls  # noqa: F401 (a fixture)
from conftest import shapes_dataset
from helpers import (
    REVIEW_QUICK,
    REVIEW_QUICK_FLAGS,
    assert_one_error_line,
    run_cli,
    tree,
    write_shape_folders,
)
from toolkit.core import images
from toolkit.core.errors import ToolkitError
from toolkit.core.sources import list_files
from toolkit.curate import reviewer
from toolkit.curate.review_page import HTML_THUMBNAIL_SIDE
from toolkit.data import shards
from toolkit.data.records import example
from toolkit.data.review_shards import record_thumbnails, review_dataset
from toolkit.models import embedder

pytest.importorskip("apache_beam")

CHECKS = images.Checks(min_side=16)


@pytest.fixture(scope="module")
def packed(tmp_path_factory):
    """The toy shapes as class folders of 32 px PNGs, and the same packed as PNG records at
    32 px (every image: 16 a class, a quarter in the test split): the same pixels in both."""
    from toolkit.data.shard_pack import pack_shards

    tmp = tmp_path_factory.mktemp("review-dataset")
    write_shape_folders(tmp / "src", 16, 32, seed=2)
    pack_shards(tmp / "src", tmp / "ds", workers=1, encoding="png", per_class=16, size=32, seed=3,
                test_size=0.25, checks=CHECKS, images_per_shard=20)
    return tmp / "src", tmp / "ds"


@pytest.fixture(autouse=True)
def embedding_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TOOLKIT_CACHE_DIR", str(tmp_path / "cache"))


def records(ds) -> list[tuple[str, str]]:
    """(path, class) of every record of both splits."""
    dataset = shards.read_dataset(ds)
    return [(bytes(p).decode(), bytes(c).decode()) for split in shards.SPLITS
            for p, c in zip(shards.read_column(dataset, split, "path"),
                            shards.read_column(dataset, split, "class"))]


def test_review_of_a_dataset_judges_every_record_as_a_review_of_the_same_pixels_in_a_folder(
        packed, tmp_path, monkeypatch):
    src, packed_ds = packed
    ds = tmp_path / "ds"
    shutil.copytree(packed_ds, ds)
    result = run_cli("review", ds, *REVIEW_QUICK_FLAGS)
    assert result.exit_code == 0, result.output
    assert "total" in result.output
    assert f"wrote {ds / 'review.json'} and {ds / 'review.html'}" in result.output
    judged = json.loads((ds / "review.json").read_text())
    entries = judged["images"]
    assert sorted((e["file"], e["label"]) for e in entries) == sorted(records(ds))
    assert len(entries) == 48 and judged["class_names"] == ["bar", "disc", "square"]
    # its own cache: the folder review embeds the files itself, and its scores still match
    folder = reviewer.review(src, **REVIEW_QUICK, checks=CHECKS, write=False, cache_dir=tmp_path / "own")
    assert (tmp_path / "own").is_dir()
    assert entries == [asdict(v) for v in folder.verdicts]  # the same verdicts, scores, sha256s
    page = (ds / "review.html").read_text()
    thumbnails = re.findall(r'<img src="data:image/jpeg;base64,[A-Za-z0-9+/=]+"', page)
    assert len(thumbnails) == page.count("<img") == 48
    assert all(f"<small>{e['file']}</small>" in page for e in entries)
    assert "--serve</code> shows every one" not in page and "SOURCE --serve" in page
    def no_backbone(*args, **kwargs):
        raise AssertionError("the backbone ran although every record's embedding is cached")

    monkeypatch.setattr(embedder, "pooled_backbone", no_backbone)
    again = review_dataset(ds, **REVIEW_QUICK, write=False)  # the library call
    assert [asdict(v) for v in again.verdicts] == entries
    dataset = shards.read_dataset(ds)  # still a dataset, as training reads it, and pack --force's
    shards.verify(dataset)
    assert shards.is_toolkit_dataset(ds) and sorted(p.name for p in ds.iterdir() if "review" in p.name) == [
        "review.html", "review.json"]


def test_serve_and_reference_with_a_dataset_are_one_error_line_and_write_nothing(packed, tmp_path):
    src, ds = packed
    before = tree(ds)
    assert_one_error_line(run_cli("review", ds, "--serve", *REVIEW_QUICK_FLAGS),
                          "review the SOURCE folder it was packed from with --serve")
    assert_one_error_line(run_cli("review", ds, "--reference", src, *REVIEW_QUICK_FLAGS),
                          "review the SOURCE folder it was packed from with --reference")
    assert tree(ds) == before


def test_a_damaged_shard_is_one_error_line_that_names_it_and_nothing_is_written(packed, tmp_path):
    _, packed_ds = packed
    ds = tmp_path / "ds"
    shutil.copytree(packed_ds, ds)
    shard = ds / shards.read_dataset(ds).shards[-1].file
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF
    shard.write_bytes(bytes(data))
    before = tree(ds)
    assert_one_error_line(run_cli("review", ds, *REVIEW_QUICK_FLAGS), f"shard {shard} is damaged")
    assert tree(ds) == before and not (tmp_path / "cache").exists()


def hand_made(tmp_path, rows, sha256=None, junk=()):
    """A dataset written record by record (as pack never would): (label, path) rows of
    classes a and b, all in train; `sha256` replaces every record's sha256 feature; the
    records whose path is in `junk` hold bytes that are no image."""
    x, _ = shapes_dataset(len(rows), 32, seed=0)
    records = []
    for (label, path), pixels in zip(rows, x):
        data = b"no image" if path in junk else shards.encode_image(pixels, "png")
        records.append((label, example({"image": data, "label": label, "class": "ab"[label], "split": "train",
                                        "path": path, "sha256": sha256 or hashlib.sha256(data).hexdigest()})))
    ds = tmp_path / "ds"
    ds.mkdir(parents=True)
    written = [shards.write_shard(ds, "train", 0, 1, records, 2),
               shards.write_shard(ds, "test", 0, 1, [], 2)]
    shards.write_dataset(ds, ["a", "b"], {"size": 32, "encoding": "png"}, {}, written, "test", "now")
    return ds


def test_a_record_path_that_is_no_utf8_is_named_as_pack_names_files(tmp_path):
    """A hand-made record whose path holds a byte that is no UTF-8: its verdict and its
    thumbnail are keyed by the name printable() gives such a file (\\xNN), no traceback."""
    ds = hand_made(tmp_path, [(0, b"a/0\xff.png"), (0, "a/1.png"), (1, "b/0.png"), (1, "b/1.png")])
    result = run_cli("review", ds, *REVIEW_QUICK_FLAGS)
    assert result.exit_code == 0, result.output
    files = [e["file"] for e in json.loads((ds / "review.json").read_text())["images"]]
    assert files == ["a/0\\xff.png", "a/1.png", "b/0.png", "b/1.png"]
    page = (ds / "review.html").read_text()
    assert "<small>a/0\\xff.png</small>" in page and page.count("<img") == 4


def test_records_are_judged_in_the_order_a_folder_review_walks_nested_folders(tmp_path):
    """`a/sub/x.png` and `a/sub-a.png`: list_files walks `sub` first (its name sorts before
    `sub-a.png`), where a string sort of the paths puts `a/sub-a.png` first ('-' < '/')."""
    names = ["a/sub-a.png", "a/sub/x.png", "a/sub.png", "a/sub/sub/y.png"]
    for name in names:
        (tmp_path / "src" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "src" / name).touch()
    walked = [str(p.relative_to(tmp_path / "src")) for p in list_files(tmp_path / "src" / "a")]
    ds = hand_made(tmp_path, [(0, name) for name in names] + [(1, "b/0.png"), (1, "b/1.png")])
    result = run_cli("review", ds, *REVIEW_QUICK_FLAGS)
    assert result.exit_code == 0, result.output
    files = [e["file"] for e in json.loads((ds / "review.json").read_text())["images"]]
    assert files == walked + ["b/0.png", "b/1.png"] and walked[0] == "a/sub/sub/y.png"


def test_a_record_that_cannot_be_made_a_thumbnail_is_left_out_not_a_traceback(tmp_path):
    ds = hand_made(tmp_path, [(0, "a/0.png"), (0, "a/1.png"), (1, "b/0.png")], junk={"a/1.png"})
    made = record_thumbnails(shards.read_dataset(ds), {"a/0.png", "a/1.png"})
    assert sorted(made) == ["a/0.png"] and made["a/0.png"][:2] == b"\xff\xd8"  # a JPEG


def test_a_shard_removed_after_the_check_is_one_error_that_names_it(packed, tmp_path):
    """The embedding and thumbnail passes read the shards again: one gone meanwhile is the
    shard readers' one line, not a FileNotFoundError."""
    _, packed_ds = packed
    ds = tmp_path / "ds"
    shutil.copytree(packed_ds, ds)
    dataset = shards.read_dataset(ds)
    (ds / dataset.shards[0].file).unlink()
    with pytest.raises(ToolkitError, match=rf"^shard {re.escape(str(ds / dataset.shards[0].file))} "
                                           r"cannot be read \(No such file or directory\)"):
        record_thumbnails(dataset, {"square/000.png"})


def test_a_bad_sha256_or_two_records_of_one_path_are_one_error_line(tmp_path):
    ds = hand_made(tmp_path / "1", [(0, "a/0.png"), (0, "a/1.png"), (1, "b/0.png"), (1, "b/1.png")],
                   sha256=b"\xff\xfe not hex")
    before = tree(ds)
    assert_one_error_line(run_cli("review", ds, *REVIEW_QUICK_FLAGS), "not 64 hex digits; pack again")
    assert tree(ds) == before
    ds = hand_made(tmp_path / "2", [(0, "a/0.png"), (0, "a/0.png"), (1, "b/0.png"), (1, "b/1.png")])
    before = tree(ds)
    assert_one_error_line(run_cli("review", ds, *REVIEW_QUICK_FLAGS), "two records of a/0.png")
    assert tree(ds) == before


def test_a_class_of_one_record_is_the_folder_review_s_one_error_line(tmp_path):
    """pack never makes one (it refuses a class of fewer than 2 usable images): a dataset made
    by hand, whose class `b` has one record, is refused as a folder with one such image is."""
    ds = hand_made(tmp_path, [(0, "a/0.png"), (0, "a/1.png"), (0, "a/2.png"), (1, "b/0.png")])
    before = tree(ds)
    assert_one_error_line(run_cli("review", ds, *REVIEW_QUICK_FLAGS),
                          "class b (1) has fewer than 2 usable images")
    assert tree(ds) == before


def test_the_page_of_a_dataset_review_shows_each_record_s_thumbnail_in_a_browser(
        packed, tmp_path, browser):  # noqa: F811
    """In Chromium, from the file alone: every card's thumbnail decodes to a picture of the
    record (no request leaves the page, no console error), under the record's path."""
    _, packed_ds = packed
    ds = tmp_path / "ds"
    shutil.copytree(packed_ds, ds)
    review_dataset(ds, **REVIEW_QUICK)
    browser.get((ds / "review.html").as_uri())
    cards = browser.execute_script(
        "return [...document.querySelectorAll('figure')].map(f => [f.querySelector('img').naturalWidth,"
        " f.querySelector('small').textContent]);")
    assert len(cards) == 48 and all(width == HTML_THUMBNAIL_SIDE for width, _ in cards), cards[:3]
    assert sorted(name for _, name in cards) == sorted(path for path, _ in records(ds))
    assert "toolkit review SOURCE --serve" in browser.find_element("tag name", "body").text
    assert console_errors(browser) == [] and requested_urls(browser) == [(ds / "review.html").as_uri()]
