"""The sharded dataset format: TFRecord shards of `tf.train.Example` records and the
`dataset.json` beside them, written, checked and read back (with plain tf.data) here only.

    DIR/dataset.json                       classes, counts per split and per shard, settings, version
    DIR/train-00000-of-00002.tfrecord ...  the records of a shard, in the order of pack's rank
    DIR/test-00000-of-00001.tfrecord
    DIR/report.txt, DIR/report.json        pack's report (:mod:`toolkit.data.packer`)

A record's features (:data:`FEATURES`): `image` (the `size` x `size` RGB pixels pack made, as a
JPEG at quality 95 or a PNG, as `dataset.json` says), `label` (int64), `class`, `split`, `path`
(relative to SOURCE), `sha256`, `phash` (16 hex digits), `width` and `height` of the original,
and where the crawl found it: `url`, `page`, `query`, `engine`, `license` (empty when unknown).
Writing needs no TensorFlow (:mod:`.records` encodes and frames the records), so that a
pipeline's workers stay small; nor does checking a shard while reading one feature of every
record (:func:`read_column`: one read of each shard); reading the images is plain tf.data.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ..core.errors import ToolkitError, first_line
from ..core.files import refuse_link, write_json
from . import locations
from .records import (
    crc32c,
    frame,
    read_feature,
    read_records,
)

DATASET_FILE = "dataset.json"
FORMAT, FORMAT_VERSION = "toolkit-shards", 1
SPLITS = ("train", "test")
ENCODINGS = ("jpeg", "png")
#: JPEG at quality 95 costs no test image against the .npz's raw pixels (notes/scale.md).
ENCODING, JPEG_QUALITY = "jpeg", 95
#: Images per shard: about 25 MB of 224-pixel JPEGs, and enough shards for several readers.
IMAGES_PER_SHARD = 1000

#: The features of a record and their kinds.
FEATURES = {"image": "bytes", "label": "int64", "class": "bytes", "split": "bytes", "path": "bytes",
            "sha256": "bytes", "phash": "bytes", "width": "int64", "height": "int64", "url": "bytes",
            "page": "bytes", "query": "bytes", "engine": "bytes", "license": "bytes"}
#: Where the crawl found an image: the manifest's fields that a record carries.
PROVENANCE = ("url", "page", "query", "engine", "license")

#: Why a dataset's file that is a symbolic link is refused, and the fix: a dataset is checked
#: whole in its folder, and a link could bring any file on the disk into a run.
LINKED = "a dataset is read only from files in its own folder: copy the dataset instead of linking its files"

_SHARD_NAME = re.compile(r"(?P<split>train|test)-(?P<index>[0-9]{5})-of-(?P<total>[0-9]{5})\.tfrecord")


def shard_name(split: str, index: int, total: int) -> str:
    return f"{split}-{index:05d}-of-{total:05d}.tfrecord"


def shard_count(images: int, per_shard: int) -> int:
    """Shards of a split of this many images: at least one."""
    return max(1, -(-images // per_shard))


# --------------------------------------------------------------------------- writing

def encode_image(pixels: np.ndarray, encoding: str = ENCODING) -> bytes:
    """A (size, size, 3) uint8 image as the bytes a record holds."""
    from PIL import Image

    buffer = io.BytesIO()
    if encoding == "jpeg":
        Image.fromarray(pixels).save(buffer, "JPEG", quality=JPEG_QUALITY)
    else:
        Image.fromarray(pixels).save(buffer, "PNG", compress_level=6)
    return buffer.getvalue()


@dataclass(frozen=True)
class Shard:
    """One shard as dataset.json lists it."""

    file: str
    split: str
    images: int
    per_class: list[int]
    bytes: int
    sha256: str


def write_shard(folder: str | os.PathLike, split: str, index: int, total: int,
                records: Iterable[tuple[int, bytes]], n_classes: int) -> Shard:
    """Write (label, serialized example) records as one TFRecord shard in `folder`: a local one
    atomically, or at a URL (:mod:`toolkit.data.locations`)."""
    crc = crc32c()
    name = shard_name(split, index, total)
    digest, size, per_class = hashlib.sha256(), 0, [0] * n_classes
    with locations.writing(locations.join(folder, name)) as f:
        for label, record in records:
            framed = frame(record, crc)
            f.write(framed)
            digest.update(framed)
            size += len(framed)
            per_class[label] += 1
    return Shard(name, split, sum(per_class), per_class, size, digest.hexdigest())


def write_dataset(folder: Path, class_names: list[str], image: dict, settings: dict,
                  shards: list[Shard], toolkit: str, created: str) -> dict:
    """Write dataset.json (atomically) for these shards; returns what it holds."""
    shards = sorted(shards, key=lambda s: s.file)
    splits = {split: {"images": sum(s.images for s in shards if s.split == split),
                      "per_class": [sum(s.per_class[k] for s in shards if s.split == split)
                                    for k in range(len(class_names))]} for split in SPLITS}
    info = {"format": FORMAT, "format_version": FORMAT_VERSION, "toolkit": toolkit, "created": created,
            "class_names": class_names, "image": image, "settings": settings, "splits": splits,
            "shards": [asdict(s) for s in shards], "features": FEATURES}
    write_json(folder / DATASET_FILE, info)
    return info


# --------------------------------------------------------------------------- reading

@dataclass(frozen=True)
class Dataset:
    """A checked dataset.json: its folder, classes, image settings and shards."""

    folder: Path
    class_names: list[str]
    size: int
    encoding: str
    shards: list[Shard]
    info: dict

    def files(self, split: str) -> list[Path]:
        return [self.folder / s.file for s in self.shards if s.split == split]

    def count(self, split: str) -> int:
        return sum(s.images for s in self.shards if s.split == split)


def is_dataset(folder: str | os.PathLike) -> bool:
    """True for a folder that holds a dataset.json (a link too, for read_dataset to refuse):
    what pack --format tfrecord writes."""
    path = Path(folder) / DATASET_FILE
    return path.is_file() or path.is_symlink()


def is_toolkit_dataset(folder: str | os.PathLike) -> bool:
    """True for a folder (a path or a URL) whose dataset.json is a file (no link) of this format:
    what pack --format tfrecord wrote, and so what pack --force may replace. Another tool's
    dataset.json (nnU-Net's, say) is not."""
    path = locations.join(folder, DATASET_FILE)
    try:
        if locations.is_url(path):
            data = locations.read_if_any(path)
        else:
            data = None if Path(path).is_symlink() or not Path(path).is_file() else Path(path).read_bytes()
        info = json.loads(data) if data is not None else None
    except (OSError, ValueError, RecursionError):  # unreadable, not JSON: not ours
        return False
    return isinstance(info, dict) and info.get("format") == FORMAT


def read_dataset(folder: str | os.PathLike) -> Dataset:
    """Read and check DIR/dataset.json, and that every shard it lists is there at its size and
    is no symbolic link; a problem is one ToolkitError that names it (and the shard)."""
    folder = Path(folder)
    path = folder / DATASET_FILE
    refuse_link(path, LINKED)
    if not path.is_file():
        raise ToolkitError(f"{folder} holds no {DATASET_FILE}; make a dataset with `toolkit pack "
                           f"SOURCE --out {folder} --format tfrecord`")
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
        dataset = _parse(folder, info)
    except ToolkitError:
        raise
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise ToolkitError(f"{path} is damaged ({type(e).__name__}: {e}); pack again") from None
    for shard in dataset.shards:
        refuse_link(folder / shard.file, LINKED)
        try:
            on_disk = (folder / shard.file).stat().st_size
        except FileNotFoundError:
            raise ToolkitError(f"shard {folder / shard.file} is missing; pack again") from None
        if on_disk != shard.bytes:
            raise ToolkitError(f"shard {folder / shard.file} is damaged: {on_disk:,} bytes where "
                               f"{DATASET_FILE} says {shard.bytes:,}; pack again")
    return dataset


def _parse(folder: Path, info: dict) -> Dataset:
    def bad(problem: str) -> ToolkitError:
        return ToolkitError(f"{folder / DATASET_FILE} is damaged ({problem}); pack again")

    if info.get("format") != FORMAT:
        raise ToolkitError(f"{folder / DATASET_FILE} is not a toolkit dataset (format "
                           f"{info.get('format')!r}); make one with `toolkit pack --format tfrecord`")
    if info.get("format_version") != FORMAT_VERSION:
        raise ToolkitError(f"{folder / DATASET_FILE} is format version {info.get('format_version')}; "
                           f"this toolkit reads version {FORMAT_VERSION}: pack again")
    names, image = [str(n) for n in info["class_names"]], info["image"]
    size, encoding = image["size"], image["encoding"]
    if len(names) < 2:
        raise bad("fewer than two classes")
    if not isinstance(size, int) or size < 8 or encoding not in ENCODINGS:
        raise bad(f"image {image}")
    shards = [Shard(**s) for s in info["shards"]]
    for s in shards:
        match = _SHARD_NAME.fullmatch(s.file)
        if not match or match["split"] != s.split:
            raise bad(f"shard name {s.file!r}")
        if len(s.per_class) != len(names) or sum(s.per_class) != s.images:
            raise bad(f"the counts of {s.file}")
    for split in SPLITS:
        if sum(s.images for s in shards if s.split == split) != info["splits"][split]["images"]:
            raise bad(f"the {split} shards do not add up to its count")
    return Dataset(folder, names, size, encoding, shards, info)


def verify(dataset: Dataset, split: str | None = None) -> None:
    """Check each shard (of `split`, or all) against the checksum dataset.json holds: a damaged
    shard is one ToolkitError that names it, before any reader meets it half-way through."""
    for name in SPLITS if split is None else (split,):
        read_labels(dataset, name, check=True)


def read_column(dataset: Dataset, split: str, feature: str, *, check: bool = False) -> list[bytes | int]:
    """One feature of every row of a split, in order: one read of each shard, no image decoded,
    no TensorFlow. With `check`, the same read checks each shard against dataset.json's SHA-256:
    a damaged shard is one ToolkitError that names it."""
    return [row[0] for row in iter_features(dataset, split, (feature,), check=check)]


def iter_features(dataset: Dataset, split: str, names: Sequence[str], *,
                  check: bool = False) -> Iterator[tuple[bytes | int, ...]]:
    """The features `names` of each row of a split, in order, one record at a time (no image
    decoded, no TensorFlow). A shard that is damaged, cannot be read, or holds another count of
    records than dataset.json says is one ToolkitError that names it, once the reader reaches
    its end; with `check`, so is one whose SHA-256 differs (rows of that shard were already
    yielded: collect them before trusting them)."""
    for shard in dataset.shards:
        if shard.split != split:
            continue
        path, digest, count = dataset.folder / shard.file, hashlib.sha256(), 0
        try:
            for record in read_records(path, digest.update if check else None):
                row = tuple(read_feature(record, name, FEATURES[name]) for name in names)
                count += 1
                yield row
        except ValueError as e:
            raise ToolkitError(f"shard {path} is damaged ({e}); pack again") from None
        except OSError as e:
            raise ToolkitError(f"shard {path} cannot be read ({e.strerror or first_line(e)}); check it is "
                               "a file you can read, or pack again") from None
        if check and digest.hexdigest() != shard.sha256:
            raise ToolkitError(f"shard {path} is damaged (its checksum differs from {DATASET_FILE}'s); "
                               "pack again")
        if count != shard.images:
            raise ToolkitError(f"shard {path} holds {count} records where {DATASET_FILE} says "
                               f"{shard.images}; pack again")


def feature_spec():
    """What tf.io.parse_example needs to read every feature of a record."""
    import tensorflow as tf

    kinds = {"bytes": tf.string, "int64": tf.int64}
    return {name: tf.io.FixedLenFeature([], kinds[kind]) for name, kind in FEATURES.items()}


def decode(dataset: Dataset):
    """A tf function from a record's image bytes to (size, size, 3) uint8 pixels."""
    import tensorflow as tf

    def pixels(data):
        if dataset.encoding == "jpeg":  # the accurate IDCT: Pillow's, which wrote them
            image = tf.io.decode_jpeg(data, channels=3, dct_method="INTEGER_ACCURATE")
        else:
            image = tf.io.decode_png(data, channels=3)
        return tf.ensure_shape(image, (dataset.size, dataset.size, 3))
    return pixels


def parse(dataset: Dataset):
    """A tf function from a serialized record to its (uint8 pixels, int64 label)."""
    import tensorflow as tf

    spec = {"image": tf.io.FixedLenFeature([], tf.string), "label": tf.io.FixedLenFeature([], tf.int64)}
    pixels = decode(dataset)

    def pixels_and_label(record):
        features = tf.io.parse_single_example(record, spec)
        return pixels(features["image"]), features["label"]
    return pixels_and_label


def first_rows(dataset: Dataset, split: str) -> list[int]:
    """The row number of each shard's first record: a split's rows are numbered through its
    shards in dataset.json's order (row i of the split is the i-th record of that order)."""
    counts = [s.images for s in dataset.shards if s.split == split]
    return [sum(counts[:i]) for i in range(len(counts))]


def numbered_records(dataset: Dataset, split: str, shards: Sequence[int] | None = None,
                     cycle_length: int = 1):
    """(row number, serialized record) of a split's shards (`shards`: the indices of some of
    them, in that order) as a `tf.data.Dataset`: one shard after another, or with
    `cycle_length` > 1 that many interleaved (deterministically)."""
    import tensorflow as tf

    files, starts = [str(p) for p in dataset.files(split)], first_rows(dataset, split)
    chosen = list(range(len(files)) if shards is None else shards)
    parts = tf.data.Dataset.from_tensor_slices(([files[i] for i in chosen],
                                                np.array([starts[i] for i in chosen], dtype=np.int64)))

    def numbered(path, start):
        return tf.data.TFRecordDataset(path).enumerate(start)
    if cycle_length <= 1:
        return parts.flat_map(numbered)
    return parts.interleave(numbered, cycle_length=cycle_length, num_parallel_calls=tf.data.AUTOTUNE,
                            deterministic=True)


def read_labels(dataset: Dataset, split: str, *, check: bool = True) -> np.ndarray:
    """The int64 label of every row of a split, in order, by :func:`read_column` (with `check`,
    the shards' checksums checked in the same read)."""
    return check_labels(dataset, split, read_column(dataset, split, "label", check=check))


def check_labels(dataset: Dataset, split: str, values: Sequence[bytes | int]) -> np.ndarray:
    """The labels `values` of a split as int64, each one of dataset.json's classes, or one line."""
    labels = np.array(values, dtype=np.int64)
    wrong = labels[(labels < 0) | (labels >= len(dataset.class_names))]
    if len(wrong):
        raise ToolkitError(f"the {split} shards of {dataset.folder} hold label {wrong[0]} of "
                           f"{len(dataset.class_names)} classes; pack again")
    return labels


def read_split(folder: str | os.PathLike, split: str, *, shuffle_buffer: int = 2048,
               seed: int | None = None, cycle_length: int = 4, check: bool = True):
    """(uint8 image, int64 label) pairs of one split as a `tf.data.Dataset` that streams the
    shards: files shuffled and interleaved, a shuffle buffer, decoding in parallel, prefetch.
    `shuffle_buffer=0` reads in the shards' order. `check` verifies the shards' checksums
    first (one pass over the files), so that a damaged shard is a ToolkitError naming it."""
    import tensorflow as tf

    if split not in SPLITS:
        raise ToolkitError(f"split {split!r}: choose {' or '.join(SPLITS)}")
    dataset = read_dataset(folder)
    if check:
        verify(dataset, split)
    files = [str(p) for p in dataset.files(split)]
    ordered = shuffle_buffer == 0
    names = tf.data.Dataset.from_tensor_slices(files)
    if not ordered:
        names = names.shuffle(len(files), seed=seed)
    records = names.interleave(tf.data.TFRecordDataset, cycle_length=1 if ordered else cycle_length,
                               num_parallel_calls=tf.data.AUTOTUNE,
                               deterministic=ordered or seed is not None)
    if not ordered:
        records = records.shuffle(shuffle_buffer, seed=seed)
    return records.map(parse(dataset), num_parallel_calls=tf.data.AUTOTUNE,
                       deterministic=ordered or seed is not None).prefetch(tf.data.AUTOTUNE)
