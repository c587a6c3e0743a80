"""Distances between distributions (exact MMD^2): the polynomial kernel of KID and JEDi, the RBF
kernel with the median heuristic, and the motion-realism distance on keypoint trajectories.

Feature sets are ``x [n, F]``, ``y [m, F]``. NumPy inputs are computed in float64 (exact enough for
kernel sums); JAX inputs in their own dtype (jittable).
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from kpflow.keypoints import FEATURES_PER_KEYPOINT

# Rows of x per kernel block: memory stays at KERNEL_BLOCK_ROWS x m kernel values.
KERNEL_BLOCK_ROWS = 2048
# The median heuristic looks at this many rows at most: its cost is quadratic in them.
MEDIAN_HEURISTIC_POINTS = 2048
# A motion feature's std is floored at this fraction of the mean std, so a still one is not blown up.
MOTION_STD_FLOOR = 1e-6
# At most this many forecast feature vectors enter the motion MMD (kernel sums are quadratic) ...
MOTION_MAX_POINTS = 4096
# ... taken as the first few samples of each window.
MOTION_SAMPLES_PER_WINDOW = 4


def _xp(*arrays):
    """NumPy (float64, exact enough for kernel sums) for NumPy inputs; jax.numpy otherwise (jittable)."""
    return np if all(isinstance(a, (np.ndarray, list, tuple, float, int)) for a in arrays) else jnp


def _as_float(xp, a):
    return np.asarray(a, np.float64) if xp is np else jnp.asarray(a)


def _block_kernel_sum(x, y, kernel, xp, block: int = KERNEL_BLOCK_ROWS):
    """``sum_ij kernel(x_i, y_j)`` over ``x [n, F]``, ``y [m, F]`` in row blocks of ``x`` (memory ``block x m``)."""
    total = 0.0
    for i in range(0, x.shape[0], block):
        total = total + xp.sum(kernel(x[i : i + block], y))
    return total


def _mmd2_unbiased(x, y, kernel, kernel_diag, xp):
    """Exact unbiased MMD^2 (Gretton et al. 2012, eq. 3) from a kernel on rows of ``x [n, F]``, ``y [m, F]``.

    ``MMD^2_u = sum_{i!=j} k(x_i,x_j)/(n(n-1)) + sum_{i!=j} k(y_i,y_j)/(m(m-1)) - 2 sum_ij k(x_i,y_j)/(nm)``.
    Diagonals are removed by subtracting ``sum_i k(x_i, x_i)``, computed directly.
    """
    n, m = x.shape[0], y.shape[0]
    kxx = (_block_kernel_sum(x, x, kernel, xp) - xp.sum(kernel_diag(x))) / (n * (n - 1))
    kyy = (_block_kernel_sum(y, y, kernel, xp) - xp.sum(kernel_diag(y))) / (m * (m - 1))
    kxy = _block_kernel_sum(x, y, kernel, xp) / (n * m)
    return kxx + kyy - 2.0 * kxy


def _mmd2_biased(x, y, kernel, xp):
    """The biased (V-statistic) MMD^2: means over whole Gram matrices, diagonals included (>= 0)."""
    n, m = x.shape[0], y.shape[0]
    kxx = _block_kernel_sum(x, x, kernel, xp) / (n * n)
    kyy = _block_kernel_sum(y, y, kernel, xp) / (m * m)
    kxy = _block_kernel_sum(x, y, kernel, xp) / (n * m)
    return kxx + kyy - 2.0 * kxy


def _check_feature_sets(x, y, name: str):
    if x.ndim != 2 or y.ndim != 2 or x.shape[1] != y.shape[1]:
        raise ValueError(f"{name}: expected x [n, F] and y [m, F] with the same F, got {x.shape} and {y.shape}")
    if x.shape[0] < 2 or y.shape[0] < 2:
        raise ValueError(
            f"{name}: the unbiased estimator needs at least 2 rows in each set, got {x.shape[0]} and {y.shape[0]}"
        )


def polynomial_mmd(x, y, degree: int = 3, gamma: float | None = None, coef0: float = 1.0, unbiased: bool = True):
    """Exact unbiased MMD^2 between feature sets ``x [n, F]`` and ``y [m, F]`` with the polynomial kernel.

    ``k(a, b) = (gamma <a, b> + coef0) ** degree`` with ``gamma = 1/F`` by default. The defaults
    (degree 3, coef0 1) are KID's kernel (Binkowski et al. 2018); JEDi uses degree 2, coef0 0 (see
    :func:`jedi`). Every pair is used (no subset blocks, unlike KID's default averaging over subsets).
    Unbiased, so it can be slightly negative for two samples of one distribution; ``unbiased=False``
    gives the biased V-statistic (whole Gram matrices averaged, diagonals included). NumPy inputs are
    computed in float64; JAX inputs in their own dtype (jittable).
    """
    xp = _xp(x, y)
    x, y = _as_float(xp, x), _as_float(xp, y)
    _check_feature_sets(x, y, "polynomial_mmd")
    g = 1.0 / x.shape[1] if gamma is None else gamma
    kernel = lambda a, b: (g * (a @ b.T) + coef0) ** degree
    if not unbiased:
        return _mmd2_biased(x, y, kernel, xp)
    diag = lambda a: (g * xp.sum(a * a, axis=-1) + coef0) ** degree
    return _mmd2_unbiased(x, y, kernel, diag, xp)


# JEDi's kernel and reporting scale, as in the JEDi reference code (github.com/oooolga/JEDi,
# videojedi/JEDi.py: mmd_poly(..., degree=2, coef0=0) * 100, gamma left to scikit-learn's 1/F).
JEDI_KERNEL = {"degree": 2, "gamma": None, "coef0": 0.0}
JEDI_SCALE = 100.0


def jedi(real_features, generated_features, unbiased: bool = True):
    """JEDi between ``real_features [n, F]`` and ``generated_features [m, F]`` (Luo et al. 2024): a scalar.

    ``JEDi = 100 * MMD^2`` with the polynomial kernel ``k(a, b) = (<a, b> / F) ** 2`` (degree 2,
    gamma 1/F, coef0 0) -- the kernel and the x100 of the JEDi reference code, which computes the
    MMD from V-JEPA features of 5000 videos per set by default. That code uses the *biased*
    estimator (means over whole Gram matrices, diagonals included); here the default is the exact
    unbiased estimator (every pair, no subsets; it can be slightly negative for one distribution and
    has no small-sample bias), and ``unbiased=False`` reproduces the reference code's number. The
    features come from any extractor of :mod:`kpflow.features` (``get_extractor("vjepa", ...)`` for
    the paper's). NumPy inputs in float64, JAX inputs in their own dtype.
    """
    xp = _xp(real_features, generated_features)
    x, y = _as_float(xp, real_features), _as_float(xp, generated_features)
    _check_feature_sets(x, y, "jedi")
    return JEDI_SCALE * polynomial_mmd(x, y, **JEDI_KERNEL, unbiased=unbiased)


def _sq_dists(a, b, xp):
    """Squared Euclidean distances ``[n, m]`` by the Gram expansion, clipped at 0 (rounding)."""
    d2 = xp.sum(a * a, -1)[:, None] + xp.sum(b * b, -1)[None, :] - 2.0 * (a @ b.T)
    return xp.maximum(d2, 0.0)


def median_heuristic_bandwidth(x, max_points: int = MEDIAN_HEURISTIC_POINTS):
    """Median Euclidean distance between distinct rows of ``x [n, F]`` (the first ``max_points`` rows).

    Deterministic. Falls back to 1.0 when the median is 0 (e.g. a constant set).
    """
    xp = _xp(x)
    x = _as_float(xp, x)[:max_points]
    n = x.shape[0]
    iu = np.triu_indices(n, k=1)
    d = xp.sqrt(_sq_dists(x, x, xp)[iu])
    med = xp.median(d)
    return xp.where(med > 0, med, 1.0)


def rbf_mmd(x, y, bandwidth=None):
    """Exact unbiased MMD^2 between ``x [n, F]`` and ``y [m, F]`` with ``k = exp(-||a-b||^2 / (2 h^2))``.

    ``bandwidth`` h defaults to :func:`median_heuristic_bandwidth` of ``x`` (the reference set).
    NumPy inputs are computed in float64; JAX inputs in their own dtype.
    """
    xp = _xp(x, y)
    x, y = _as_float(xp, x), _as_float(xp, y)
    _check_feature_sets(x, y, "rbf_mmd")
    h = median_heuristic_bandwidth(x) if bandwidth is None else bandwidth
    # Centre on the reference mean: distances are unchanged, the Gram expansion loses less precision.
    centre = xp.mean(x, axis=0)
    x, y = x - centre, y - centre
    kernel = lambda a, b: xp.exp(-_sq_dists(a, b, xp) / (2.0 * h * h))
    diag = lambda a: xp.ones(a.shape[0], a.dtype)
    return _mmd2_unbiased(x, y, kernel, diag, xp)


def motion_features(future: jnp.ndarray, last_observed: jnp.ndarray) -> jnp.ndarray:
    """Trajectory features of futures ``[.., M, D]`` (``last_observed [.., D]``) -> ``[.., M*D + 2*M*K]``.

    - per-step increments ``f_t - f_{t-1}`` for t = 1..M, with ``f_0`` the last observed frame (so a
      forecast that jumps away from the context is seen), ``[M, D]``;
    - per-step speeds per keypoint: the norm of the location increment (x, y) and the norm of the
      Jacobian increment (4 numbers), ``[M, K]`` each (kept apart: they are in different units).
    Positions themselves are left out on purpose: this describes how things move, not where.
    """
    xp = np if isinstance(future, np.ndarray) and isinstance(last_observed, np.ndarray) else jnp
    prev = xp.concatenate([last_observed[..., None, :], future[..., :-1, :]], axis=-2)
    steps = future - prev  # [.., M, D]
    lead = steps.shape[:-2]
    m, d = steps.shape[-2:]
    per_kp = steps.reshape(lead + (m, d // FEATURES_PER_KEYPOINT, FEATURES_PER_KEYPOINT))
    loc_speed = xp.sqrt(xp.sum(per_kp[..., :2] ** 2, axis=-1))  # [.., M, K]
    jac_speed = xp.sqrt(xp.sum(per_kp[..., 2:] ** 2, axis=-1))
    flat = lambda a: a.reshape(lead + (-1,))
    return xp.concatenate([flat(steps), flat(loc_speed), flat(jac_speed)], axis=-1)


def motion_mmd_from_features(real_features, forecast_features, bandwidth=None):
    """:func:`rbf_mmd` (unbiased MMD^2) between motion features ``[n, F]`` and ``[m, F]``, standardised first.

    Each feature is divided by its standard deviation over the *real* set (floored at 1e-6 of the
    mean std), so every step and keypoint counts, whatever its units; then the bandwidth is the median
    heuristic on the standardised real set (unless given). Both choices depend only on the real set,
    so scores of different forecasters of the same data are comparable, and the result is deterministic.
    """
    xp = _xp(real_features, forecast_features)
    real = _as_float(xp, real_features)
    fake = _as_float(xp, forecast_features)
    std = xp.std(real, axis=0)
    std = xp.maximum(std, MOTION_STD_FLOOR * xp.mean(std) + 1e-12)
    return rbf_mmd(real / std, fake / std, bandwidth)


def motion_subset(num_windows: int, num_samples: int, samples_per_window: int = MOTION_SAMPLES_PER_WINDOW,
                  max_points: int = MOTION_MAX_POINTS):
    """Which windows and how many samples per window :func:`motion_mmd` uses: ``(window_idx, k)``.

    All windows and the first ``k = min(S, samples_per_window)`` samples of each, reduced so that at
    most ``max_points`` forecast features enter the MMD (kernel sums are quadratic); with more than
    ``max_points`` windows, evenly spaced windows are kept. Deterministic.
    """
    k = max(1, min(num_samples, samples_per_window, max_points // max(num_windows, 1)))
    keep = min(num_windows, max_points // k)
    if keep >= num_windows:
        return np.arange(num_windows), k
    idx = np.unique(np.linspace(0, num_windows - 1, keep).round().astype(int))
    return idx, k


def motion_mmd(real_futures, forecast_futures, last_observed, samples_per_window: int = MOTION_SAMPLES_PER_WINDOW,
               max_points: int = MOTION_MAX_POINTS, bandwidth=None):
    """Motion-realism distance: unbiased MMD^2 (RBF kernel) between real and forecast motion features.

    ``real_futures [W, M, D]``, ``forecast_futures [S, W, M, D]`` (or ``[W, M, D]`` for one sample),
    ``last_observed [W, D]``. The real set has one feature vector per window (:func:`motion_features`),
    the forecast set ``k`` per window (the first ``k`` samples, see :func:`motion_subset`); both are
    compared as sets, i.e. marginal motion statistics over windows. A frozen forecast (hold-last) has
    zero increments and speeds, far from real motion; a forecaster that moves like the data scores ~0
    (unbiased: may be slightly negative). Standardisation and bandwidth: :func:`motion_mmd_from_features`.
    Computed in NumPy float64 (it selects a subset, so it is not jitted); returns a scalar.
    """
    if np.ndim(forecast_futures) == 3:
        forecast_futures = forecast_futures[None]
    s, w = np.shape(forecast_futures)[:2]
    idx, k = motion_subset(w, s, samples_per_window, max_points)
    real = np.asarray(real_futures)[idx]
    last = np.asarray(last_observed)[idx]
    fake = np.asarray(forecast_futures)[:k, idx]
    real_f = motion_features(real, last)
    fake_f = motion_features(fake, np.broadcast_to(last, fake.shape[:2] + last.shape[-1:]))
    fake_f = fake_f.reshape(-1, real_f.shape[-1])
    return motion_mmd_from_features(real_f, fake_f, bandwidth)
