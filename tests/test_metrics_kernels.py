"""kpflow.kernels.kernels: MMD^2 estimators against direct loops, and the distances separate
distributions (polynomial / KID, JEDi, RBF with the median heuristic, motion MMD)."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

from kpflow.metrics import kernels


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
    assert kernels.polynomial_mmd(x, y) == pytest.approx(expected, rel=1e-10)
    assert float(kernels.polynomial_mmd(jnp.asarray(x), jnp.asarray(y))) == pytest.approx(expected, rel=1e-4)
    other = lambda a, b: (0.5 * (a @ b) + 2.0) ** 2
    expected = _direct_mmd2(x, y, other)
    assert kernels.polynomial_mmd(x, y, degree=2, gamma=0.5, coef0=2.0) == pytest.approx(expected, rel=1e-10)


def test_polynomial_mmd_separates_distributions():
    rng = np.random.default_rng(5)
    a, b = rng.normal(size=(400, 16)), rng.normal(size=(400, 16))
    shifted = rng.normal(0.5, 1.0, size=(400, 16))
    same, different = kernels.polynomial_mmd(a, b), kernels.polynomial_mmd(a, shifted)
    assert abs(same) < 0.05 and different > 0.5 and different > 20 * abs(same), (same, different)


def test_rbf_mmd_matches_direct_computation():
    rng = np.random.default_rng(6)
    x, y = rng.normal(size=(10, 4)), rng.normal(0.5, 1.0, size=(8, 4))
    h = 1.7
    rbf = lambda a, b: np.exp(-np.sum((a - b) ** 2) / (2 * h * h))
    assert kernels.rbf_mmd(x, y, bandwidth=h) == pytest.approx(_direct_mmd2(x, y, rbf), rel=1e-10)
    d = [np.linalg.norm(x[i] - x[j]) for i in range(10) for j in range(i + 1, 10)]
    assert kernels.median_heuristic_bandwidth(x) == pytest.approx(np.median(d), rel=1e-10)


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
    scores = {name: float(kernels.motion_mmd(real, f, last))
              for name, f in [("realistic", realistic), ("frozen", frozen), ("jumpy", jumpy)]}
    assert abs(scores["realistic"]) < 0.02, scores
    assert scores["frozen"] > 0.05 and scores["frozen"] > 20 * abs(scores["realistic"]), scores
    assert scores["jumpy"] > 0.05 and scores["jumpy"] > 20 * abs(scores["realistic"]), scores


def test_motion_features_include_the_first_step():
    last = np.zeros((2, 6), np.float32)
    future = np.ones((2, 3, 6), np.float32)
    f = kernels.motion_features(future, last)
    assert f.shape == (2, 3 * 6 + 2 * 3 * 1)
    np.testing.assert_allclose(f[:, :6], 1.0)  # the jump from the last observed frame
    np.testing.assert_allclose(f[:, 6:18], 0.0)  # then no motion
    np.testing.assert_allclose(f[:, 18], np.sqrt(2.0))  # location speed of the first step
    np.testing.assert_allclose(f[:, 21], 2.0)  # Jacobian speed of the first step


def _direct_poly_mmd2(x, y, unbiased: bool) -> float:
    """Double loops in float64 with JEDi's kernel (<a, b> / F) ** 2."""
    f = x.shape[1]
    k = lambda a, b: (float(np.dot(a, b)) / f) ** 2
    n, m = len(x), len(y)
    off = lambda i, j: unbiased and i == j
    kxx = sum(k(x[i], x[j]) for i in range(n) for j in range(n) if not off(i, j)) / (n * (n - 1) if unbiased else n * n)
    kyy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if not off(i, j)) / (m * (m - 1) if unbiased else m * m)
    kxy = sum(k(x[i], y[j]) for i in range(n) for j in range(m)) / (n * m)
    return kxx + kyy - 2 * kxy


def test_jedi_matches_direct_loops():
    rng = np.random.default_rng(6)
    x, y = rng.normal(size=(9, 4)), rng.normal(0.4, 1.3, size=(7, 4))
    for unbiased in (True, False):
        expected = 100.0 * _direct_poly_mmd2(x, y, unbiased)
        assert kernels.jedi(x, y, unbiased=unbiased) == pytest.approx(expected, rel=1e-10)
    as32 = lambda a: jnp.asarray(a, jnp.float32)
    assert float(kernels.jedi(as32(x), as32(y))) == pytest.approx(100.0 * _direct_poly_mmd2(x, y, True), rel=1e-4)
    # The JEDi reference code's own example (videojedi/mmd_polynomial.py): degree 2, coef0 0 -> 270.7.
    a = np.arange(1, 10, dtype=np.float64).reshape(3, 3)
    b = np.array([[7, 6, 5], [4, 3, 2], [1, 1, 8], [0, 2, 5]], np.float64)
    assert kernels.jedi(a, b, unbiased=False) / kernels.JEDI_SCALE == pytest.approx(270.7, abs=0.05)


def test_jedi_separates_distributions():
    rng = np.random.default_rng(7)
    a, b = rng.normal(1.0, 1.0, size=(300, 8)), rng.normal(1.0, 1.0, size=(300, 8))
    shifted = rng.normal(1.5, 1.0, size=(300, 8))
    same, different = kernels.jedi(a, b), kernels.jedi(a, shifted)
    assert kernels.jedi(a, a[::-1].copy()) == pytest.approx(kernels.jedi(a, a), abs=1e-12)
    assert abs(same) < 5.0 and different > 50.0 and different > 20 * abs(same), (same, different)
    with pytest.raises(ValueError, match="jedi: expected"):
        kernels.jedi(a, b[:, :4])
