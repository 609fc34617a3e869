"""How training rows are split and batched: a stratified, seeded validation split, even batches."""

import numpy as np

from toolkit.training.batches import Batches, Rows, validation_split


def test_batches_with_labels_split_evenly_over_replicas():
    """Keras 3's distributed fit fails on a batch its replicas cannot share: labelled batches
    stay even (losing at most replicas - 1 samples); predicting keeps every sample."""
    rows = Rows(np.arange(13 * 2).reshape(13, 2), None)
    labelled = Batches([rows], np.arange(13), 4, seed=0, replicas=2)
    sizes = [len(labelled[i][0]) for i in range(len(labelled))]
    assert sizes == [4, 4, 4]
    assert sum(len(Batches([rows], None, 4, replicas=2)[i][0]) for i in range(4)) == 13


def test_validation_split_is_stratified_and_seeded():
    labels = np.repeat([0, 1, 2], [50, 30, 20])
    train_rows, val_rows = validation_split(labels, 0.2, seed=3)
    assert np.bincount(labels[val_rows]).tolist() == [10, 6, 4]
    assert not set(train_rows) & set(val_rows) and len(train_rows) + len(val_rows) == 100
    assert np.array_equal(validation_split(labels, 0.2, seed=3)[1], val_rows)
    assert not np.array_equal(validation_split(labels, 0.2, seed=4)[1], val_rows)
    assert 99 in val_rows or 99 in train_rows  # not "the last 20%"
    assert len(set(val_rows) & set(range(80, 100))) < 20


def test_batches_depend_on_seed_and_epoch_only():
    data = Rows(np.arange(10)[:, None], None)
    a, b = Batches([data], np.arange(10), 4, seed=1), Batches([data], np.arange(10), 4, seed=1)
    b.set_epoch(3)
    b.set_epoch(0)
    assert [a[i][0].tolist() for i in range(3)] == [b[i][0].tolist() for i in range(3)]
    a.set_epoch(1)
    assert [a[i][0].tolist() for i in range(3)] != [b[i][0].tolist() for i in range(3)]
