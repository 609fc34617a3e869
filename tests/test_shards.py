"""toolkit pack --format tfrecord: the same pack as the .npz, as TFRecord shards written by an Apache
Beam pipeline on the local runner, read back with plain tf.data."""

from __future__ import annotations

import io
import json
import os
import shutil
import sys
import urllib.request

import numpy as np
import pytest
from PIL import Image

from fake_filesystem import PLACEHOLDER, FakeFileSystem, urls_used_as_paths
from helpers import assert_one_error_line, recording_the_internet, run_cli
from shard_source import SETTINGS, assert_same_dataset, both_ways, records, source_folder
from toolkit.core import images
from toolkit.core.errors import ToolkitError
from toolkit.data import pack_out, shards
from toolkit.data.npz import load_archive
from toolkit.data.packer import NotEnoughImages, pack
from toolkit.data.shard_pack import pack_shards

pytest.importorskip("apache_beam")

#: What the shard pack of `packed` asked of the internet (hosts other than this machine).
ASKED: list[str] = []


@pytest.fixture(scope="module")
def packed(tmp_path_factory):
    """The source packed both ways with the same seed: (source, the .npz, the dataset folder)."""
    tmp = tmp_path_factory.mktemp("packed")
    src = source_folder(tmp / "src")
    pack(src, tmp / "x.npz", **SETTINGS)
    with recording_the_internet(ASKED):
        pack_shards(src, tmp / "ds", workers=1, **SETTINGS)
    return src, tmp / "x.npz", tmp / "ds"


def test_a_local_pack_asks_nothing_of_the_internet(packed):
    """The pack runs on Beam's FnApiRunner itself: Beam's DirectRunner would first try to
    download its Prism runner from GitHub (and, where it can, run the pack there)."""
    assert ASKED == []
    asked: list[str] = []
    with recording_the_internet(asked), pytest.raises(OSError):  # the recorder sees what urllib asks
        urllib.request.urlopen("http://example.test/", timeout=10)
    assert asked and all(line.endswith("example.test") for line in asked)


def test_both_formats_hold_the_same_files_labels_and_split(packed):
    _, npz, folder = packed
    archive = load_archive(npz)
    with np.load(npz) as a:
        paths = {"train": a["paths_train"].tolist(), "test": a["paths_test"].tolist()}
    for split in shards.SPLITS:
        labels = getattr(archive, f"y_{split}").tolist()
        in_npz = sorted(zip(paths[split], labels))
        in_shards = sorted((r["path"], int(r["label"])) for r in records(folder, split))
        assert in_shards == in_npz and len(in_npz) == (24 if split == "train" else 6)
    # the report says the same of every file: same statuses, same twins, same moves
    npz_report = json.loads((npz.parent / "x.report.json").read_text())
    shard_report = json.loads((folder / "report.json").read_text())
    assert {k: v for k, v in shard_report.items() if k != "out"} == {
        k: v for k, v in npz_report.items() if k != "out"}
    statuses = {f["path"]: f["status"] for f in shard_report["files"]}
    assert statuses["fox/caf\\xe9.jpg"] in ("packed", "surplus")  # a name that is not UTF-8
    assert statuses["cat/img0001.jpg"] == "dropped_in_review"
    assert statuses["fox/near_copy.jpg"] == "duplicate" and statuses["cat/shared.jpg"] == "label_conflict"
    moved = next(f for f in shard_report["files"] if f["path"] == "dog/img0100.jpg")
    assert moved["class"] == "fox" and moved["moved_from"] == "dog"


def test_records_hold_the_packed_pixels_hashes_and_provenance(packed):
    src, npz, folder = packed
    archive = load_archive(npz)
    with np.load(npz) as a:
        row = {p: i for i, p in enumerate(a["paths_train"].tolist())}
    dataset = shards.read_dataset(folder)
    import tensorflow as tf

    decode = shards.decode(dataset)
    for r in records(folder, "train"):
        pixels = decode(tf.constant(r["image"])).numpy()
        original = archive.X_train[row[r["path"]]]
        assert pixels.shape == (32, 32, 3) and pixels.dtype == np.uint8
        # the record holds the .npz's pixels as a JPEG: what Pillow reads back from their JPEG
        assert np.array_equal(pixels, np.asarray(Image.open(io.BytesIO(shards.encode_image(original)))))
        info, _ = images.decode((src / r["path"]).read_bytes())
        assert r["sha256"] == info.sha256 and r["phash"] == f"{info.phash:016x}"
        assert (r["width"], r["height"]) == (info.width, info.height)
        assert r["class"] == dataset.class_names[r["label"]] and r["split"] == "train"
        seed = int(r["path"][len("cat/img"):-4]) if r["path"].startswith("cat/img") else None
        if seed is not None and seed != 2:
            assert (r["url"], r["engine"], r["query"], r["license"]) == (
                f"https://img.example/{seed}.jpg", "bing", "cat", "commercial")
            assert r["page"] == f"https://example.org/{seed}"
        else:  # not crawled, or not the file the crawl recorded
            assert r["url"] == r["page"] == r["engine"] == ""


def test_png_records_hold_the_npz_pixels_exactly(packed, tmp_path):
    src, npz, _ = packed
    pack_shards(src, tmp_path / "png", workers=1, encoding="png", **SETTINGS)
    assert shards.read_dataset(tmp_path / "png").info["image"]["encoding"] == "png"
    archive = load_archive(npz)
    with np.load(npz) as a:
        row = {p: i for i, p in enumerate(a["paths_test"].tolist())}
    import tensorflow as tf

    decode = shards.decode(shards.read_dataset(tmp_path / "png"))
    for r in records(tmp_path / "png", "test"):
        assert np.array_equal(decode(tf.constant(r["image"])).numpy(), archive.X_test[row[r["path"]]])


def test_dataset_json_holds_classes_counts_settings_and_version(packed):
    _, _, folder = packed
    info = json.loads((folder / "dataset.json").read_text())
    assert info["format"] == "toolkit-shards" and info["toolkit"] == "0.1.0"
    assert info["class_names"] == ["cat", "dog", "fox"]
    assert info["image"] == {"size": 32, "fit": "crop", "encoding": "jpeg", "quality": 95}
    assert info["splits"] == {"train": {"images": 24, "per_class": [8, 8, 8]},
                              "test": {"images": 6, "per_class": [2, 2, 2]}}
    assert {k: info["settings"][k] for k in ("per_class", "seed", "test_size", "threshold")} == {
        "per_class": 10, "seed": 5, "test_size": 0.2, "threshold": 8}
    assert sorted(os.listdir(folder)) == ["dataset.json", "report.json", "report.txt",
                                          "test-00000-of-00001.tfrecord", "train-00000-of-00001.tfrecord"]
    for shard in info["shards"]:
        assert (folder / shard["file"]).stat().st_size == shard["bytes"]
        assert sum(shard["per_class"]) == shard["images"] == len(records(folder, shard["split"]))
    assert set(info["features"]) >= {"image", "label", "split", "sha256", "phash", "url", "page",
                                     "query", "engine", "license"}


def test_the_public_reader_streams_a_split(packed):
    _, npz, folder = packed
    archive = load_archive(npz)
    ordered = list(shards.read_split(folder, "test", shuffle_buffer=0).as_numpy_iterator())
    assert len(ordered) == 6 and sorted(int(y) for _, y in ordered) == sorted(archive.y_test.tolist())
    assert all(x.shape == (32, 32, 3) and x.dtype == np.uint8 for x, _ in ordered)
    again = list(shards.read_split(folder, "test", shuffle_buffer=0).as_numpy_iterator())
    assert all(np.array_equal(a[0], b[0]) for a, b in zip(ordered, again))
    shuffled = list(shards.read_split(folder, "train", seed=1, shuffle_buffer=8).as_numpy_iterator())
    assert np.bincount([int(y) for _, y in shuffled]).tolist() == [8, 8, 8]


def test_plain_tf_data_reads_it(packed):
    """The lines of the manual, as they are written there."""
    _, _, folder = packed
    import tensorflow as tf

    spec = {"image": tf.io.FixedLenFeature([], tf.string), "label": tf.io.FixedLenFeature([], tf.int64)}
    files = tf.data.Dataset.list_files(f"{folder}/train-*.tfrecord", shuffle=True)
    records = files.interleave(tf.data.TFRecordDataset, num_parallel_calls=tf.data.AUTOTUNE).shuffle(2048)
    decode = lambda f: (tf.io.decode_jpeg(f["image"], channels=3, dct_method="INTEGER_ACCURATE"), f["label"])  # noqa: E501, E731
    train = records.map(lambda r: decode(tf.io.parse_single_example(r, spec))).batch(32).prefetch(tf.data.AUTOTUNE)  # noqa: E501
    x, y = next(iter(train))
    assert x.shape == (24, 32, 32, 3) and x.dtype == tf.uint8
    assert sorted(x.numpy().sum(axis=(1, 2, 3)).tolist()) == sorted(  # the pixels the reader gives
        int(image.sum()) for image, _ in shards.read_split(folder, "train").as_numpy_iterator())
    assert sorted(y.numpy().tolist()) == [0] * 8 + [1] * 8 + [2] * 8


def test_two_workers_write_the_same_bytes_and_what_a_dead_run_left_is_removed(packed, tmp_path, monkeypatch):
    """Two worker processes (Beam's multi-processing direct runner), handed the files in a dozen
    batches, write what one did with one; a dead run's work folder (planted here: a real kill
    is in test_shard_edges.py) is removed."""
    src, _, first = packed
    out = tmp_path / "ds"
    abandoned = tmp_path / ".ds.999999-0badc0de.part"
    (abandoned / "data").mkdir(parents=True)
    (abandoned / "data" / "train-00000-of-00001.tfrecord").write_bytes(b"half")
    monkeypatch.setattr("toolkit.data.pipeline.CHUNK", 4)  # a batch at most 4 files
    pack_shards(src, out, workers=2, **SETTINGS)
    monkeypatch.undo()
    assert not abandoned.exists()
    assert_same_dataset(first, out, "out")
    with pytest.raises(ToolkitError, match="already exists; pass --force"):
        pack_shards(src, out, workers=1, **SETTINGS)
    pack_shards(src, out, workers=1, force=True, **{**SETTINGS, "seed": 6})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds"]  # no work folder, no old dataset
    assert json.loads((out / "dataset.json").read_text())["settings"]["seed"] == 6


def test_a_damaged_shard_is_one_error_naming_it(packed, tmp_path):
    _, _, first = packed
    folder = tmp_path / "ds"
    shutil.copytree(first, folder)
    shard = folder / "train-00000-of-00001.tfrecord"
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF
    shard.write_bytes(bytes(data))
    with pytest.raises(ToolkitError, match=r"shard .*train-00000-of-00001\.tfrecord is damaged"):
        shards.read_split(folder, "train")
    shards.read_split(folder, "test")  # the other split is whole
    shard.write_bytes(b"\xff" * 8 + bytes(data[8:]))  # a first record as long as no file holds
    for check in (True, False):  # the checksum's read parses the records: it stops there, in memory
        with pytest.raises(ToolkitError, match=r"00001\.tfrecord is damaged \(a record runs past the end"):
            shards.read_labels(shards.read_dataset(folder), "train", check=check)
    shard.write_bytes(bytes(data[:-10]))
    with pytest.raises(ToolkitError, match=r"train-00000-of-00001\.tfrecord is damaged: .* bytes"):
        shards.read_split(folder, "train", check=False)
    shard.unlink()
    with pytest.raises(ToolkitError, match=r"train-00000-of-00001\.tfrecord is missing"):
        shards.read_dataset(folder)
    (folder / "dataset.json").write_text("{not json")
    with pytest.raises(ToolkitError, match="dataset.json is damaged"):
        shards.read_dataset(folder)


def test_a_class_short_of_images_fails_as_pack_does_unless_allowed(packed, tmp_path):
    src, _, _ = packed
    short = {**SETTINGS, "per_class": 14}
    with pytest.raises(NotEnoughImages, match="for --per-class 14: cat 12, dog 13") as e:
        pack_shards(src, tmp_path / "ds", workers=1, **short)
    with pytest.raises(NotEnoughImages) as npz_error:
        pack(src, tmp_path / "x.npz", **short)
    assert str(e.value) == str(npz_error.value)
    assert e.value.report.to_json()["counts"] == npz_error.value.report.to_json()["counts"]
    assert os.listdir(tmp_path) == []  # nothing written, no work folder left
    allowed = both_ways(src, tmp_path, allow_fewer=True, **short)
    for split, (in_npz, in_shards) in allowed["rows"].items():
        assert in_shards == in_npz, split
    assert allowed["reports"][1] == allowed["reports"][0]
    report = allowed["reports"][1]
    assert report["train_counts"] == [10, 10, 11] and report["test_counts"] == [2, 3, 3]


# ---- the command line

def test_cli_packs_shards_and_errors_are_one_line(packed, tmp_path):
    src, _, _ = packed
    result = run_cli("pack", src, "--out", tmp_path / "ds", "--format", "tfrecord", "--per-class", 10,
                     "--size", 32, "--workers", 1)
    assert result.exit_code == 0, result.output
    assert "24 train / 6 test images of 32x32 as TFRecord shards" in result.output
    assert "label_conflict" in result.output and shards.is_dataset(tmp_path / "ds")
    assert_one_error_line(run_cli("pack", src, "--out", tmp_path / "y.npz", "--format", "tfrecord"),
                          "a folder of shards, not an .npz name")
    assert_one_error_line(run_cli("pack", src, "--out", tmp_path / "ds2", "--format", "tfrecord",
                                  "--beam-option", "no_such_option=1"), "no_such_option")
    assert_one_error_line(run_cli("pack", src, "--out", tmp_path / "ds2", "--format", "tfrecord",
                                  "--runner", "NoSuchRunner"), "--runner NoSuchRunner")
    assert_one_error_line(run_cli("pack", src, "--out", tmp_path / "x.npz", "--runner", "FlinkRunner"),
                          "--format tfrecord")
    (tmp_path / "alias").symlink_to(src)
    for out in (src, src / "cat" / "ds", tmp_path / "alias" / "ds", src.parent):  # --force: SOURCE gone
        assert_one_error_line(run_cli("pack", src, "--out", out, "--format", "tfrecord", "--force"),
                              "overlap (one holds the other)")
    (tmp_path / "nnunet" / "imagesTr").mkdir(parents=True)  # another tool's dataset.json; ours, linked
    (tmp_path / "nnunet" / "dataset.json").write_text('{"name": "Dataset001"}')
    (tmp_path / "linked").mkdir()
    (tmp_path / "linked" / "dataset.json").symlink_to(tmp_path / "ds" / "dataset.json")
    for out in (tmp_path / "nnunet", tmp_path / "linked"):
        assert_one_error_line(run_cli("pack", src, "--out", out, "--format", "tfrecord", "--force"),
                              f"{out} holds files that are not a toolkit dataset")
    assert not (tmp_path / "ds2").exists() and (tmp_path / "nnunet" / "dataset.json").exists()


def test_without_beam_the_error_says_what_to_install(packed, tmp_path, monkeypatch):
    src, _, _ = packed
    monkeypatch.setitem(sys.modules, "apache_beam", None)  # as if the scale extra were not installed
    result = run_cli("pack", src, "--out", tmp_path / "ds", "--format", "tfrecord")
    assert_one_error_line(result, "pip install 'toolkit-imageclass[scale]'")


# ---- SOURCE and DIR at URLs, through Beam's FileSystems (a made-up scheme over a temporary folder)

def test_a_pack_from_and_to_urls_writes_what_a_local_pack_writes(packed, tmp_path, monkeypatch):
    """What Dataflow's workers would do with gs:// URLs: every read and write through Beam's
    FileSystems (the listing, decisions, manifests, images, work folder, shards, dataset.json,
    report), none through a local path; the dataset put in place with dataset.json last."""
    src, _, first = packed
    monkeypatch.setattr(FakeFileSystem, "root", str(tmp_path / "store"))
    bucket = tmp_path / "store" / "bucket"
    shutil.copytree(src, bucket / "src")
    killed = bucket / ".ds.999999-0badc0de.part" / "data"  # a pack killed in its pipeline ...
    killed.mkdir(parents=True)
    (killed / "train-00000-of-00001.tfrecord").write_bytes(b"half")
    (bucket / "ds").mkdir()  # ... and one killed in its commit: DIR marked, without dataset.json
    (bucket / "ds" / pack_out.INCOMPLETE).write_bytes(b"")
    (bucket / "ds" / "train-00000-of-00003.tfrecord").write_bytes(b"old")
    (bucket / "ds" / PLACEHOLDER).write_bytes(b"")  # `ds/`, whose delete would delete all under it
    found, marked = [], []  # what a reader finds at DIR after each change to the store

    def as_a_reader_finds_it():
        found.append(shards.is_dataset(bucket / "ds"))
        marked.append(found[-1] or (bucket / "ds" / pack_out.INCOMPLETE).exists())  # no dataset: marked
        if found[-1]:  # a dataset whole: every shard it lists there, as it lists it
            shards.verify(shards.read_dataset(bucket / "ds"))
    monkeypatch.setattr(FakeFileSystem, "after_change", staticmethod(as_a_reader_finds_it))
    monkeypatch.chdir(tmp_path / "store")
    with urls_used_as_paths() as misused:
        result = run_cli("pack", "fakefs://bucket/src", "--out", "fakefs://bucket/ds/", "--format",
                         "tfrecord", "--per-class", 10, "--size", 32, "--seed", 5, "--workers", 1)
    assert result.exit_code == 0, result.output
    assert "wrote fakefs://bucket/ds/: 24 train / 6 test images" in result.output
    assert misused == [] and sorted(os.listdir(tmp_path / "store")) == ["bucket"]  # no `fakefs:` folder
    assert sorted(os.listdir(bucket)) == ["ds", "src"]  # no work folder, the killed one's removed
    assert_same_dataset(first, bucket / "ds", "source", "out")
    assert (bucket / "ds" / PLACEHOLDER).exists() and all(marked)  # `ds/` kept; DIR marked while bare
    report = json.loads((bucket / "ds" / "report.json").read_text())
    assert report["source"] == "fakefs://bucket/src" and report["out"] == "fakefs://bucket/ds"
    assert shards.read_dataset(bucket / "ds").info["settings"]["source"] == "fakefs://bucket/src"

    with pytest.raises(ToolkitError, match="fakefs://bucket/ds already exists; pass --force"):
        pack_shards("fakefs://bucket/src", "fakefs://bucket/ds", workers=1, **SETTINGS)
    with pytest.raises(ToolkitError, match="needs fakefs://bucket/src/review.json: run `toolkit review"):
        pack_shards("fakefs://bucket/src", "fakefs://bucket/ds2", workers=1, drop_suspects=True, **SETTINGS)
    (bucket / "notes").mkdir()
    (bucket / "notes" / PLACEHOLDER).write_bytes(b"")  # a folder made in the console: empty
    pack_out.out_at("fakefs://bucket/notes").check(force=False)
    for name in ("todo.txt", "dataset.json", pack_out.INCOMPLETE):  # another tool's dataset.json, marked
        (bucket / "notes" / name).write_text('{"name": "Dataset001"}')
        with pytest.raises(ToolkitError, match="bucket/notes holds files that are not a toolkit dataset"):
            pack_shards("fakefs://bucket/src", "fakefs://bucket/notes", workers=1, force=True, **SETTINGS)
    for out in ("fakefs://bucket/src/ds", "fakefs://bucket/"):  # a --force would delete SOURCE
        with pytest.raises(ToolkitError, match=f"--out {out.rstrip('/')} and SOURCE fakefs://bucket/src "):
            pack_shards("fakefs://bucket/src", out, workers=1, force=True, **SETTINGS)
    pack_out.refuse_overlap("fakefs://bucket/src", "fakefs://bucket/src2")  # a name that starts alike
    found.clear()
    with urls_used_as_paths() as misused:
        pack_shards("fakefs://bucket/src", "fakefs://bucket/ds", workers=1, force=True,
                    **{**SETTINGS, "seed": 6})
    assert found[0] and not all(found) and shards.is_dataset(bucket / "ds")  # old, none, then new
    assert misused == [] and all(marked) and sorted(os.listdir(bucket)) == ["ds", "notes", "src"]
    assert sorted(os.listdir(bucket / "ds")) == sorted([*os.listdir(first), PLACEHOLDER])
    assert shards.read_dataset(bucket / "ds").info["settings"]["seed"] == 6


def test_a_url_that_beam_cannot_read_here_is_one_error_line_before_any_work(packed, tmp_path, monkeypatch):
    src, _, _ = packed
    monkeypatch.chdir(tmp_path)
    try:
        import google.cloud.storage  # noqa: F401
    except ImportError:  # gs:// without apache-beam[gcp]
        assert_one_error_line(run_cli("pack", "gs://my-bucket/datasets", "--out", "gs://my-bucket/animal/",
                                      "--format", "tfrecord"), "pip install 'apache-beam[gcp]'")
    assert_one_error_line(run_cli("pack", src, "--out", "nosuchfs://b/animal", "--format", "tfrecord"),
                          "nosuchfs://b/animal: Apache Beam here has no file system for nosuchfs:// URLs")
    assert os.listdir(tmp_path) == []
