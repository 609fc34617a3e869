"""The `.npz` archive format: its keys, writing one row at a time, and loading it back checked.

The archive holds `X_train` (n, size, size, 3) uint8, `y_train` int64, `X_test`, `y_test`,
`class_names` (label i = the i-th class folder in sorted order), `paths_train` and
`paths_test` (where every row came from) and `meta` (a JSON string). Nothing in it needs
pickle: `np.load(path)` reads it as it is. Image arrays are stored uncompressed, so a reader
memory-maps them (:func:`load_archive`) or reads rows on demand (:class:`RowFile`).
"""

from __future__ import annotations

import json
import math
import os
import struct
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np

from ..core import images
from ..core.errors import ToolkitError, first_line
from ..core.files import atomic_path
from ..core.names import is_control

IMAGE_KEYS = ("X_train", "X_test")
LABEL_KEYS = ("y_train", "y_test")
REQUIRED_KEYS = (*IMAGE_KEYS, *LABEL_KEYS)


# --------------------------------------------------------------------------- writing

@dataclass
class ArchivePart:
    """The train or the test side of an archive as it is written: each row's label, the
    file it came from, and its pixels (`size` x `size` x 3 uint8 bytes), one row at a time."""

    labels: list[int]
    paths: list[str]
    rows: Iterable[bytes]


def write_archive(out: Path, class_names: list[str], size: int, train: ArchivePart,
                  test: ArchivePart, meta: dict) -> None:
    """Write the .npz atomically, streaming the image rows into the zip.

    Peak memory stays at one image row, whatever the archive's size.
    """
    with atomic_path(out) as tmp, zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED,
                                                  allowZip64=True) as zf:
        for key, part in (("X_train", train), ("X_test", test)):
            _write_rows(zf, key, (len(part.labels), size, size, 3), np.uint8, part.rows)
        small = {
            "y_train": np.array(train.labels, dtype=np.int64),
            "y_test": np.array(test.labels, dtype=np.int64),
            "class_names": np.array(class_names, dtype=str),
            "paths_train": np.array(train.paths, dtype=str),
            "paths_test": np.array(test.paths, dtype=str),
            "meta": np.array(json.dumps(meta, ensure_ascii=False)),
        }
        for key, array in small.items():
            with zf.open(f"{key}.npy", "w", force_zip64=True) as member:
                np.lib.format.write_array(member, array, allow_pickle=False)


def _write_rows(zf: zipfile.ZipFile, key: str, shape: tuple[int, ...], dtype: type,
                rows: Iterable[bytes]) -> None:
    with zf.open(f"{key}.npy", "w", force_zip64=True) as member:
        write_npy_header(member, shape, dtype)
        for row in rows:
            member.write(row)


def write_npy_header(stream: BinaryIO, shape: tuple[int, ...], dtype) -> None:
    """The .npy header of a C-order array whose rows the caller writes after it, one by one:
    an array of any size is written without ever being held in memory."""
    np.lib.format.write_array_header_2_0(stream, {
        "descr": np.lib.format.dtype_to_descr(np.dtype(dtype)), "fortran_order": False,
        "shape": tuple(shape)})


# --------------------------------------------------------------------------- loading

@dataclass
class Archive:
    """A validated archive: images as raw 0-255 RGB uint8, labels 0..n_classes-1."""

    X_train: np.ndarray
    y_train: np.ndarray
    X_test: np.ndarray
    y_test: np.ndarray
    class_names: list[str]
    meta: dict
    path: str

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.X_train.shape[1:])

    @property
    def identity_file(self) -> str:
        """The file whose path, size and time identify the data (in the feature cache's key)."""
        return self.path


def load_archive(path: str | os.PathLike) -> Archive:
    """Open and check an archive; raise ToolkitError naming the first problem found.

    Image arrays stored uncompressed (as pack writes them) are memory-mapped rather than
    read, so a training run holds only the rows it is using.
    """
    path = Path(path)
    if not path.exists():
        raise ToolkitError(f"archive {path} does not exist; make one with "
                           f"`toolkit pack --out {path}`")
    if not zipfile.is_zipfile(path):
        raise ToolkitError(f"{path} is not an .npz archive (not a zip file, or truncated); "
                           "make one with `toolkit pack`")
    try:
        _check_members(path)
        with np.load(path, allow_pickle=False) as npz:
            keys = set(npz.files)
            missing = [k for k in REQUIRED_KEYS if k not in keys]
            if missing:
                raise ToolkitError(f"{path} lacks {', '.join(missing)}; an archive needs "
                                   f"{', '.join(REQUIRED_KEYS)} (make one with `toolkit pack`)")
            arrays = {k: (_memmap_member(path, k) if k in IMAGE_KEYS else None)
                      for k in (*REQUIRED_KEYS, "class_names", "meta") if k in keys}
            arrays = {k: npz[k] if a is None else a for k, a in arrays.items()}
    except ToolkitError:
        raise
    except zipfile.BadZipFile:
        raise ToolkitError(f"{path} is not an .npz archive (not a zip file, or truncated); "
                           "make one with `toolkit pack`") from None
    except ValueError as e:
        if "pickle" in str(e):
            raise ToolkitError(f"{path} holds object arrays, which need pickle to load; "
                               "refusing (pickles can run code). Store plain arrays") from None
        raise ToolkitError(f"{path} is damaged: {first_line(e, 100)}") from None
    except Exception as e:  # numpy and zipfile raise many types on damaged data
        raise ToolkitError(f"{path} is damaged or truncated ({type(e).__name__}: {first_line(e, 100)}); "
                           "pack it again") from None
    return _validated(path, arrays)


def _validated(path: Path, a: dict[str, np.ndarray]) -> Archive:
    def bad(msg: str) -> ToolkitError:
        return ToolkitError(f"{path}: {msg}")

    for k in IMAGE_KEYS:
        x = a[k]
        if x.dtype != np.uint8:
            raise bad(f"{k} has dtype {x.dtype}; images must be uint8 RGB 0-255")
        if x.ndim != 4 or x.shape[-1] != 3:
            raise bad(f"{k} has shape {x.shape}; images must be (n, height, width, 3)")
    if a["X_train"].shape[1:] != a["X_test"].shape[1:]:
        raise bad(f"X_train images are {a['X_train'].shape[1:]} but X_test images are "
                  f"{a['X_test'].shape[1:]}")
    for xk, yk in zip(IMAGE_KEYS, LABEL_KEYS):
        y = a[yk]
        if y.ndim != 1 or y.dtype.kind not in "iu":
            raise bad(f"{yk} must be a 1-D integer array, not {y.dtype} {y.shape}")
        if len(y) != len(a[xk]):
            raise bad(f"{yk} has {len(y)} labels for {len(a[xk])} images in {xk}")
        if len(y) == 0:
            raise bad(f"{yk} is empty")
    labels = np.concatenate([a["y_train"], a["y_test"]])
    if labels.min() < 0:
        raise bad(f"labels must be 0..n_classes-1; found {labels.min()}")
    if "class_names" in a:
        names = a["class_names"]
        if names.dtype.kind != "U" or names.ndim != 1:
            raise bad("class_names must be a 1-D string array")
        class_names = [str(n) for n in names]
        odd = [n for n in class_names if any(map(is_control, n))]
        if odd:  # a newline would shift every label after it in labels.txt
            raise bad(f"class name {odd[0]!r} holds a control character; pack it again")
        if labels.max() >= len(class_names):
            raise bad(f"label {labels.max()} is outside the {len(class_names)} class_names "
                      f"({', '.join(class_names)})")
    else:
        class_names = [str(i) for i in range(int(labels.max()) + 1)]
    missing = sorted(set(range(len(class_names))) - set(a["y_train"].tolist()))
    if missing:
        raise bad(f"class {', '.join(class_names[i] for i in missing)} has no training "
                  "images; class_names disagree with the labels")
    if len(class_names) < 2:
        raise bad("a classifier needs at least two classes")
    meta = {}  # an archive made elsewhere may have none: its images count as cropped
    if "meta" in a:
        try:
            meta = json.loads(str(a["meta"]))
        except ValueError as e:
            raise bad(f"meta is damaged (not JSON: {e}); pack it again") from None
        if not isinstance(meta, dict):
            raise bad("meta is damaged (not a JSON object); pack it again")
        if meta.get("fit", "crop") not in images.FITS:
            raise bad(f"meta says fit {meta['fit']!r}, not one of {', '.join(images.FITS)}; "
                      "pack it again")
    return Archive(a["X_train"], a["y_train"].astype(np.int64), a["X_test"],
                   a["y_test"].astype(np.int64), class_names, meta, str(path))


#: The most bytes the meta member may declare: far above any real archive's JSON, far below what
#: a lying header could make the loader allocate. (Every other member's size follows the images'.)
META_BYTES = 64 * 2**20


def _check_members(path: Path) -> None:
    """Check what each member declares before any is read, so that a small file cannot make the
    loader allocate what its headers claim: the size in the zip directory must be what the
    member's .npy header declares (rows x row bytes), and the members must agree (one label a
    row, at most one class name a training image, a small meta)."""
    declared: dict[str, tuple[tuple[int, ...], np.dtype]] = {}
    with zipfile.ZipFile(path) as zf:
        for info in zf.infolist():
            key = info.filename.removesuffix(".npy")
            if not info.filename.endswith(".npy") or key not in (*REQUIRED_KEYS, "class_names", "meta"):
                continue
            with zf.open(info) as member:
                version = np.lib.format.read_magic(member)
                read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                               else np.lib.format.read_array_header_2_0)
                shape, _, dtype = read_header(member, max_header_size=10_000)
                header_bytes = member.tell()
            if dtype.hasobject:
                raise ValueError("object arrays need pickle")
            data_bytes = math.prod(shape) * dtype.itemsize
            if info.file_size != header_bytes + data_bytes:
                raise ToolkitError(f"{path} is damaged: {key} declares {shape} {dtype} "
                                   f"({data_bytes:,} bytes) but holds {info.file_size - header_bytes:,}; "
                                   "pack it again")
            if key == "meta" and data_bytes > META_BYTES:
                raise ToolkitError(f"{path} is damaged: {key} declares {data_bytes:,} bytes, more "
                                   f"than any archive's; pack it again")
            declared[key] = shape, dtype
    for x_key, y_key in zip(IMAGE_KEYS, LABEL_KEYS):
        if x_key in declared and y_key in declared:
            rows = declared[x_key][0][0] if declared[x_key][0] else 0
            labels = math.prod(declared[y_key][0])
            if labels != rows:
                raise ToolkitError(f"{path}: {y_key} has {labels} labels for {rows} images in "
                                   f"{x_key}; pack it again")
    if "class_names" in declared and "X_train" in declared:
        names, rows = declared["class_names"][0], declared["X_train"][0][:1]
        if len(names) != 1 or not rows or names[0] > rows[0]:
            raise ToolkitError(f"{path}: class_names declares shape {names}, more names than the "
                               f"{rows[0] if rows else 0} training images; pack it again")


def _memmap_member(path: Path, key: str) -> np.ndarray | None:
    """Memory-map an uncompressed .npy member of a zip; None if it is compressed."""
    with zipfile.ZipFile(path) as zf:
        info = zf.getinfo(f"{key}.npy")
    if info.compress_type != zipfile.ZIP_STORED:
        return None
    with open(path, "rb") as f:
        f.seek(info.header_offset)
        local = f.read(30)
        if local[:4] != b"PK\x03\x04":
            return None
        name_len, extra_len = struct.unpack("<HH", local[26:30])
        f.seek(info.header_offset + 30 + name_len + extra_len)
        version = np.lib.format.read_magic(f)
        read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                       else np.lib.format.read_array_header_2_0)
        shape, fortran, dtype = read_header(f)
        if dtype.hasobject:
            raise ValueError("object arrays need pickle")
        offset = f.tell()
    if offset + math.prod(shape) * dtype.itemsize > os.path.getsize(path):
        raise OSError(f"{key} is cut short")
    return np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=shape,
                     order="F" if fortran else "C")


class RowFile:
    """Rows of an array stored in a file, read with pread when asked for.

    Unlike a memory map, what has been read does not stay in the process's resident
    memory, so a pass over a dataset of any size runs in the memory of one batch.
    """

    def __init__(self, array: np.memmap):
        self.path, self.offset = array.filename, array.offset
        self.shape, self.dtype = array.shape, array.dtype
        self.row_bytes = math.prod(self.shape[1:]) * self.dtype.itemsize

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, rows) -> np.ndarray:
        rows = np.arange(self.shape[0])[rows] if not isinstance(rows, np.ndarray) else rows
        out = np.empty((len(rows), *self.shape[1:]), dtype=self.dtype)
        flat = out.reshape(len(rows), -1).view(np.uint8)
        with open(self.path, "rb", buffering=0) as f:
            for i, row in enumerate(rows.tolist()):
                f.seek(self.offset + row * self.row_bytes)
                f.readinto(memoryview(flat[i]))
        return out


def row_reader(array: np.ndarray):
    """A :class:`RowFile` for a memory-mapped array, the array itself otherwise."""
    return RowFile(array) if isinstance(array, np.memmap) and array.flags.c_contiguous else array
