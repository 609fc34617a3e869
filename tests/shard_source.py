"""What the sharded pack's test files share: the source they pack, the settings they pack it
with, and how they read back and compare what was packed."""

from __future__ import annotations

import json
import os

import numpy as np

from conftest import add_duplicates_and_odd_names, encode, grid_image, make_class_folders
from fake_filesystem import PLACEHOLDER
from toolkit.collect import manifest
from toolkit.core import decisions, images
from toolkit.data import shards
from toolkit.data.packer import pack
from toolkit.data.shard_pack import pack_shards

SETTINGS = dict(per_class=10, size=32, seed=5)


def source_folder(root):
    """3 classes with junk, a near copy, label noise, a hidden file, a nested folder, a name that
    is not UTF-8, review decisions, and a crawl manifest for one class."""
    src = make_class_folders(root, {"cat": range(0, 13), "dog": range(100, 113), "fox": range(200, 213)})
    cat, dog, fox = (src / c for c in ("cat", "dog", "fox"))
    (cat / "empty.jpg").write_bytes(b"")
    (cat / "page.jpg").write_bytes(b"<!DOCTYPE html><html>Access denied</html>")
    (cat / "tiny.png").write_bytes(encode(grid_image(7).resize((50, 40)), "PNG"))
    (dog / "photo.webp").write_bytes(encode(grid_image(154).convert("RGBA"), "WEBP"))
    add_duplicates_and_odd_names(src)
    decisions.append(src, [decisions.Decision("cat/img0001.jpg", "drop"),
                           decisions.Decision("dog/img0100.jpg", "move", "fox")])
    entries = []
    for seed in range(0, 13):
        info, _ = images.decode((cat / f"img{seed:04d}.jpg").read_bytes())
        entries.append({"file": f"img{seed:04d}.jpg", "url": f"https://img.example/{seed}.jpg",
                        "engine": "bing", "query": "cat", "license": "commercial",
                        "page": f"https://example.org/{seed}", "title": "a cat", "sha256": info.sha256,
                        "phash": f"{info.phash:016x}", "width": info.width, "height": info.height,
                        "bytes": 1, "time": "2026-01-01T00:00:00+00:00"})
    entries[2]["sha256"] = "0" * 64  # the file is not what the crawl recorded: no provenance
    manifest.write(manifest.manifest_path(src, "cat"), entries)
    return src


def records(folder, split):
    """Every record of a split as a dict of plain values, in the shards' order."""
    import tensorflow as tf

    dataset = shards.read_dataset(folder)
    spec = shards.feature_spec()
    out = []
    for raw in tf.data.TFRecordDataset([str(p) for p in dataset.files(split)]):
        features = tf.io.parse_single_example(raw, spec)
        out.append({k: (v.numpy().decode() if v.dtype == tf.string and k != "image" else v.numpy())
                    for k, v in features.items()})
    return out


def assert_same_dataset(first, other, *differ):
    """`other` holds what `first` holds: the same files (a store's folder placeholder aside),
    shards and report.txt byte for byte, report.json but for the keys `differ`, dataset.json
    but for when it was made and its SOURCE."""
    assert sorted(set(os.listdir(other)) - {PLACEHOLDER}) == sorted(os.listdir(first))
    for name in os.listdir(first):
        if name.endswith(".tfrecord") or name == "report.txt":
            assert (other / name).read_bytes() == (first / name).read_bytes(), name
    reports, info = ([json.loads((d / name).read_text()) for d in (first, other)]
                     for name in ("report.json", "dataset.json"))
    assert [{k: v for k, v in r.items() if k not in differ} for r in reports] == [
        {k: v for k, v in reports[0].items() if k not in differ}] * 2
    assert [{**i, "created": "", "settings": {**i["settings"], "source": ""}} for i in info] == [
        {**info[0], "created": "", "settings": {**info[0]["settings"], "source": ""}}] * 2


def both_ways(src, tmp, **settings) -> dict:
    """SOURCE packed as an .npz and as shards with these settings: per split, the sorted (path,
    label) of each (the same when they agree), and each report.json but for where it was written."""
    pack(src, tmp / "x.npz", **settings)
    pack_shards(src, tmp / "ds", workers=1, **settings)
    with np.load(tmp / "x.npz") as a:
        rows = {split: (sorted(zip(a[f"paths_{split}"].tolist(), a[f"y_{split}"].tolist())),
                        sorted((r["path"], int(r["label"])) for r in records(tmp / "ds", split)))
                for split in shards.SPLITS}
    reports = [{k: v for k, v in json.loads(path.read_text()).items() if k != "out"}
               for path in (tmp / "x.report.json", tmp / "ds" / "report.json")]
    return {"rows": rows, "reports": reports}
