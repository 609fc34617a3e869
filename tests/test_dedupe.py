"""The duplicate policy shared by crawl and pack."""

import numpy as np
from hypothesis import given, settings, strategies as st

from toolkit.core.dedupe import Candidate, HashIndex, find_duplicates, near_pairs


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
