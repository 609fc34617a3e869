"""The sharded pack's steps on their own: a file's record between steps, the band keys that find
near duplicates, and the shard writer's pixels."""

from __future__ import annotations

import collections

import numpy as np
import pytest

from conftest import distinct_image, encode, grid_image
from helpers import groups_of
from toolkit.core import dedupe, images

pytest.importorskip("apache_beam")

from toolkit.data import pipeline  # noqa: E402 (Beam is the scale extra)
from toolkit.data.wire import Usable, decode_batch, encode_batch  # noqa: E402


def test_a_record_between_steps_is_small_and_comes_back_whole():
    """Every field survives the bytes, 64-bit hashes with their top bit set, names that are not
    UTF-8, a review flag that names no class and one that names the empty string apart; a batch
    of records comes back as it went, in order."""
    plain = Usable(96_000, 2, "hedgehog/img00012.jpg", "ab" * 32, 2**64 - 3, 400, 300, 2**63 + 5)
    decided = plain._replace(name="cat/caf\udce9.jpg", status="near duplicate", detail="cat/é.jpg",
                             moved_from="dog", flag=(True, "fox"), split="test", shard=7, shards=24)
    for usable in (plain, decided, plain._replace(flag=(False, "")), plain._replace(detail="x" * 300)):
        assert Usable.decode(usable.encode()) == usable
    assert len(plain.encode()) <= 110  # Beam's own encoding of the tuple: 170 bytes
    batch = [plain, decided, plain._replace(detail="x" * 300), plain._replace(name="")]
    assert decode_batch(encode_batch(batch)) == batch and decode_batch(encode_batch([])) == []


@pytest.mark.parametrize("size", [24, 224, 300])
@pytest.mark.parametrize("fit", images.FITS)
def test_the_shard_writers_pixels_are_what_decode_gives(size, fit):
    rotated = grid_image(3, (640, 480))
    exif = rotated.getexif()
    exif[images.ORIENTATION] = 6
    for data in (distinct_image(1, (900, 700)), encode(grid_image(2).convert("CMYK"), "JPEG"),
                 encode(rotated, "JPEG", exif=exif), encode(grid_image(4).convert("LA"), "PNG")):
        info, pixels = images.decode(data, images.Checks(), size, fit)
        sha256, again = images.decode_pixels(data, images.Checks(), size, fit)
        assert sha256 == info.sha256 and np.array_equal(again, pixels)


def test_band_keys_find_exactly_dedupes_groups_with_k_minus_one_pairs_for_k_equal_hashes():
    """The pipeline's grouping by band (each group on its own worker) joins the files into
    dedupe's groups, exact copies (0 bits apart) among them, through close pairs only; 300 files
    with one hash (a placeholder picture) are 299 pairs, not 44,850."""
    rng = np.random.default_rng(0)
    for threshold in (0, 2, 5, 8, 12, 24):  # 24: no bands pay, one group compares all pairs
        hashes = rng.integers(0, 2**64, 2000, dtype=np.uint64)
        near = hashes[:400].copy()
        for k in range(400):  # planted near copies at 0 .. threshold + 2 bits
            for bit in rng.choice(64, k % (threshold + 3), replace=False):
                near[k] ^= np.uint64(1) << np.uint64(int(bit))
        placeholder = np.full(300, hashes[5] ^ np.uint64(1), dtype=np.uint64)  # 1 bit from a file
        hashes = np.concatenate([hashes, near, placeholder])
        ids = np.arange(len(hashes)) + 1000
        expected = {(int(ids[i]), int(ids[j])) for i, j in dedupe.near_pairs(hashes, threshold)}
        groups = collections.defaultdict(bytes)  # what Beam's combine of rows hands each worker
        files = [Usable(i, 0, f"{i}.jpg", "0" * 64, h, 1, 1, 0)
                 for i, h in zip(ids.tolist(), hashes.tolist())]
        for start in range(0, len(files), 7):  # batches of 7 files, as a chunk's are
            for band, rows in pipeline.band_rows(encode_batch(files[start:start + 7]), threshold):
                groups[band] += rows
        found = [pair for group in groups.items() for pair in pipeline._near_pairs(group, threshold)]
        assert set(found) <= expected and groups_of(found, ids.tolist()) == groups_of(expected, ids.tolist())
        placeholders = range(int(ids[-300]), int(ids[-1]) + 1)
        assert sum(i in placeholders and j in placeholders for i, j in found) == 299  # from one band
        assert len(expected) >= 300 * 299 // 2 + 400 * (threshold + 1) // (threshold + 3)
        # the placeholders' pairs less all but 299 of theirs: every close pair would be 44,850 more
        assert len(set(found)) <= len(expected) - 300 * 299 // 2 + 299, len(set(found))
