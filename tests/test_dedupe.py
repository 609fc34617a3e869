"""The duplicate policy shared by crawl and pack."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from helpers import groups_of
from toolkit.core import hamming
from toolkit.core.dedupe import Candidate, Dropped, HashIndex, find_duplicates, near_pairs


def cand(label, phash, pixels=100, sha=None, key=None):
    return Candidate(label, sha or f"sha{phash}-{label}-{key}", phash, pixels, key or f"{label}/{phash}")


def test_the_same_picture_under_two_labels_is_dropped_from_both():
    dropped = find_duplicates([cand(0, 0b1111), cand(1, 0b1110), cand(0, 0xFFFFFFFF00000000)])
    assert set(dropped) == {0, 1}
    assert {d.reason for d in dropped.values()} == {"label_conflict"}


def test_within_a_label_the_largest_copy_stays():
    dropped = find_duplicates([cand(0, 0, pixels=10, key="a"), cand(0, 1, pixels=50, key="b"),
                               cand(0, 3, pixels=20, key="c")])
    assert set(dropped) == {0, 2} and all(d.twin == 1 for d in dropped.values())


def test_identical_bytes_are_duplicates_whatever_the_hash():
    dropped = find_duplicates([cand(0, 0, sha="same", key="a"), cand(0, 2**63, sha="same", key="b")])
    assert list(dropped) == [1]


def test_grouping_is_transitive_so_no_near_pair_survives():
    # a-b and b-c are within 8 bits; a-c are 12 apart: still one picture
    a, b, c = 0, 0b111111, 0b111111111111
    dropped = find_duplicates([cand(0, a), cand(0, b), cand(0, c)], threshold=8)
    assert len(dropped) == 2


@settings(max_examples=30, deadline=None)
@given(st.lists(st.integers(0, 2**64 - 1), min_size=0, max_size=60), st.integers(0, 64))
def test_near_pairs_matches_brute_force(hashes, threshold):
    expected = {(i, j) for i in range(len(hashes)) for j in range(i + 1, len(hashes))
                if bin(hashes[i] ^ hashes[j]).count("1") <= threshold}
    assert set(near_pairs(np.array(hashes, dtype=np.uint64), threshold, chunk=7)) == expected


def test_hash_index_matches_exact_and_near_and_forgets_on_remove():
    index = HashIndex(threshold=4)
    index.add("s1", 0b1010, "cat")
    assert index.match("s1", 2**63) == "cat"
    assert index.match("other", 0b1011) == "cat"
    assert index.match("other", 0b1010 ^ 0b1111100000) is None
    index.remove("s1", 0b1010)
    assert index.match("s1", 0b1010) is None and len(index) == 0


# --- the linear search (toolkit.core.hamming) gives exactly what comparing all pairs gives ---

def brute_pairs(hashes, threshold):
    """Today's definition: every pair (i < j) within `threshold` bits, by comparing all pairs."""
    return [(i, j) for i in range(len(hashes)) for j in range(i + 1, len(hashes))
            if bin(hashes[i] ^ hashes[j]).count("1") <= threshold]


def planted(rng, originals, threshold):
    """Random 64-bit hashes, and a copy of some at each distance 0 .. threshold + 1."""
    hashes = [int(h) for h in rng.integers(0, 2**64, originals, dtype=np.uint64)]
    for distance in range(threshold + 2):
        source = hashes[int(rng.integers(len(hashes)))]
        flipped = rng.choice(64, min(distance, 64), replace=False)
        hashes.append(source ^ sum(1 << int(bit) for bit in flipped))
    order = rng.permutation(len(hashes))
    return [hashes[i] for i in order]


def band_plans(threshold):
    """Every way hamming can cut the bits for this threshold that is cheap enough to try."""
    return [bands for count in range(1, min(threshold + 1, 64) + 1)
            if (bands := hamming.Bands.split(threshold, count)).probes() < 5_000]


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 2**32), st.integers(1, 60), st.integers(0, 24))
def test_every_band_plan_finds_exactly_the_pairs_within_the_threshold(seed, originals, threshold):
    hashes = planted(np.random.default_rng(seed), originals, threshold)
    expected = brute_pairs(hashes, threshold)
    array = np.array(hashes, dtype=np.uint64)
    assert list(near_pairs(array, threshold)) == expected
    assert band_plans(threshold), "no plan to test"
    for bands in band_plans(threshold):
        assert bands.covers(threshold)
        assert [tuple(p) for p in hamming.banded_pairs(array, threshold, bands).tolist()] == expected, bands


@pytest.mark.parametrize("threshold, originals", [(0, 12_000), (1, 12_000), (8, 12_000), (16, 3_000),
                                                  (20, 3_000)])
def test_the_plan_for_a_million_hashes_finds_the_same_pairs(threshold, originals):
    rng = np.random.default_rng(threshold)
    hashes = np.array(planted(rng, originals, threshold), dtype=np.uint64)
    bands = hamming.plan_join(threshold, 1_000_000)
    if threshold <= 16:
        assert bands is not None  # a million hashes are not compared pair by pair
    else:  # 1M random hashes hold ~1e9 pairs within 20 bits: all pairs it is; bands stay exact
        assert bands is None
        bands = hamming.Bands.split(threshold, 4)
    expected = np.concatenate(list(hamming.all_pairs(hashes, threshold)))
    assert len(expected) >= threshold + 1  # the planted copies within the threshold at least
    assert np.array_equal(hamming.banded_pairs(hashes, threshold, bands), expected)
    assert np.array_equal(np.array(list(near_pairs(hashes, threshold))).reshape(-1, 2), expected)


def test_default_plan_at_a_million_hashes_uses_long_nearly_empty_bands():
    # 9 bands of 7 bits would make ~3e10 candidate pairs at 1M; bands of 21+ bits ~1.6e8
    bands = hamming.plan_join(8, 1_000_000)
    assert bands is not None and min(bands.widths) >= 20 and bands.covers(8)
    assert hamming.plan_index(8) is not None


def test_transitive_groups_and_label_conflicts_on_the_banded_path():
    rng = np.random.default_rng(7)
    hashes = [int(h) for h in rng.integers(0, 2**64, 10_000, dtype=np.uint64)]
    a = hashes[0]
    hashes += [a ^ 0b11111, a ^ 0b1111111111]          # a-b 5 bits, b-c 5 bits, a-c 10 bits
    hashes += [hashes[1] ^ (0xFF << 40)]                  # the same picture as hashes[1], 8 bits
    assert hamming.plan_join(8, len(hashes)) is not None
    assert len(brute_pairs_fast(hashes, 8)) == 3          # the planted pairs and nothing else
    labels = [0] * len(hashes)
    labels[-1] = 1                                        # ... under another label
    candidates = [cand(labels[i], h, pixels=100 + i, key=f"{i}") for i, h in enumerate(hashes)]
    dropped = find_duplicates(candidates, threshold=8)
    n = len(hashes)
    assert dropped == {0: Dropped("duplicate", n - 2), n - 3: Dropped("duplicate", n - 2),
                       1: Dropped("label_conflict", n - 1), n - 1: Dropped("label_conflict", 1)}


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(0, 2**64 - 1), min_size=1, max_size=6),
       st.lists(st.integers(0, 2**12), max_size=80), st.sampled_from([0, 1, 3, 8, 12, 40]))
def test_joining_pairs_join_the_groups_of_every_close_pair_through_close_pairs(pool, picks, threshold):
    """Many equal hashes (the pool's values again and again, a bit flipped here and there): the
    pairs join exactly the groups that every close pair joins, and are close pairs themselves."""
    def value(pick):  # one of the pool's values, a bit flipped in one pick of two
        flip = 1 << (pick >> 6) % 64 if pick & 32 else 0
        return pool[pick % len(pool)] ^ flip

    hashes = np.array([value(pick) for pick in picks] or [0], dtype=np.uint64)
    close = {(i, j) for i in range(len(hashes)) for j in range(i + 1, len(hashes))
             if bin(int(hashes[i]) ^ int(hashes[j])).count("1") <= threshold}
    joining = [tuple(pair) for pairs in hamming.joining_pairs(hashes, threshold, chunk=7)
               for pair in pairs.tolist()]
    assert set(joining) <= close and all(i < j for i, j in joining)
    assert groups_of(joining, range(len(hashes))) == groups_of(close, range(len(hashes)))


def test_k_copies_of_one_hash_are_k_minus_one_pairs_and_one_group(monkeypatch):
    """A placeholder picture crawled 3,000 times, among 20,000 others, a near copy of it under
    another label: the policy searches 20,001 distinct hashes (every close pair of all 23,000
    would be 4.5 million), and drops the whole group."""
    rng = np.random.default_rng(3)
    hashes = [int(h) for h in rng.integers(0, 2**64, 20_000, dtype=np.uint64)]
    hashes += [hashes[0] ^ 0b111] * 3_000
    pairs = sum(len(p) for p in hamming.joining_pairs(np.array(hashes, dtype=np.uint64), 8))
    assert 3_000 <= pairs < 3_100, pairs
    searched, close_pairs = [], hamming.close_pairs
    monkeypatch.setattr(hamming, "close_pairs", lambda h, *a: searched.append(len(h)) or close_pairs(h, *a))
    labels = [0] * len(hashes)
    labels[0] = 1
    dropped = find_duplicates([cand(labels[i], h, key=f"{i:05}") for i, h in enumerate(hashes)])
    assert searched == [20_001]
    assert sorted(dropped) == [0, *range(20_000, 23_000)]
    assert {d.reason for d in dropped.values()} == {"label_conflict"}
    assert dropped[0].twin == 20_000 and dropped[22_999].twin == 0


def brute_pairs_fast(hashes, threshold):
    return np.concatenate(list(hamming.all_pairs(np.array(hashes, dtype=np.uint64), threshold)))


class TodaysHashIndex:
    """The crawl's index before the linear one (its array rebuilt after every add): the reference."""

    def __init__(self, threshold):
        self.threshold, self.by_sha, self.phashes, self.owners = threshold, {}, [], []

    def __len__(self):
        return len(self.owners)

    def match(self, sha256, phash):
        if sha256 in self.by_sha:
            return self.by_sha[sha256]
        close = [i for i, h in enumerate(self.phashes) if bin(h ^ phash).count("1") <= self.threshold]
        return self.owners[close[0]] if close else None

    def add(self, sha256, phash, owner):
        self.by_sha.setdefault(sha256, owner)
        self.phashes.append(phash)
        self.owners.append(owner)

    def remove(self, sha256, phash):
        for i in range(len(self.phashes) - 1, -1, -1):
            if self.phashes[i] == phash:
                del self.phashes[i], self.owners[i]
                break
        self.by_sha.pop(sha256, None)


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 2**32), st.sampled_from([0, 1, 3, 8, 12, 16, 20, 40]))
def test_incremental_index_answers_as_todays(seed, threshold):
    rng = np.random.default_rng(seed)
    pool = planted(rng, 40, threshold)
    ours, todays = HashIndex(threshold), TodaysHashIndex(threshold)
    added = []
    for step in range(120):
        action = rng.integers(10)
        phash = pool[int(rng.integers(len(pool)))]
        if action == 0 and added:                    # a failed write: undo an add
            sha, phash = added.pop(int(rng.integers(len(added))))
            ours.remove(sha, phash)
            todays.remove(sha, phash)
        elif action < 5:
            sha = f"sha{rng.integers(60)}"
            assert ours.match(sha, phash) == todays.match(sha, phash), step
        else:
            sha, owner = f"sha{rng.integers(60)}", f"class{step}"
            ours.add(sha, phash, owner)
            todays.add(sha, phash, owner)
            added.append((sha, phash))
        assert len(ours) == len(todays)


def test_incremental_index_is_exact_at_every_distance():
    for threshold in (0, 8, 16, 20):
        index = hamming.Index(threshold)
        rng = np.random.default_rng(threshold)
        stored = [int(h) for h in rng.integers(0, 2**64, 2_000, dtype=np.uint64)]
        for h in stored:
            index.add(h)
        base = stored[123]
        for distance in range(threshold + 2):
            query = base ^ sum(1 << int(b) for b in rng.choice(64, distance, replace=False))
            expected = [i for i, h in enumerate(stored) if bin(h ^ query).count("1") <= threshold]
            assert index.within(query).tolist() == expected, (threshold, distance)
            assert (123 in expected) == (distance <= threshold)


@pytest.mark.slow
def test_benchmark_smoke_run_checks_the_index_against_the_old_code():
    root = Path(__file__).resolve().parents[1]
    result = subprocess.run([sys.executable, "scripts/bench_dedupe.py", "--smoke"], cwd=root,
                            capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stderr
    assert "FAILED" not in result.stdout
    assert result.stdout.count("ok") >= 5 and "planted 100/100" in result.stdout
