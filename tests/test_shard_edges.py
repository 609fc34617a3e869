"""toolkit pack --format tfrecord at its edges: shards no image falls on, a run killed half-way,
--drop-suspects, classes short of images, a runner named on the command line. Each compared
with what the .npz pack (or an uninterrupted run) makes of the same folder."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from conftest import distinct_image, make_class_folders
from helpers import run_cli
from shard_source import SETTINGS, assert_same_dataset, both_ways, records, source_folder
from toolkit.core.sources import printable
from toolkit.curate import verdicts
from toolkit.data import shards, streams
from toolkit.data.packer import NotEnoughImages, pack
from toolkit.data.shard_pack import pack_shards

pytest.importorskip("apache_beam")


@pytest.fixture(scope="module")
def packed(tmp_path_factory):
    """The source and its shard pack with the fixture's settings: (source, dataset folder)."""
    tmp = tmp_path_factory.mktemp("packed")
    src = source_folder(tmp / "src")
    pack_shards(src, tmp / "ds", workers=1, **SETTINGS)
    return src, tmp / "ds"


def by_path(folder, split) -> list[dict]:
    """Every record of a split (pixels, label, path, hashes, provenance), sorted by path."""
    return sorted(records(folder, split), key=lambda r: r["path"])


def test_every_shard_its_name_promises_is_written_an_empty_one_too(packed, tmp_path):
    """One image a shard: 24 train shards for 24 images, placed by their rank's hash, so that
    some shard numbers get no image; `-of-00024` still names 24 files, each listed (0 images)
    and read as empty by every reader, and the images are the default pack's."""
    src, first = packed
    folder = tmp_path / "ds"
    pack_shards(src, folder, workers=1, images_per_shard=1, **SETTINGS)
    dataset = shards.read_dataset(folder)
    assert sorted(os.listdir(folder)) == sorted(
        [s.file for s in dataset.shards] + ["dataset.json", "report.json", "report.txt"])
    empty = [s for s in dataset.shards if s.images == 0]
    assert empty and all(s.bytes == 0 and s.per_class == [0, 0, 0] for s in empty)
    data = streams.load_shards(folder)
    import tensorflow as tf

    for split, n in (("train", 24), ("test", 6)):
        assert [s.file for s in dataset.shards if s.split == split] == [
            shards.shard_name(split, i, n) for i in range(n)]
        wanted = by_path(first, split)
        assert len(wanted) == n and by_path(folder, split) == wanted  # the same records, pixels too
        labels = sorted(int(r["label"]) for r in wanted)
        for ordered in (True, False):
            read = shards.read_split(folder, split, shuffle_buffer=0 if ordered else 8, seed=1)
            assert sorted(int(y) for _, y in read.as_numpy_iterator()) == labels
        assert sorted(shards.read_labels(dataset, split).tolist()) == labels
        rows = shards.numbered_records(dataset, split, cycle_length=4)
        assert sorted(int(row) for row, _ in rows.as_numpy_iterator()) == list(range(n))
        stream = getattr(data, f"X_{split}")
        assert sorted(stream.paths()) == [r["path"] for r in wanted]
        assert sum(len(batch) for batch in stream.batches(5)) == n
        plain = tf.data.Dataset.list_files(f"{folder}/{split}-*.tfrecord").interleave(tf.data.TFRecordDataset)
        assert sum(1 for _ in plain) == n
    assert {k: v for k, v in json.loads((folder / "report.json").read_text()).items() if k != "out"} == {
        k: v for k, v in json.loads((first / "report.json").read_text()).items() if k != "out"}
    assert np.bincount(data.y_train).tolist() == [8, 8, 8]


#: SETTINGS as the command line's options.
FLAGS = ("--per-class", "10", "--size", "32", "--seed", "5")


def test_a_run_killed_while_it_writes_shards_leaves_no_dataset_and_a_re_run_converges(packed, tmp_path):
    """SIGKILL (no handler runs) once the pipeline has written a shard into the work folder:
    nothing is under DIR's name, and the next pack removes the dead run's work folder and
    lock and writes what an uninterrupted pack writes."""
    src, first = packed
    out = tmp_path / "ds"
    for _ in range(3):  # from the first shard to the end is about 0.3 s here: a loaded machine may miss it
        process = subprocess.Popen([sys.executable, "-m", "toolkit.cli", "pack", str(src), "--out", str(out),
                                    "--format", "tfrecord", "--workers", "1", *FLAGS],
                                   stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            deadline = time.monotonic() + 180  # Beam's import and start-up on a loaded machine
            while (time.monotonic() < deadline and process.poll() is None
                   and not list(tmp_path.glob(".ds.*.part/data/*"))):
                time.sleep(0.001)
            assert process.poll() is not None or list(tmp_path.glob(".ds.*.part/data/*")), \
                "no shard was written in three minutes"
            process.send_signal(signal.SIGKILL)
        finally:
            process.kill()
            output = process.communicate(timeout=60)[0]
        if process.returncode == -signal.SIGKILL and not out.exists():
            break
        assert process.returncode in (0, -signal.SIGKILL), output
        shutil.rmtree(out)  # it moved its folder into place before the kill: again
    else:
        pytest.fail("the pack ended before it was killed, three times")
    assert not out.exists() and list(tmp_path.glob(".ds.*.part"))  # the dead run's work folder, only
    pack_shards(src, out, workers=1, **SETTINGS)
    assert_same_dataset(first, out, "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds"]  # no work folder, no lock left


def test_drop_suspects_leaves_out_what_the_npz_pack_leaves_out(tmp_path):
    """review.json's suspects are left out but where a decision was made (moved, dropped), and
    what came or changed after the review is packed with pack's warning: both formats alike."""
    src = source_folder(tmp_path / "src")
    suspects = {"cat/img0003.jpg", "dog/img0104.jpg", "fox/img0205.jpg", "dog/img0100.jpg", "cat/img0001.jpg"}
    judged = {printable(p.relative_to(src).as_posix()): p for p in src.glob("*/**/*") if p.is_file()}
    entries = [{"file": name, "label": name.split("/")[0], "suspect": name in suspects,
                "sha256": hashlib.sha256(p.read_bytes()).hexdigest()} for name, p in sorted(judged.items())]
    (src / verdicts.REVIEW_FILE).write_text(json.dumps({"class_names": ["cat", "dog", "fox"],
                                                         "images": entries}))
    (src / "fox" / "late.jpg").write_bytes(distinct_image(777))  # a crawl's top-up after the review
    (src / "cat" / "img0007.jpg").write_bytes(distinct_image(778))  # a new picture under a judged name
    found = both_ways(src, tmp_path, drop_suspects=True, **SETTINGS)
    for split, (in_npz, in_shards) in found["rows"].items():
        assert in_shards == in_npz, split
    npz_report, shard_report = found["reports"]
    assert shard_report == npz_report
    statuses = {f["path"]: f["status"] for f in shard_report["files"]}
    assert [statuses[f] for f in sorted(suspects)] == [
        "dropped_in_review", "suspect", statuses["dog/img0100.jpg"], "suspect", "suspect"]
    assert statuses["dog/img0100.jpg"] in ("packed", "surplus")  # moved to fox: decided, not dropped
    assert statuses["fox/late.jpg"] == statuses["cat/img0007.jpg"] == "packed"
    assert shard_report["warnings"] == [
        f"2 usable images came or changed after the review and are packed unjudged: run `toolkit "
        f"review {src}` again, then pack"]


def test_a_class_of_fewer_than_two_usable_images_fails_as_pack_does_with_nothing_written(tmp_path):
    """fox holds only files that are no image, wolf one picture three times (exact copies):
    with or without --allow-fewer, the Beam pack fails with the .npz pack's message and report
    (its counts: the Beam pack keeps no list of files in memory), and leaves nothing written."""
    src = make_class_folders(tmp_path / "src", {"cat": range(0, 12), "dog": range(100, 112)})
    (src / "fox").mkdir()
    (src / "fox" / "empty.jpg").write_bytes(b"")
    (src / "fox" / "page.jpg").write_bytes(b"<!DOCTYPE html><html>Access denied</html>")
    (src / "wolf").mkdir()
    for name in ("a.jpg", "b.jpg", "c.jpg"):
        (src / "wolf" / name).write_bytes(distinct_image(300))
    out = tmp_path / "out"
    out.mkdir()
    for allow_fewer, message in ((False, "for --per-class 10: fox 0, wolf 1; add images"),
                                 (True, "class fox, wolf has fewer than 2 usable images")):
        with pytest.raises(NotEnoughImages, match=message) as beam_error:
            pack_shards(src, out / "ds", workers=1, allow_fewer=allow_fewer, **SETTINGS)
        assert os.listdir(out) == []  # no dataset, no work folder, no lock
        with pytest.raises(NotEnoughImages) as npz_error:
            pack(src, out / "x.npz", allow_fewer=allow_fewer, **SETTINGS)
        assert str(beam_error.value) == str(npz_error.value)
        reports = [e.value.report for e in (beam_error, npz_error)]
        assert reports[0].table() == reports[1].table()  # what the command line shows
        assert [{k: v for k, v in r.to_json().items() if k not in ("out", "files")} for r in reports] == [
            {k: v for k, v in reports[1].to_json().items() if k not in ("out", "files")}] * 2
        assert os.listdir(out) == []


def test_the_command_line_packs_with_a_named_runner_and_a_beam_option(packed, tmp_path):
    """--runner DirectRunner and a valid --beam-option pass the checks that refuse unknown ones
    and reach the pipeline: the pack the library writes with the same settings."""
    src, first = packed
    result = run_cli("pack", src, "--out", tmp_path / "ds", "--format", "tfrecord", "--workers", 1, *FLAGS,
                     "--runner", "DirectRunner", "--beam-option", "direct_num_workers=1")
    assert result.exit_code == 0, result.output
    assert "24 train / 6 test images of 32x32 as TFRecord shards" in result.output
    assert_same_dataset(first, tmp_path / "ds", "out")
