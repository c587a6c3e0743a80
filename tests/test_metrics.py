"""Metrics against direct NumPy references, and the properties the evaluation relies on."""

from __future__ import annotations

import itertools

import jax.numpy as jnp
import numpy as np
import pytest

from kpflow import metrics


def _direct_energy_score(samples: np.ndarray, target: np.ndarray) -> np.ndarray:
    """O(S^2) loops, float64: mean_i ||x_i - y|| - 1/(2 S (S-1)) sum_{i != j} ||x_i - x_j||."""
    s, w = samples.shape[:2]
    x = samples.reshape(s, w, -1).astype(np.float64)
    y = target.reshape(w, -1).astype(np.float64)
    out = np.zeros(w)
    for k in range(w):
        term1 = np.mean([np.linalg.norm(x[i, k] - y[k]) for i in range(s)])
        pairs = sum(np.linalg.norm(x[i, k] - x[j, k]) for i, j in itertools.permutations(range(s), 2))
        out[k] = term1 - pairs / (2 * s * (s - 1))
    return out


def _direct_apd(samples: np.ndarray) -> np.ndarray:
    s, w = samples.shape[:2]
    x = samples.reshape(s, w, -1).astype(np.float64)
    return np.array([np.mean([np.linalg.norm(x[i, k] - x[j, k]) for i, j in itertools.permutations(range(s), 2)])
                     for k in range(w)])


@pytest.fixture(scope="module")
def small():
    rng = np.random.default_rng(0)
    samples = rng.normal(size=(7, 5, 3, 6)).astype(np.float32)
    target = rng.normal(size=(5, 3, 6)).astype(np.float32)
    return samples, target


def test_energy_score_matches_direct_computation(small):
    samples, target = small
    expected = _direct_energy_score(samples, target)
    np.testing.assert_allclose(np.asarray(metrics.energy_score(samples, target)), expected, rtol=1e-5, atol=1e-5)
    # window_scores shares the pairwise sum with APD; it must give the same number.
    scores = metrics.window_scores(jnp.asarray(samples), jnp.asarray(target))
    np.testing.assert_allclose(np.asarray(scores["energy_score"]), expected, rtol=1e-5, atol=1e-5)


def test_energy_score_of_one_sample_is_euclidean_error(small):
    samples, target = small
    one = samples[:1]
    err = np.linalg.norm((one[0] - target).reshape(len(target), -1), axis=-1)
    np.testing.assert_allclose(np.asarray(metrics.energy_score(one, target)), err, rtol=1e-6)
    np.testing.assert_allclose(np.asarray(metrics.window_scores(one, target)["energy_score"]), err, rtol=1e-6)


def test_energy_score_prefers_the_correct_spread():
    """Truth ~ N(0, I); forecasts N(0, sigma^2 I): the proper score is lowest at sigma = 1."""
    rng = np.random.default_rng(1)
    w, s, f = 200, 40, 8
    target = rng.normal(size=(w, 1, f)).astype(np.float32)
    noise = rng.normal(size=(s, w, 1, f)).astype(np.float32)
    es = {sigma: float(np.mean(metrics.energy_score(sigma * noise, target))) for sigma in (0.4, 1.0, 2.5)}
    assert es[1.0] < es[0.4] and es[1.0] < es[2.5], es


def test_best_of_s_and_point_forecast_errors(small):
    samples, target = small
    per_sample = np.asarray(metrics.mae(samples, target[None]))  # [S, W]
    best = np.asarray(metrics.best_of_s_mae(samples, target))
    np.testing.assert_allclose(best, per_sample.min(axis=0), rtol=1e-6)
    assert np.all(best <= per_sample.mean(axis=0))
    # Jensen: the mean forecast's error is at most the mean per-sample error.
    assert np.all(np.asarray(metrics.sample_mean_mae(samples, target)) <= per_sample.mean(axis=0) + 1e-6)


def test_apd(small):
    samples, _ = small
    np.testing.assert_allclose(np.asarray(metrics.apd(samples)), _direct_apd(samples), rtol=1e-5)
    same = np.repeat(samples[:1], 5, axis=0)
    np.testing.assert_array_equal(np.asarray(metrics.apd(same)), 0.0)
    np.testing.assert_array_equal(np.asarray(metrics.apd(samples[:1])), 0.0)


def test_select_lowest_mae_picks_the_right_samples():
    rng = np.random.default_rng(2)
    s, w, k = 9, 4, 3
    target = rng.normal(size=(w, 2, 6)).astype(np.float32)
    # Sample i of window j is off by a known constant: its MAE is exactly |offset[i, j]|.
    offsets = np.stack([rng.permutation(s) + 1.0 for _ in range(w)], axis=1).astype(np.float32)  # [S, W]
    samples = target[None] + offsets[:, :, None, None]
    chosen = np.asarray(metrics.select_lowest_mae(samples, target, k))
    assert chosen.shape == (k, w, 2, 6)
    for j in range(w):
        order = np.argsort(offsets[:, j])[:k]
        np.testing.assert_allclose(chosen[:, j], samples[order, j])
    with pytest.raises(ValueError, match="k must be"):
        metrics.select_lowest_mae(samples, target, s + 1)


def test_standardized_apd_mae_ratio_per_video():
    rng = np.random.default_rng(3)
    samples = rng.normal(size=(6, 5, 2, 6)).astype(np.float32)
    target = rng.normal(size=(5, 2, 6)).astype(np.float32)
    videos = np.array([0, 0, 1, 1, 1])
    out = metrics.standardized_apd_mae_ratio(samples, target, videos, k=4)
    mae_w, apd_w = (np.asarray(a) for a in metrics.lowest_mae_diversity(samples, target, 4))
    chosen = np.asarray(metrics.select_lowest_mae(samples, target, 4))
    np.testing.assert_allclose(apd_w, _direct_apd(chosen), rtol=1e-5)
    ratios = [apd_w[videos == v].mean() / mae_w[videos == v].mean() for v in (0, 1)]
    np.testing.assert_allclose([out["ratio_per_video"][v] for v in (0, 1)], ratios, rtol=1e-6)
    assert out["ratio_mean"] == pytest.approx(np.mean(ratios))
    assert out["ratio_median"] == pytest.approx(np.median(ratios))


def test_forecast_scores_row():
    rng = np.random.default_rng(8)
    s, w, m, d = 5, 9, 3, 12
    target = rng.normal(size=(w, m, d)).astype(np.float32)
    last = rng.normal(size=(w, d)).astype(np.float32)
    samples = target[None] + rng.normal(size=(s, w, m, d)).astype(np.float32)
    row = metrics.forecast_scores(samples, target, last, chunk=4)  # chunks of 4, last one padded
    assert list(row) == list(metrics.SCORE_KEYS) and all(isinstance(v, float) for v in row.values())
    scores = metrics.window_scores(samples, target)
    for k in ("mae_mean", "mae_median", "mae_best", "apd", "energy_score"):
        assert row[k] == pytest.approx(float(np.mean(scores[k])), rel=1e-5), k
    hold = np.broadcast_to(last[None, :, None], (1, w, m, d))
    frozen = metrics.forecast_scores(hold, target, last)
    assert frozen["mae_mean"] == frozen["mae_median"] == frozen["mae_best"] and frozen["apd"] == 0.0


def test_every_public_name_is_exported_from_its_module():
    """``from kpflow import metrics; metrics.X`` keeps working for every name the modules define."""
    from kpflow.metrics import diversity, errors, forecast, kernels, video

    modules = (errors, diversity, kernels, forecast, video)
    for name in metrics.__all__:
        homes = [m for m in modules if getattr(m, name, None) is getattr(metrics, name)]
        assert homes, f"metrics.{name} is defined in none of the metrics modules"
