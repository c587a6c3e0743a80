"""Training-batch augmentation and the validation units of train/forecaster.py."""

import numpy as np
import pytest

from train import forecaster as train_lib


def _batch(rng, b=64, t=12, d=12):
    return np.cumsum(rng.normal(size=(b, t, d)), axis=1).astype(np.float32)


def test_reflect_negates_motion_relative_to_first_frame():
    rng = np.random.default_rng(0)
    batch = _batch(rng)
    out = train_lib.augment(batch, ("reflect",), np.random.default_rng(1))
    flipped = ~np.all(np.isclose(out, batch), axis=(1, 2))
    assert 0 < flipped.sum() < len(batch)  # about half
    # Reflected windows: same first frame, every relative position and step negated.
    np.testing.assert_allclose(out[flipped, 0], batch[flipped, 0], atol=1e-5)
    np.testing.assert_allclose(out[flipped] - out[flipped, :1], -(batch[flipped] - batch[flipped, :1]), atol=1e-4)
    np.testing.assert_array_equal(out[~flipped], batch[~flipped])
    assert not np.shares_memory(out, batch)


def test_reverse_plays_windows_backwards():
    batch = _batch(np.random.default_rng(0))
    out = train_lib.augment(batch, ("reverse",), np.random.default_rng(2))
    rev = ~np.all(out == batch, axis=(1, 2))
    assert 0 < rev.sum() < len(batch)
    np.testing.assert_array_equal(out[rev], batch[rev, ::-1])


def test_augmentation_is_reproducible_per_seed_and_epoch():
    windows = _batch(np.random.default_rng(0), b=200)
    a = next(train_lib.epoch_batches(windows, 32, seed=3, epoch=2, augmentations=("reflect",)))
    b = next(train_lib.epoch_batches(windows, 32, seed=3, epoch=2, augmentations=("reflect",)))
    c = next(train_lib.epoch_batches(windows, 32, seed=3, epoch=3, augmentations=("reflect",)))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_unknown_augmentation_is_rejected():
    with pytest.raises(ValueError, match="unknown augmentation"):
        train_lib.augment(_batch(np.random.default_rng(0)), ("flip",), np.random.default_rng(0))
