"""A shard's bytes without TensorFlow: `tf.train.Example` records encoded (:func:`example`)
and read back one feature at a time (:func:`read_feature`), in TFRecord framing (:func:`frame`,
:func:`read_records`). Pack's workers write with it and stay small; checking a shard and reading
its labels or paths takes one read of the file, hashed as it is parsed (:mod:`.shards`).
"""

from __future__ import annotations

import os
import struct
from collections.abc import Callable, Iterator
from pathlib import Path

from ..core.errors import ToolkitError


def example(features: dict[str, bytes | str | int]) -> bytes:
    """A serialized `tf.train.Example` of these features (str as UTF-8, int as int64), keys in
    sorted order so that equal records are equal bytes."""
    entries = []
    for key in sorted(features):
        value = features[key]
        if isinstance(value, int):
            feature = _field(3, _field(1, _varint(value & 0xFFFF_FFFF_FFFF_FFFF)))  # Int64List, packed
        else:
            data = value.encode("utf-8", "surrogateescape") if isinstance(value, str) else value
            feature = _field(1, _field(1, data))  # BytesList
        entries.append(_field(1, _field(1, key.encode()) + _field(2, feature)))
    return _field(1, b"".join(entries))  # Example.features


def _varint(n: int) -> bytes:
    out = bytearray()
    while n > 0x7F:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited protobuf field."""
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


#: The field of a Feature message that holds a list of each kind of value.
KINDS = {"bytes": 1, "int64": 3}


def read_feature(record: bytes | memoryview, name: str, kind: str) -> bytes | int:
    """One feature of a record (`kind` "bytes": a str as its UTF-8 bytes; "int64": an int),
    read without TensorFlow as TensorFlow reads it: of a key that occurs more than once, the
    last entry (protobuf's merge). A record without one value of that kind under `name`
    raises ValueError."""
    data, key = memoryview(record), name.encode()
    feature, at, size = None, 0, len(data)
    while at < size:
        number, entry, at = _field_at(data, at, size)
        if number != 1:  # not Example.features: a field that protobuf skips
            continue
        end = at
        while entry < end:  # the map's entries, each a key (1) and its Feature (2)
            number, field, entry = _field_at(data, entry, end)
            found = value = None
            while number == 1 and field < entry:
                part, start, field = _field_at(data, field, entry)
                if part == 1:
                    found = data[start:field]
                elif part == 2:
                    value = (start, field)
            if found == key:
                feature = value
    if feature is None:
        raise ValueError(f"no feature {name!r}")
    lists = _all_fields(data, *feature)  # a Feature: a BytesList (1) or an Int64List (3)
    values = _all_fields(data, *lists[0][1:]) if [n for n, _, _ in lists] == [KINDS[kind]] else []
    if len(values) != 1:
        raise ValueError(f"feature {name!r} is not one {kind} value")
    _, at, end = values[0]  # the bytes; the ints, packed
    if kind == "bytes":
        return bytes(data[at:end])
    number, at = _varint_at(data, at) if at < end else (0, -1)
    if at != end or number >> 64:
        raise ValueError(f"feature {name!r} is not one {kind} value")
    return number - (1 << 64) if number >> 63 else number  # int64: two's complement


def _all_fields(data: memoryview, at: int, end: int) -> list[tuple[int, int, int]]:
    """(field number, start, end) of each field of the message from `at` to `end`."""
    fields = []
    while at < end:
        fields.append(_field_at(data, at, end))
        at = fields[-1][2]
    return fields


def _field_at(data: memoryview, at: int, end: int) -> tuple[int, int, int]:
    """(field number, start, end) of the length-delimited field at `at` of a message that ends
    at `end`: example() writes no other kind. (A tag and a length under 128 are read here:
    a column's read parses every field of every record.)"""
    tag = data[at]
    tag, at = (tag, at + 1) if tag < 0x80 else _varint_at(data, at)
    length = data[at] if at < end else 0x80
    length, at = (length, at + 1) if length < 0x80 else _varint_at(data, at)
    if tag & 7 != 2 or at + length > end:
        raise ValueError("a field that example() does not write")
    return tag >> 3, at, at + length


def _varint_at(data: memoryview, at: int) -> tuple[int, int]:
    """The varint at `at`, and where the next field starts."""
    value = shift = 0
    while at < len(data) and shift < 64:
        byte = data[at]
        value, at, shift = value | (byte & 0x7F) << shift, at + 1, shift + 7
        if byte < 0x80:
            return value, at
    raise ValueError("a varint runs past its message")


def frame(record: bytes, crc: Callable[[bytes], int]) -> bytes:
    """A record as a TFRecord file holds it: length, the length's CRC, record, the record's CRC
    (`crc`: :func:`crc32c`)."""
    length = struct.pack("<Q", len(record))
    return b"".join((length, struct.pack("<I", _masked(crc(length))), record,
                     struct.pack("<I", _masked(crc(record)))))


def _masked(crc: int) -> int:
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFF_FFFF


def crc32c() -> Callable[[bytes], int]:
    """CRC32C, which TFRecord framing checks its lengths and records by."""
    try:
        import google_crc32c
    except ImportError:
        raise ToolkitError("writing shards needs google-crc32c: pip install "
                           "'toolkit-imageclass[scale]'") from None
    return google_crc32c.value


def read_records(path: Path, hash_update: Callable[[bytes], object] | None) -> Iterator[memoryview]:
    """The records of a TFRecord file, read once, every byte passed to `hash_update` (a digest's
    update; None: unhashed); a framing that runs past the file raises ValueError (the CRCs are
    left to the digest)."""
    with open(path, "rb", buffering=2**20) as f:
        left = os.fstat(f.fileno()).st_size
        while left:
            head = f.read(12)  # length (8 bytes) and its CRC (4)
            length = int.from_bytes(head[:8], "little")
            if len(head) < 12 or length + 16 > left:
                raise ValueError("a record runs past the end of the file")
            body = f.read(length + 4)  # the record and its CRC
            if len(body) < length + 4:
                raise ValueError("the file ends inside a record")
            if hash_update is not None:
                hash_update(head)
                hash_update(body)
            left -= length + 16
            yield memoryview(body)[:length]
