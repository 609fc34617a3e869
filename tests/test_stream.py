"""train / evaluate / export --data DIR/: a sharded dataset (pack --format tfrecord) read by tf.data,
against the .npz of the same folder and seed (PNG records: the .npz's pixels exactly)."""

from __future__ import annotations

import hashlib
import html
import json
import re
import shutil

import numpy as np
import pytest

from helpers import (
    QUICK,
    assert_one_error_line,
    assert_resumed_as_whole,
    interrupted_after_first_epoch,
    run_cli,
    write_shape_folders,
)
from toolkit.core import images
from toolkit.core.errors import ToolkitError
from toolkit.data import shards
from toolkit.data.packer import pack
from toolkit.data.streams import ShardSplit, load_data
from toolkit.training import streams
from toolkit.training.trainer import Interrupted, resume, train

pytest.importorskip("apache_beam")

PACK = dict(per_class=24, size=32, seed=3, test_size=0.25, checks=images.Checks(min_side=16))
#: a small run: float32, no download, tiny batches
RUN = {**QUICK, "batch_size": 16, "backbone": "mobilenet_v2"}


@pytest.fixture(scope="module")
def packed(tmp_path_factory):
    """The toy shapes as class folders of PNGs, packed as an .npz and as PNG shards (one train
    shard: its records are the .npz's rows in the same order), and as PNG shards of 10
    images each (6 train shards)."""
    from toolkit.data.shard_pack import pack_shards

    tmp = tmp_path_factory.mktemp("stream")
    write_shape_folders(tmp / "src", 24, 32, seed=1)
    pack(tmp / "src", tmp / "shapes.npz", **PACK)
    pack_shards(tmp / "src", tmp / "ds", workers=1, encoding="png", **PACK)
    pack_shards(tmp / "src", tmp / "many", workers=1, encoding="png", images_per_shard=10, **PACK)
    return tmp / "shapes.npz", tmp / "ds", tmp / "many"


@pytest.fixture(autouse=True)
def feature_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TOOLKIT_CACHE_DIR", str(tmp_path / "cache"))


def test_rows_are_numbered_through_the_shards_in_dataset_json_order(packed):
    npz, _, many = packed
    data = load_data(many)
    assert len(data.dataset.files("train")) == 6
    with pytest.raises(TypeError, match="streamed"):  # nothing can load a split whole
        np.asarray(data.X_train)
    archive = load_data(npz)
    with np.load(npz) as a:
        row_of = {p: i for i, p in enumerate(a["paths_train"].tolist())}
    spec = shards.feature_spec()
    numbered = list(shards.numbered_records(data.dataset, "train"))
    assert [int(row) for row, _ in numbered] == list(range(len(data.y_train)))
    rows = np.array([0, 9, 10, 11, 25, len(data.y_train) - 1])  # first, last, across shards
    picked = list(data.X_train.images(rows, labels=True))
    import tensorflow as tf

    for row, (pixels, label) in zip(rows, picked):
        record = tf.io.parse_single_example(numbered[row][1], spec)
        npz_row = row_of[record["path"].numpy().decode()]
        assert int(label) == data.y_train[row] == archive.y_train[npz_row]
        assert np.array_equal(pixels.numpy(), archive.X_train[npz_row])
    # each row's path, read without decoding an image: the records' own, in row order (2 test shards)
    assert len(data.dataset.files("test")) == 2
    paths = data.X_test.paths()
    assert paths == [tf.io.parse_single_example(record, spec)["path"].numpy().decode()
                     for _, record in shards.numbered_records(data.dataset, "test")]
    assert [p.split("/")[0] for p in paths] == [data.class_names[k] for k in data.y_test]
    assert sorted(paths) == sorted(np.load(npz)["paths_test"].tolist())


@pytest.fixture(scope="module")
def cnn_runs(packed, tmp_path_factory):
    """cnn trained on the .npz and on the PNG shards, same seed: (npz run, dataset run)."""
    npz, ds, _ = packed
    tmp = tmp_path_factory.mktemp("cnn")
    return tuple(train(data, "cnn", out=tmp / name, **CNN) for name, data in (("npz", npz), ("ds", ds)))


CNN = dict(RUN, epochs=4, patience=10)


def test_extract_from_shards_is_the_npz_run_and_fills_the_cache_in_one_pass(packed, tmp_path,
                                                                             monkeypatch):
    npz, ds, _ = packed
    a = train(npz, "extract", out=tmp_path / "npz", epochs=2, **RUN)
    passes = []
    numbered = shards.numbered_records
    monkeypatch.setattr(shards, "numbered_records", lambda *a, **k: passes.append(a[1]) or numbered(*a, **k))
    b = train(ds, "extract", out=tmp_path / "ds", epochs=2, **RUN)
    # one ordered pass over each split's shards for the features, one for the page's images
    assert passes == ["train", "test", "test"]
    assert a.metrics["class_names"] == b.metrics["class_names"] == ["bar", "disc", "square"]
    assert a.metrics["test_images"] == b.metrics["test_images"] == 18
    # the same pixels, the same cached features, the same batches: the same run
    np.testing.assert_allclose(a.history["loss"], b.history["loss"], rtol=1e-6)
    assert a.metrics["confusion_matrix"] == b.metrics["confusion_matrix"]
    assert json.loads((b.folder / "config.json").read_text())["data"] == str(ds.resolve())
    cached = [p for p in (tmp_path / "cache" / "features").glob("*.npy")
              if json.loads(p.with_suffix(".json").read_text())["archive"].startswith(str(ds.resolve()))]
    assert sorted(np.load(p, mmap_mode="r").shape[0] for p in cached) == [18, 54]
    stamps = {p: p.stat().st_mtime_ns for p in cached}
    passes.clear()
    train(ds, "extract", out=tmp_path / "again", epochs=1, **RUN)
    assert passes == ["test"] and {p: p.stat().st_mtime_ns for p in cached} == stamps  # nothing computed


def test_cnn_from_shards_scores_as_from_the_npz(cnn_runs):
    a, b = cnn_runs
    assert a.metrics["class_names"] == b.metrics["class_names"]
    assert a.metrics["test_images"] == b.metrics["test_images"] == 18
    # streamed in another order than the .npz's batches: within one test image
    assert abs(a.metrics["accuracy"] - b.metrics["accuracy"]) <= 1 / 18 + 1e-9
    assert b.metrics["accuracy"] >= 0.8, b.metrics["accuracy"]
    assert (b.folder / "report.html").exists()


def figures(page: str) -> list[tuple[str, str]]:
    """(caption "true → predicted p", the image's title: its path) of each test image a run's page shows."""
    return [(html.unescape(c), html.unescape(t)) for c, t in
            re.findall(r'<figure><img alt="([^"]*)" title="([^"]*)"', page)]


def test_the_page_of_a_run_from_shards_shows_each_test_image_s_path(packed, cnn_runs):
    npz, _, _ = packed
    with np.load(npz) as a:
        paths = set(a["paths_test"].tolist())
    shown = {}
    for run in cnn_runs:  # every test image is shown (18, no cell holds more than 60)
        shown[run.folder.name] = found = figures((run.folder / "report.html").read_text())
        assert {path for _, path in found} == paths
        # each path is its own row's: the file lies in the folder of the class the caption says
        assert all(path.split("/")[0] == caption.split(" → ")[0] for caption, path in found), found
    assert len(shown["ds"]) == len(shown["npz"]) >= 18


def test_a_resumed_cnn_run_from_shards_ends_as_an_uninterrupted_one(packed, cnn_runs, tmp_path,
                                                                     monkeypatch):
    _, ds, _ = packed
    whole = cnn_runs[1]
    with interrupted_after_first_epoch(monkeypatch), pytest.raises(Interrupted):
        train(ds, "cnn", out=tmp_path / "cut", **CNN)
    resumed = resume(tmp_path / "cut", verbose=0)
    assert_resumed_as_whole(resumed, whole, epochs=4)
    assert resumed.metrics["confusion_matrix"] == whole.metrics["confusion_matrix"]


def test_evaluate_and_export_read_the_dataset(packed, cnn_runs, tmp_path):
    npz, ds, _ = packed
    run = cnn_runs[1]
    accuracy = run.metrics["accuracy"]
    evaluated = []
    for name, data in (("own", []), ("ds", ["--data", ds]), ("npz", ["--data", npz])):
        result = run_cli("evaluate", run.folder, *data, "--out", tmp_path / name)
        assert result.exit_code == 0, result.output
        evaluated.append(json.loads((tmp_path / name / "metrics.json").read_text()))
    # the run's dataset by default; the same images as an archive score the same
    assert [m["accuracy"] for m in evaluated] == [accuracy] * 3
    matrices = [m["confusion_matrix"] for m in evaluated]
    assert matrices[0] == matrices[2] == run.metrics["confusion_matrix"]
    result = run_cli("export", run.folder, "--format", "litert", "--quantize", "int8")
    assert result.exit_code == 0, result.output
    info = json.loads((run.folder / "export" / "export.json").read_text())
    assert info["parity"]["test_images"] == 18 and info["data"] == str(ds.resolve())
    assert info["parity"]["keras_accuracy"] == round(accuracy, 4)


def test_a_damaged_shard_or_a_folder_that_is_no_dataset_is_one_error_line(packed, tmp_path):
    _, ds, _ = packed
    damaged = tmp_path / "damaged"
    shutil.copytree(ds, damaged)
    shard = damaged / shards.read_dataset(damaged).shards[-1].file
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF
    shard.write_bytes(bytes(data))
    result = run_cli("train", "--strategy", "cnn", "--data", damaged, "--weights", "none", "--epochs", 1,
                     "--out", tmp_path / "run")
    assert_one_error_line(result, f"shard {shard} is damaged")
    assert result.exit_code == 1 and not (tmp_path / "run").exists()
    (tmp_path / "plain").mkdir()
    result = run_cli("train", "--strategy", "cnn", "--data", tmp_path / "plain", "--weights", "none")
    assert_one_error_line(result, "is a folder without dataset.json")


def test_a_record_is_read_as_tensorflow_reads_it_or_its_shard_is_damaged(packed, tmp_path):
    """Labels and paths read without TensorFlow: a key given twice is its last value, as
    TensorFlow takes it; a value of another kind or past 64 bits, or a shard that cannot be
    read, is one error naming the shard."""
    import tensorflow as tf

    from toolkit.data.records import _field, _varint, crc32c, example, frame, read_feature

    def entry(key, feature):  # a map entry of Example.features
        return _field(1, _field(1, key.encode()) + _field(2, feature))

    def label(varint):  # a Feature's Int64List
        return _field(3, _field(1, varint))
    twice = _field(1, entry("label", label(_varint(0))) + entry("label", label(_varint(1))))
    merged = example({"label": 0, "path": "a"}) + example({"label": 1})  # Examples one after another merge
    for record in (twice, merged):
        parsed = tf.io.parse_single_example(record, {"label": tf.io.FixedLenFeature([], tf.int64)})
        assert read_feature(record, "label", "int64") == int(parsed["label"]) == 1
    _, ds, _ = packed
    shutil.copytree(ds, tmp_path / "ds")
    dataset = shards.read_dataset(tmp_path / "ds")
    shard = dataset.files("train")[0]
    paths = ShardSplit(dataset, "train").paths

    def labels():
        return shards.read_labels(dataset, "train", check=False)
    over_64_bits = _field(1, entry("label", label(b"\xff" * 9 + b"\x7f")))
    for record, read, problem in ((example({"label": b"cat"}), labels, "'label' is not one int64"),
                                  (over_64_bits, labels, "'label' is not one int64"),
                                  (example({"label": 0, "path": 5}), paths, "'path' is not one bytes")):
        shard.write_bytes(frame(record, crc32c()))
        with pytest.raises(ToolkitError, match=rf"shard {re.escape(str(shard))} is damaged \(feature "
                                               rf"{problem} value\); pack again"):
            read()
    for gone in (shard.unlink, shard.mkdir):  # gone after dataset.json was read; then a folder
        gone()
        with pytest.raises(ToolkitError, match=rf"shard {re.escape(str(shard))} cannot be read \(.+\); chec"):
            shards.read_labels(dataset, "train")


def test_a_dataset_whose_shards_or_dataset_json_are_links_is_refused_before_reading(packed, tmp_path):
    _, ds, _ = packed
    linked = tmp_path / "linked"  # the shards linked (ln -s), dataset.json copied
    linked.mkdir()
    shutil.copy(ds / "dataset.json", linked)
    names = [s.file for s in shards.read_dataset(ds).shards]
    for name in names:
        (linked / name).symlink_to(ds / name)
    inside = tmp_path / "inside"  # one shard a link to a file beside it, in the folder
    shutil.copytree(ds, inside)
    (inside / names[-1]).rename(inside / "kept.tfrecord")
    (inside / names[-1]).symlink_to(inside / "kept.tfrecord")
    json_linked = tmp_path / "json-linked"  # the shards copied, dataset.json a link (or a dangling one)
    shutil.copytree(ds, json_linked)
    (json_linked / "dataset.json").unlink()
    (json_linked / "dataset.json").symlink_to(ds / "dataset.json")
    dangling = tmp_path / "dangling"
    shutil.copytree(json_linked, dangling, symlinks=True)
    (dangling / "dataset.json").unlink()
    (dangling / "dataset.json").symlink_to(tmp_path / "gone.json")
    for folder, link in ((linked, names[0]), (inside, names[-1]), (json_linked, "dataset.json"),
                         (dangling, "dataset.json")):
        result = run_cli("train", "--strategy", "cnn", "--data", folder, "--weights", "none",
                         "--epochs", 1, "--out", tmp_path / "run")
        assert_one_error_line(result, f"{folder / link} is a symbolic link, and a dataset is read only "
                                      "from files in its own folder: copy the dataset instead of linking")
        assert result.exit_code == 1 and not (tmp_path / "run").exists()
    with pytest.raises(ToolkitError, match="is a symbolic link"):
        shards.read_split(linked, "test", check=False)


def with_empty_shards(folder, out):
    """A copy of a dataset whose train shards alternate with empty ones (as a pack with a small
    images_per_shard writes them: a shard number no image falls on): every second one empty."""
    info = json.loads((folder / "dataset.json").read_text())
    train = [s for s in info["shards"] if s["split"] == "train"]
    total, listed = 2 * len(train), [s for s in info["shards"] if s["split"] != "train"]
    out.mkdir()
    for s in listed:
        shutil.copy(folder / s["file"], out / s["file"])
    for i, s in enumerate(train):
        name, empty = (shards.shard_name("train", 2 * i + k, total) for k in (0, 1))
        shutil.copy(folder / s["file"], out / name)
        (out / empty).write_bytes(b"")
        listed += [{**s, "file": name}, {**s, "file": empty, "images": 0, "bytes": 0,
                                         "per_class": [0] * len(s["per_class"]),
                                         "sha256": hashlib.sha256(b"").hexdigest()}]
    (out / "dataset.json").write_text(json.dumps({**info, "shards": listed}))
    return out


def test_multiworker_shares_the_shards_or_else_the_records(packed, tmp_path):
    assert streams.worker_shards(5, 2, 0) == [0, 2, 4] and streams.worker_shards(5, 2, 1) == [1, 3]
    assert streams.worker_shards(1, 2, 1) is None
    import tensorflow as tf

    _, ds, many = packed
    sparse = with_empty_shards(many, tmp_path / "sparse")  # shared as they were: no worker gets only empties
    for folder in (many, ds, sparse):  # 6 shards for 2 workers; 1 shard for 2 workers; 6 among 12
        data = load_data(folder)
        rows = np.arange(len(data.y_train))[::2]  # some training rows
        every = {image.numpy().tobytes() for image in data.X_train.images(rows)}
        stream = streams.TrainStream(data, rows, 8, 42, 2, tf.distribute.get_strategy())
        seen = []
        for index in range(2):  # as many as all the rows: each worker wraps round its own
            batches = list(stream.epoch(0, 2, index, 4, len(rows)))
            assert sum(len(x) for x, _ in batches) == len(rows) - len(rows) % 4  # the same steps
            seen.append({image.tobytes() for x, _ in batches for image in x.numpy()})
        assert not seen[0] & seen[1] and seen[0] | seen[1] == every
