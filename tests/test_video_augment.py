"""FOMM's augmentation (kpflow.data.video_augment): flips, crop and resize, colour jitter against
its definitions, and one draw shared by the frames of a clip (and of a source/driving pair)."""

from __future__ import annotations

import colorsys

import ml_collections
import numpy as np
import pytest
from conftest import VIDEO_FRAMES, VIDEO_SIZE, VIDEO_TEST, VIDEO_TRAIN

from kpflow.data.video_augment import Augmentation, hsv_to_rgb, rgb_to_hsv
from kpflow.data.video_pairs import PairBatches, VideoFolder

SIZE, FRAMES, TRAIN, TEST = VIDEO_SIZE, VIDEO_FRAMES, VIDEO_TRAIN, VIDEO_TEST


@pytest.fixture(scope="module")
def datasets(video_datasets):
    return video_datasets


def _clip(seed=0, shape=(2, 12, 16, 3)) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0, 1, shape).astype(np.float32)


def test_horizontal_flip_happens_about_half_the_time_and_flips(datasets):
    aug = Augmentation({"flip_param": {"horizontal_flip": True, "time_flip": False}})
    clip = _clip()
    outcomes = []
    for seed in range(40):
        out = aug(clip, np.random.default_rng(seed))
        flipped = np.array_equal(out, clip[:, :, ::-1])
        assert flipped or np.array_equal(out, clip)
        outcomes.append(flipped)
    assert 8 <= sum(outcomes) <= 32  # both outcomes occur
    # Joint: in a batch, source and driving are both mirrored or neither is.
    ds = VideoFolder(datasets["png"][0], "train", frame_shape=(SIZE, SIZE))
    frames = np.concatenate([ds.video(i)[1] for i in range(ds.num_videos)])

    def mirrored(image):  # True/False: a (mirrored) frame of the dataset
        if any(np.array_equal(image, f) for f in frames):
            return False
        assert any(np.array_equal(image[:, ::-1], f) for f in frames)
        return True

    batch = next(PairBatches(ds, 4, num_repeats=4, seed=0, augment=aug).epoch(0))
    pairs = zip(batch["source"], batch["driving"], strict=True)
    flips = [(mirrored(s), mirrored(d)) for s, d in pairs]
    assert all(s == d for s, d in flips) and len({s for s, _ in flips}) == 2


def test_time_flip_reverses_the_clip():
    aug = Augmentation({"flip_param": {"time_flip": True}})
    clip = _clip(shape=(3, 4, 4, 3))
    outcomes = set()
    for seed in range(20):
        out = aug(clip, np.random.default_rng(seed))
        reversed_ = np.array_equal(out, clip[::-1])
        assert reversed_ or np.array_equal(out, clip)
        outcomes.add(reversed_)
    assert outcomes == {True, False}


def test_jitter_with_zero_parameters_is_the_identity():
    clip = _clip()
    zero = {"brightness": 0, "contrast": 0, "saturation": 0, "hue": 0}
    for params in ({}, {"jitter_param": zero}, {"flip_param": {}, "jitter_param": {}}):
        np.testing.assert_array_equal(Augmentation(params)(clip, np.random.default_rng(0)), clip)


def test_jitter_stays_in_range_and_is_one_draw_for_the_clip():
    aug = Augmentation(
        {"jitter_param": {"brightness": 0.8, "contrast": 0.8, "saturation": 0.8, "hue": 0.5}}
    )
    frame = _clip(shape=(1, 12, 16, 3))
    clip = np.concatenate([frame, frame, frame])
    changed = 0
    for seed in range(10):
        out = aug(clip, np.random.default_rng(seed))
        assert out.dtype == np.float32 and out.shape == clip.shape
        assert out.min() >= 0 and out.max() <= 1
        np.testing.assert_array_equal(out[0], out[2])  # the same factors for every frame
        changed += not np.allclose(out, clip, atol=1e-3)
    assert changed == 10


def test_each_jitter_matches_its_definition():
    rng = np.random.default_rng(0)
    clip = _clip() * 0.5
    out = Augmentation({"jitter_param": {"brightness": [1.5, 1.5]}})(clip, rng)
    np.testing.assert_allclose(out, clip * 1.5, atol=1e-6)
    grey = clip @ np.array([0.299, 0.587, 0.114], np.float32)
    out = Augmentation({"jitter_param": {"saturation": [0.0, 0.0]}})(clip, rng)
    np.testing.assert_allclose(out, np.repeat(grey[..., None], 3, -1), atol=1e-6)
    out = Augmentation({"jitter_param": {"contrast": [0.0, 0.0]}})(clip, rng)
    frame_means = grey.mean((1, 2))[:, None, None, None]
    np.testing.assert_allclose(out, np.broadcast_to(frame_means, clip.shape), atol=1e-6)
    red = np.zeros((1, 2, 2, 3), np.float32)
    red[..., 0] = 1
    out = Augmentation({"jitter_param": {"hue": [1 / 3, 1 / 3]}})(red, rng)
    np.testing.assert_allclose(out, np.roll(red, 1, axis=-1), atol=1e-6)  # red -> green
    hsv_round_trip = hsv_to_rgb(rgb_to_hsv(clip.astype(np.float64)))
    np.testing.assert_allclose(hsv_round_trip, clip, atol=1e-6)
    colours = np.concatenate([clip.reshape(-1, 3)[:50], np.eye(3), [[0, 0, 0], [1, 1, 1]]])
    reference = np.array([colorsys.rgb_to_hsv(*c) for c in colours])
    np.testing.assert_allclose(rgb_to_hsv(colours), reference, atol=1e-6)
    with pytest.raises(ValueError, match="hue"):
        Augmentation({"jitter_param": {"hue": 0.7}})
    with pytest.raises(ValueError, match="rotation_param"):
        Augmentation({"rotation_param": {"degrees": 10}})


def test_crop_and_resize():
    clip = _clip(shape=(2, 12, 16, 3))
    rng = np.random.default_rng(0)
    out = Augmentation({"crop_param": {"size": [8, 10]}})(clip, rng)
    assert out.shape == (2, 8, 10, 3)
    windows = [clip[:, y: y + 8, x: x + 10] for y in range(5) for x in range(7)]
    assert any(np.array_equal(out, w) for w in windows)
    # Larger than the clip: zero padded around it.
    out = Augmentation({"crop_param": {"size": [14, 18]}})(clip, rng)
    assert out.shape == (2, 14, 18, 3)
    np.testing.assert_array_equal(out[:, 1:13, 1:17], clip)
    assert out[:, 0].max() == 0 and out[:, :, -1].max() == 0
    # A random resize keeps the clip's shape without crop_param, the crop's with it.
    resize = Augmentation({"resize_param": {"ratio": [0.7, 1.3]}})
    shapes = {resize(clip, np.random.default_rng(s)).shape for s in range(5)}
    assert shapes == {clip.shape}
    both = Augmentation({"resize_param": {"ratio": [2.0, 2.0]}, "crop_param": {"size": [24, 32]}})
    np.testing.assert_allclose(both(clip, rng)[:, ::2, ::2].mean(), clip.mean(), atol=0.02)


def test_augmentation_takes_a_config_dict():
    cfg = ml_collections.ConfigDict({"flip_param": {"horizontal_flip": True, "time_flip": True}})
    aug = Augmentation(cfg)
    assert aug.horizontal_flip and aug.time_flip and not aug.jitter
