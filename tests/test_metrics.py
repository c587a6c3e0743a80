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


def _direct_mmd2(x: np.ndarray, y: np.ndarray, kernel) -> float:
    n, m = len(x), len(y)
    kxx = sum(kernel(x[i], x[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    kyy = sum(kernel(y[i], y[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    kxy = sum(kernel(x[i], y[j]) for i in range(n) for j in range(m)) / (n * m)
    return kxx + kyy - 2 * kxy


def test_polynomial_mmd_matches_direct_computation():
    rng = np.random.default_rng(4)
    x, y = rng.normal(size=(12, 5)), rng.normal(0.3, 1.2, size=(9, 5))
    poly = lambda a, b: (a @ b / 5 + 1.0) ** 3
    expected = _direct_mmd2(x, y, poly)
    assert metrics.polynomial_mmd(x, y) == pytest.approx(expected, rel=1e-10)
    assert float(metrics.polynomial_mmd(jnp.asarray(x), jnp.asarray(y))) == pytest.approx(expected, rel=1e-4)
    other = lambda a, b: (0.5 * (a @ b) + 2.0) ** 2
    expected = _direct_mmd2(x, y, other)
    assert metrics.polynomial_mmd(x, y, degree=2, gamma=0.5, coef0=2.0) == pytest.approx(expected, rel=1e-10)


def test_polynomial_mmd_separates_distributions():
    rng = np.random.default_rng(5)
    a, b = rng.normal(size=(400, 16)), rng.normal(size=(400, 16))
    shifted = rng.normal(0.5, 1.0, size=(400, 16))
    same, different = metrics.polynomial_mmd(a, b), metrics.polynomial_mmd(a, shifted)
    assert abs(same) < 0.05 and different > 0.5 and different > 20 * abs(same), (same, different)


def test_rbf_mmd_matches_direct_computation():
    rng = np.random.default_rng(6)
    x, y = rng.normal(size=(10, 4)), rng.normal(0.5, 1.0, size=(8, 4))
    h = 1.7
    rbf = lambda a, b: np.exp(-np.sum((a - b) ** 2) / (2 * h * h))
    assert metrics.rbf_mmd(x, y, bandwidth=h) == pytest.approx(_direct_mmd2(x, y, rbf), rel=1e-10)
    d = [np.linalg.norm(x[i] - x[j]) for i in range(10) for j in range(i + 1, 10)]
    assert metrics.median_heuristic_bandwidth(x) == pytest.approx(np.median(d), rel=1e-10)


def _walks(rng, last: np.ndarray, m: int, step: float) -> np.ndarray:
    """Random-walk futures ``[W, M, D]`` from ``last [W, D]``; the step size changes per window (regimes)."""
    w, d = last.shape
    vol = rng.choice([0.3, 1.0, 2.0], size=(w, 1, 1)) * step
    return last[:, None] + np.cumsum(rng.normal(size=(w, m, d)) * vol, axis=1)


def test_motion_mmd_ranks_frozen_forecasts_worst():
    rng = np.random.default_rng(7)
    w, m, d, s = 150, 4, 12, 4
    last = rng.normal(size=(w, d))
    real = _walks(rng, last, m, 0.05)
    realistic = np.stack([_walks(rng, last, m, 0.05) for _ in range(s)])  # the same process
    jumpy = np.stack([_walks(rng, last, m, 0.15) for _ in range(s)])  # moves 3x too fast
    frozen = np.broadcast_to(last[None, :, None], (s, w, m, d))  # hold-last
    scores = {name: float(metrics.motion_mmd(real, f, last))
              for name, f in [("realistic", realistic), ("frozen", frozen), ("jumpy", jumpy)]}
    assert abs(scores["realistic"]) < 0.02, scores
    assert scores["frozen"] > 0.05 and scores["frozen"] > 20 * abs(scores["realistic"]), scores
    assert scores["jumpy"] > 0.05 and scores["jumpy"] > 20 * abs(scores["realistic"]), scores


def test_motion_features_include_the_first_step():
    last = np.zeros((2, 6), np.float32)
    future = np.ones((2, 3, 6), np.float32)
    f = metrics.motion_features(future, last)
    assert f.shape == (2, 3 * 6 + 2 * 3 * 1)
    np.testing.assert_allclose(f[:, :6], 1.0)  # the jump from the last observed frame
    np.testing.assert_allclose(f[:, 6:18], 0.0)  # then no motion
    np.testing.assert_allclose(f[:, 18], np.sqrt(2.0))  # location speed of the first step
    np.testing.assert_allclose(f[:, 21], 2.0)  # Jacobian speed of the first step


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
