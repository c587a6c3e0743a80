"""The forecaster trainer's input pipeline (kpflow/data/windows.py): window augmentation, epoch batches."""

import numpy as np
import pytest

from kpflow.data import windows as pipeline


def _batch(rng, b=64, t=12, d=12):
    return np.cumsum(rng.normal(size=(b, t, d)), axis=1).astype(np.float32)


def test_reflect_negates_motion_relative_to_first_frame():
    rng = np.random.default_rng(0)
    batch = _batch(rng)
    out = pipeline.augment(batch, ("reflect",), np.random.default_rng(1))
    flipped = ~np.all(np.isclose(out, batch), axis=(1, 2))
    assert 0 < flipped.sum() < len(batch)  # about half
    # Reflected windows: same first frame, every relative position and step negated.
    np.testing.assert_allclose(out[flipped, 0], batch[flipped, 0], atol=1e-5)
    np.testing.assert_allclose(out[flipped] - out[flipped, :1], -(batch[flipped] - batch[flipped, :1]), atol=1e-4)
    np.testing.assert_array_equal(out[~flipped], batch[~flipped])
    assert not np.shares_memory(out, batch)


def test_reverse_plays_windows_backwards():
    batch = _batch(np.random.default_rng(0))
    out = pipeline.augment(batch, ("reverse",), np.random.default_rng(2))
    rev = ~np.all(out == batch, axis=(1, 2))
    assert 0 < rev.sum() < len(batch)
    np.testing.assert_array_equal(out[rev], batch[rev, ::-1])


def test_augmentation_is_reproducible_per_seed_and_epoch():
    windows = _batch(np.random.default_rng(0), b=200)
    a = next(pipeline.epoch_batches(windows, 32, seed=3, epoch=2, augmentations=("reflect",)))
    b = next(pipeline.epoch_batches(windows, 32, seed=3, epoch=2, augmentations=("reflect",)))
    c = next(pipeline.epoch_batches(windows, 32, seed=3, epoch=3, augmentations=("reflect",)))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_unknown_augmentation_is_rejected():
    with pytest.raises(ValueError, match="unknown augmentation"):
        pipeline.augment(_batch(np.random.default_rng(0)), ("flip",), np.random.default_rng(0))


def test_epoch_batches_follow_seed_and_epoch_in_order():
    """A resumed run sees the same batches in the same order: a batch stream depends only on (seed, epoch)."""
    data = _batch(np.random.default_rng(0), b=50)
    a = pipeline.epoch_batches(data, 16, seed=1, epoch=4, augmentations=("reflect", "reverse"))
    b = pipeline.epoch_batches(data, 16, seed=1, epoch=4, augmentations=("reflect", "reverse"))
    first = [next(a) for _ in range(7)]  # past one pass over the windows (3 batches per pass)
    for x, y in zip(first, [next(b) for _ in range(7)]):
        np.testing.assert_array_equal(x, y)
    assert all(x.shape == (16, 12, 12) for x in first)
    assert not np.array_equal(first[0], first[1])
