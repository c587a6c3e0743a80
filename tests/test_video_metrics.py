"""Video metrics (pixel MAE, SSIM, the diversity protocol on frames, the per-video ratio, JEDi) and
the video feature extractors, against scikit-image and direct float64 loops."""

from __future__ import annotations

import itertools
from types import SimpleNamespace

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kpflow import features, metrics
from kpflow.keypoints import Keypoints

SKIMAGE_SSIM = {"channel_axis": -1, "data_range": 1.0, "gaussian_weights": True, "sigma": 1.5,
                "use_sample_covariance": False}


def _smooth_image(h: int, w: int, phase: float) -> np.ndarray:
    yy, xx = np.mgrid[:h, :w]
    base = 0.5 + 0.4 * np.sin(yy / 9.0 + xx / 13.0 + phase)
    return base[..., None] * np.array([1.0, 0.8, 0.6])


@pytest.mark.parametrize("shape", [(64, 64), (11, 11), (40, 23), (96, 70)])
def test_ssim_matches_scikit_image(shape):
    structural_similarity = pytest.importorskip("skimage.metrics").structural_similarity
    rng = np.random.default_rng(sum(shape))
    noisy_a = rng.random(shape + (3,))
    noisy_b = np.clip(noisy_a + 0.2 * rng.normal(size=noisy_a.shape), 0.0, 1.0)
    smooth_a, smooth_b = _smooth_image(*shape, 0.0), _smooth_image(*shape, 0.4)
    for a, b in ((noisy_a, noisy_b), (smooth_a, smooth_b), (noisy_a, smooth_b)):
        expected = structural_similarity(a, b, **SKIMAGE_SSIM)
        assert metrics.ssim(a, b) == pytest.approx(expected, abs=1e-10)
        as32 = lambda x: jnp.asarray(x, jnp.float32)
        assert float(metrics.ssim(as32(a), as32(b))) == pytest.approx(expected, abs=1e-4)
        assert float(jax.jit(metrics.ssim)(as32(a), as32(b))) == pytest.approx(expected, abs=1e-4)


def test_ssim_batches_and_identical_images():
    structural_similarity = pytest.importorskip("skimage.metrics").structural_similarity
    rng = np.random.default_rng(1)
    a = rng.random((2, 3, 20, 24, 3))
    b = np.clip(a + 0.1 * rng.normal(size=a.shape), 0.0, 1.0)
    out = metrics.ssim(a, b)
    assert out.shape == (2, 3)
    for i, j in itertools.product(range(2), range(3)):
        assert out[i, j] == pytest.approx(structural_similarity(a[i, j], b[i, j], **SKIMAGE_SSIM), abs=1e-10)
    np.testing.assert_allclose(metrics.ssim(a, a), 1.0, atol=1e-12)
    np.testing.assert_allclose(np.asarray(metrics.ssim(jnp.asarray(a[0], jnp.float32), jnp.asarray(a[0], jnp.float32))),
                               1.0, atol=1e-5)
    # Leading axes broadcast: three frames against one reference frame.
    np.testing.assert_allclose(metrics.ssim(a[0], b[0, 0]), [metrics.ssim(a[0, j], b[0, 0]) for j in range(3)])


def test_ssim_and_mae_reject_bad_shapes():
    img = np.zeros((16, 16, 3))
    with pytest.raises(ValueError, match="same H, W, C"):
        metrics.ssim(img, np.zeros((16, 15, 3)))
    with pytest.raises(ValueError, match="smaller than the 11x11 window"):
        metrics.ssim(np.zeros((10, 30, 3)), np.zeros((10, 30, 3)))
    with pytest.raises(ValueError, match="do not broadcast"):
        metrics.ssim(np.zeros((2, 16, 16, 3)), np.zeros((3, 16, 16, 3)))
    with pytest.raises(ValueError, match="same H, W, C"):
        metrics.pixel_mae(img, np.zeros((16, 16, 1)))
    with pytest.raises(ValueError, match=r"\[S, F, H, W, 3\]"):
        metrics.video_sample_scores(np.zeros((4, 2, 8, 8, 3)), np.zeros((3, 8, 8, 3)))
    with pytest.raises(ValueError, match="k must be"):
        metrics.video_sample_scores(np.zeros((4, 2, 8, 8, 3)), np.zeros((2, 8, 8, 3)), k=5)


def test_pixel_mae_by_hand():
    pred = np.zeros((2, 2, 2, 3))
    target = np.zeros((2, 2, 2, 3))
    pred[0, 0, 0, 0] = 0.6  # frame 0: one of 12 values off by 0.6
    target[1] = 0.25  # frame 1: every value off by 0.25
    np.testing.assert_allclose(metrics.pixel_mae(pred, target), [0.05, 0.25])
    np.testing.assert_allclose(np.asarray(metrics.pixel_mae(jnp.asarray(pred), jnp.asarray(target))), [0.05, 0.25],
                               rtol=1e-6)
    samples = np.stack([pred, target])  # [S=2, F=2, H, W, 3] against one target: [2, 2]
    np.testing.assert_allclose(metrics.pixel_mae(samples, target), [[0.05, 0.25], [0.0, 0.0]])


def _videos_with_offsets(offsets, frames=2, size=12) -> np.ndarray:
    """Constant grey videos ``[S, F, H, W, 3]``, sample i at ``0.5 + offsets[i]`` (so MAE = |offset|)."""
    return np.stack([np.full((frames, size, size, 3), 0.5 + o, np.float32) for o in offsets])


def test_video_sample_scores_pick_the_lowest_mae_samples():
    offsets = [0.30, -0.05, 0.10, 0.02, -0.20, 0.10]
    samples = _videos_with_offsets(offsets)
    target = np.full(samples.shape[1:], 0.5, np.float32)
    out = metrics.video_sample_scores(samples, target, k=3)
    np.testing.assert_array_equal(out["topk_index"], [3, 1, 2])  # 0.02, 0.05, then the first of the tied 0.10
    assert out["mae"] == pytest.approx((0.02 + 0.05 + 0.10) / 3, rel=1e-5)
    assert out["mae_best"] == pytest.approx(0.02, rel=1e-5)
    assert out["mae_mean"] == pytest.approx(np.mean(np.abs(offsets)), rel=1e-5)
    # Constant videos of n = 2*12*12*3 values: ||x_i - x_j|| = |o_i - o_j| sqrt(n).
    chosen = np.array([0.02, -0.05, 0.10])
    n = samples[0].size
    expected_apd = np.mean([abs(a - b) for a, b in itertools.permutations(chosen, 2)]) * np.sqrt(n)
    assert out["apd"] == pytest.approx(expected_apd, rel=1e-5)
    expected_ssim = np.mean(np.asarray(metrics.ssim(samples[[3, 1, 2]], target)))
    assert out["ssim"] == pytest.approx(expected_ssim, rel=1e-6)
    assert out["ssim"] < 1.0


def test_video_apd_by_hand_on_three_tiny_videos():
    rng = np.random.default_rng(2)
    videos = rng.random((3, 2, 11, 11, 3)).astype(np.float32)  # S=3 videos of 2 frames
    target = rng.random((2, 11, 11, 3)).astype(np.float32)
    flat = videos.reshape(3, -1).astype(np.float64)
    expected = np.mean([np.linalg.norm(flat[i] - flat[j]) for i, j in itertools.permutations(range(3), 2)])
    out = metrics.video_sample_scores(videos, target, k=3)
    assert out["apd"] == pytest.approx(expected, rel=1e-5)
    mae = [np.mean(np.abs(videos[i].astype(np.float64) - target)) for i in range(3)]
    assert out["mae"] == pytest.approx(np.mean(mae), rel=1e-5)
    assert out["mae_best"] == pytest.approx(min(mae), rel=1e-5)
    identical = metrics.video_sample_scores(np.repeat(videos[:1], 4, axis=0), target, k=4)
    assert identical["apd"] == 0.0


def test_standardized_ratio_by_hand():
    apd = np.array([2.0, 4.0, 3.0, 6.0])
    mae = np.array([1.0, 2.0, 4.0, 3.0])
    # components: APD~ = (apd - 2) / 4, MAE~ = (mae - 1) / 3; video 0 has MAE~ = 0 (undefined).
    out = metrics.standardized_ratio(apd, mae, scaling="components")
    ratios = [(4 - 2) / 4 / ((2 - 1) / 3), (3 - 2) / 4 / ((4 - 1) / 3), (6 - 2) / 4 / ((3 - 1) / 3)]
    assert np.isnan(out["per_video"][0])
    np.testing.assert_allclose(out["per_video"][1:], ratios)
    assert out["mean"] == pytest.approx(np.mean(ratios))
    assert out["median"] == pytest.approx(np.median(ratios))
    assert (out["num_videos"], out["num_undefined"]) == (4, 1)
    # ratio: r = apd / mae = [2, 2, 0.75, 2], min-max scaled over the videos.
    out = metrics.standardized_ratio(apd, mae, scaling="ratio")
    np.testing.assert_allclose(out["per_video"], [1.0, 1.0, 0.0, 1.0])
    assert (out["mean"], out["median"]) == (pytest.approx(0.75), pytest.approx(1.0))
    # none: the plain ratio; a zero MAE is undefined.
    out = metrics.standardized_ratio(apd, np.array([1.0, 2.0, 4.0, 0.0]), scaling="none")
    np.testing.assert_allclose(out["per_video"][:3], [2.0, 2.0, 0.75])
    assert np.isnan(out["per_video"][3]) and out["mean"] == pytest.approx(4.75 / 3)
    # A pooled reference (e.g. all models compared) fixes the scale: min APD 0, max 8; min MAE 0, max 4.
    out = metrics.standardized_ratio(apd, mae, scaling="components", reference=(np.array([0.0, 8.0]), np.array([0.0, 4.0])))
    np.testing.assert_allclose(out["per_video"], (apd / 8) / (mae / 4))


def test_standardized_ratio_rejects_bad_input():
    with pytest.raises(ValueError, match="scaling must be one of"):
        metrics.standardized_ratio([1.0, 2.0], [1.0, 2.0], scaling="zscore")
    with pytest.raises(ValueError, match="non-empty"):
        metrics.standardized_ratio([1.0, 2.0], [1.0])
    with pytest.raises(ValueError, match="distinct values"):
        metrics.standardized_ratio([1.0, 2.0], [3.0, 3.0], scaling="components")


def test_keypoint_ratio_still_uses_the_plain_ratio():
    out = metrics.apd_mae_ratio_by_video([1.0, 3.0, 2.0, 5.0], [1.0, 1.0, 0.5, 0.5], ["a", "a", "b", "b"])
    assert out["ratio_per_video"] == {"a": pytest.approx(2.0), "b": pytest.approx(7.0)}
    assert (out["ratio_mean"], out["ratio_median"]) == (pytest.approx(4.5), pytest.approx(4.5))


def test_energy_score_on_keypoint_samples():
    rng = np.random.default_rng(8)
    samples, target = rng.normal(size=(4, 3, 2, 6)), rng.normal(size=(3, 2, 6))  # [S, W, M, D], [W, M, D]
    x, y = samples.reshape(4, 3, -1), target.reshape(3, -1)
    expected = [np.mean([np.linalg.norm(x[i, w] - y[w]) for i in range(4)])
                - np.mean([np.linalg.norm(x[i, w] - x[j, w]) for i, j in itertools.permutations(range(4), 2)]) / 2
                for w in range(3)]
    np.testing.assert_allclose(np.asarray(metrics.energy_score(samples, target)), expected, rtol=1e-5)
    assert "energy_score" in metrics.__all__


# -- feature extractors -------------------------------------------------------------------------


def _square_videos(corners, frames=3, size=16, side=4) -> np.ndarray:
    """``[V, T, H, W, 3]``: a white square on black moving one pixel right per frame from each corner."""
    videos = np.zeros((len(corners), frames, size, size, 3), np.float32)
    for v, (r, c) in enumerate(corners):
        for t in range(frames):
            videos[v, t, r : r + side, c + t : c + t + side] = 1.0
    return videos


class BrightCentroid:
    """A fake keypoint detector: one keypoint at the brightness centroid in [-1, 1], identity Jacobian.
    Records the batch sizes it was called with."""

    def __init__(self):
        self.batch_sizes = []
        self._detect = jax.jit(self._centroid)

    @staticmethod
    def _centroid(frames):
        weight = jnp.mean(frames, axis=-1)  # [B, H, W]
        h, w = weight.shape[1:]
        ys, xs = jnp.linspace(-1, 1, h), jnp.linspace(-1, 1, w)
        total = jnp.sum(weight, axis=(1, 2)) + 1e-9
        x = jnp.sum(weight * xs[None, None, :], axis=(1, 2)) / total
        y = jnp.sum(weight * ys[None, :, None], axis=(1, 2)) / total
        value = jnp.stack([x, y], axis=-1)[:, None, :]  # [B, 1, 2]
        return Keypoints(value=value, jacobian=jnp.broadcast_to(jnp.eye(2), (frames.shape[0], 1, 2, 2)))

    def __call__(self, frames):
        self.batch_sizes.append(frames.shape[0])
        return self._detect(frames)


def test_keypoint_trajectory_features_follow_the_square():
    detector = BrightCentroid()
    extractor = features.get_extractor("keypoints", detect=detector, batch_size=4)
    assert isinstance(extractor, features.VideoFeatureExtractor) and extractor.name == "keypoints"
    videos = _square_videos([(2, 2), (2, 2), (8, 1)], frames=3)  # two identical videos, one elsewhere
    feats = extractor(videos)
    # T=3, K=1: (T-1) * 6 increments + (T-1) location speeds + (T-1) Jacobian speeds.
    assert feats.shape == (3, 2 * 6 + 2 + 2) and feats.dtype == np.float32
    assert set(detector.batch_sizes) == {4} and len(detector.batch_sizes) == 3  # 9 frames, padded to 12
    np.testing.assert_array_equal(feats[0], feats[1])
    # The same motion elsewhere has the same increments (translation-invariant features) ...
    np.testing.assert_allclose(feats[2], feats[0], atol=1e-6)
    step = 2.0 / 15.0  # one pixel in [-1, 1] coordinates of a 16-pixel-wide frame
    np.testing.assert_allclose(feats[0, 0:2], [step, 0.0], atol=1e-6)
    np.testing.assert_allclose(feats[0, 12:14], [step, step], atol=1e-6)  # location speeds
    # ... and a different motion gives different features.
    still = np.repeat(videos[:1, :1], 3, axis=1)
    assert np.abs(extractor(still) - feats[:1]).max() > 0.1
    series = extractor.keypoint_series(videos)
    assert series.shape == (3, 3, 6)
    np.testing.assert_allclose(series[0, 1:, 0] - series[0, :-1, 0], step, atol=1e-6)


def test_feature_extractors_reject_bad_input():
    extractor = features.KeypointTrajectoryFeatures(BrightCentroid(), batch_size=2)
    with pytest.raises(ValueError, match=r"\[V, T, H, W, 3\]"):
        extractor(np.zeros((3, 16, 16, 3), np.float32))
    with pytest.raises(ValueError, match="in \\[0, 1\\]"):
        extractor(np.full((1, 2, 16, 16, 3), 255.0, np.float32))
    with pytest.raises(ValueError, match="2 frames"):
        extractor(np.zeros((1, 1, 16, 16, 3), np.float32))
    bad = features.KeypointTrajectoryFeatures(lambda f: SimpleNamespace(value=np.zeros((1, 2)), jacobian=None))
    with pytest.raises(ValueError, match="value \\[B, K, 2\\]"):
        bad(np.zeros((1, 2, 8, 8, 3), np.float32))
    with pytest.raises(ValueError, match="unknown feature extractor 'i3d'; known: keypoints, vjepa"):
        features.get_extractor("i3d")


def test_vjepa_extractor_needs_its_weights():
    with pytest.raises((FileNotFoundError, ValueError)) as err:
        features.get_extractor("vjepa", weights="/nonexistent")
    assert "weights" in str(err.value).lower() and "\n" not in str(err.value)
