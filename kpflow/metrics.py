"""Forecast and video metrics. Pure functions over arrays (NumPy or JAX), shapes in the names.

Conventions: ``samples [S, W, M, D]`` (S samples of W windows, M future frames, D numbers per
frame), ``target [W, M, D]``. Errors are in whatever units the inputs are in; the evaluation
expresses them in the papers' per-video min-max units and in raw keypoint units.

- Point and sample errors: :func:`mae`, mean / median / best-of-S MAE.
- Probabilistic: :func:`energy_score` (fair estimator), :func:`window_scores` (all per-window scores).
- Diversity, the papers' protocol: :func:`apd`, :func:`select_lowest_mae` (20 of 100 by MAE),
  :func:`standardized_apd_mae_ratio`.
- Distribution distances (exact unbiased MMD^2): :func:`polynomial_mmd` (KID / JEDi kernel) and
  :func:`motion_mmd` (RBF kernel on trajectory increments and speeds: the motion-realism distance).
- :func:`forecast_scores`: one row of the evaluation table.

Rendered frames (``frames [..., H, W, 3] float32 in [0, 1]``):

- :func:`pixel_mae` and :func:`ssim` (Gaussian-window SSIM, parity with scikit-image) per frame.
- :func:`video_sample_scores`: the papers' diversity protocol on the S rendered futures of one window
  (k lowest-MAE samples: their MAE, APD and SSIM; best-of-S and mean-of-S MAE).
- :func:`standardized_ratio`: per-video APD / MAE ratios and their mean and median.
- :func:`jedi`: JEDi, the polynomial-kernel MMD^2 of the JEDi reference code, on video features
  (extractors in :mod:`kpflow.features`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "JEDI_KERNEL",
    "JEDI_SCALE",
    "RATIO_SCALINGS",
    "SCORE_KEYS",
    "apd",
    "apd_mae_ratio_by_video",
    "best_of_s_mae",
    "energy_score",
    "forecast_scores",
    "jedi",
    "lowest_mae_diversity",
    "mae",
    "median_heuristic_bandwidth",
    "motion_features",
    "motion_mmd",
    "motion_mmd_from_features",
    "motion_subset",
    "pixel_mae",
    "polynomial_mmd",
    "rbf_mmd",
    "sample_mean_mae",
    "sample_median_mae",
    "select_lowest_mae",
    "ssim",
    "standardized_apd_mae_ratio",
    "standardized_ratio",
    "video_sample_scores",
    "window_scores",
]


def mae(pred: jnp.ndarray, target: jnp.ndarray) -> jnp.ndarray:
    """Mean absolute error over the last two axes (frames, dimensions): ``[.., M, D] -> [..]``."""
    return jnp.mean(jnp.abs(pred - target), axis=(-2, -1))


def sample_mean_mae(samples: jnp.ndarray, target: jnp.ndarray) -> jnp.ndarray:
    """MAE of the point forecast that is the mean of the samples: ``[W]``."""
    return mae(jnp.mean(samples, axis=0), target)


def sample_median_mae(samples: jnp.ndarray, target: jnp.ndarray) -> jnp.ndarray:
    """MAE of the per-dimension median of the samples: ``[W]``."""
    return mae(jnp.median(samples, axis=0), target)


def best_of_s_mae(samples: jnp.ndarray, target: jnp.ndarray) -> jnp.ndarray:
    """Smallest per-sample MAE over the S samples (an oracle selection): ``[W]``."""
    return jnp.min(mae(samples, target[None]), axis=0)


def _pairwise_l2(a: jnp.ndarray, b: jnp.ndarray) -> jnp.ndarray:
    """``a [S, W, F]``, ``b [T, W, F]`` -> ``[S, T, W]`` Euclidean distances (exact, no Gram trick)."""
    return jnp.sqrt(jnp.sum((a[:, None] - b[None]) ** 2, axis=-1) + 0.0)


def energy_score(samples: jnp.ndarray, target: jnp.ndarray) -> jnp.ndarray:
    """Energy score (multivariate CRPS) per window over the flattened ``M x D`` future: ``[W]``.

    ``ES = mean_i ||X_i - y|| - 1/(2 S (S-1)) sum_{i != j} ||X_i - X_j||``, the unbiased ("fair")
    estimator (Gneiting & Raftery 2007, eq. 22). Lower is better; a point forecast (S=1) gets the
    plain Euclidean error.
    """
    s = samples.shape[0]
    x = samples.reshape(s, samples.shape[1], -1)
    y = target.reshape(target.shape[0], -1)
    term1 = jnp.mean(jnp.sqrt(jnp.sum((x - y[None]) ** 2, axis=-1)), axis=0)
    if s == 1:
        return term1
    # The S x S pairwise sum goes row by row, keeping memory at [S, W, F].
    term2 = _sum_pairwise_l2(x) / (2.0 * s * (s - 1))
    return term1 - term2


# -- diversity ----------------------------------------------------------------------------------


def _sum_pairwise_l2(x: jnp.ndarray) -> jnp.ndarray:
    """``x [S, W, F]`` -> ``[W]``: sum of ``||x_i - x_j||`` over all ordered pairs (i, j).

    Row by row with ``lax.scan`` so memory stays at ``[S, W, F]`` instead of ``[S, S, W, F]``.
    """

    def row(_, xi):
        return None, jnp.sum(jnp.sqrt(jnp.sum((x - xi[None]) ** 2, axis=-1)), axis=0)

    _, rows = jax.lax.scan(row, None, x)
    return jnp.sum(rows, axis=0)


def apd(samples: jnp.ndarray) -> jnp.ndarray:
    """Average pairwise displacement among the S samples of each window: ``[S, W, M, D] -> [W]``.

    ``APD = 1/(S (S-1)) sum_{i != j} ||X_i - X_j||`` with X the flattened ``M x D`` future
    (Euclidean distance, as in DLow / the papers' diversity tables). Zero for S = 1 or identical samples.
    """
    s = samples.shape[0]
    if s < 2:
        return jnp.zeros(samples.shape[1], samples.dtype)
    x = samples.reshape(s, samples.shape[1], -1)
    return _sum_pairwise_l2(x) / (s * (s - 1))


@jax.jit
def window_scores(samples: jnp.ndarray, target: jnp.ndarray, median: jnp.ndarray | None = None) -> dict:
    """All per-window scores of ``samples [S, W, M, D]`` against ``target [W, M, D]``, each ``[W]``.

    Keys: ``mae_mean``, ``mae_median``, ``mae_best``, ``apd``, ``energy_score``. The energy score's
    spread term is half the APD (same pairs, same normaliser), so the pairwise sum is done once.
    ``median [W, M, D]``: the per-dimension median of the samples, if the caller has it already
    (sorting S samples is the slowest part on CPU; the median of min-max scaled samples is the
    scaled median, so one sort serves both unit systems).
    """
    s = samples.shape[0]
    median = jnp.median(samples, axis=0) if median is None else median
    x = samples.reshape(s, samples.shape[1], -1)
    y = target.reshape(target.shape[0], -1)
    diversity = apd(samples)
    # Fair energy score (see `energy_score`): E||X - y|| - 1/2 E||X - X'||.
    term1 = jnp.mean(jnp.sqrt(jnp.sum((x - y[None]) ** 2, axis=-1)), axis=0)
    return {
        "mae_mean": sample_mean_mae(samples, target),
        "mae_median": mae(median, target),
        "mae_best": best_of_s_mae(samples, target),
        "apd": diversity,
        "energy_score": term1 - 0.5 * diversity,
    }


def select_lowest_mae(samples: jnp.ndarray, target: jnp.ndarray, k: int = 20) -> jnp.ndarray:
    """The papers' selection: per window, the ``k`` samples with lowest MAE, ``[S, W, M, D] -> [k, W, M, D]``.

    Selected samples are ordered by increasing MAE (ties: lower sample index first). Note that this
    uses the ground truth, so it is an oracle selection, not something a deployed system can do.
    """
    s = samples.shape[0]
    if not 1 <= k <= s:
        raise ValueError(f"select_lowest_mae: k must be in [1, S={s}], got {k}")
    errors = mae(samples, target[None])  # [S, W]
    _, idx = jax.lax.top_k(-errors.T, k)  # [W, k]
    return samples[idx.T, jnp.arange(samples.shape[1])[None, :]]


def lowest_mae_diversity(samples: jnp.ndarray, target: jnp.ndarray, k: int = 20) -> tuple[jnp.ndarray, jnp.ndarray]:
    """Per window, among the ``k`` lowest-MAE samples: (their mean MAE ``[W]``, their APD ``[W]``).

    The two numbers the papers' diversity tables report per window (k = 20 of S = 100).
    """
    chosen = select_lowest_mae(samples, target, k)
    return jnp.mean(mae(chosen, target[None]), axis=0), apd(chosen)


def apd_mae_ratio_by_video(apd_per_window, mae_per_window, video_ids) -> dict:
    """Aggregate per-window (APD, MAE) to the papers' per-video ratio; NumPy, outside jit.

    For each video v: ``ratio_v = mean_w APD_w / mean_w MAE_w`` over the windows w of v.
    Returns ``{"ratio_mean", "ratio_median"}`` over videos (videos whose MAE is 0 are skipped),
    plus ``"apd"`` and ``"mae"`` (window means) and ``"ratio_per_video" {id: ratio}``.
    """
    apd_w = np.asarray(apd_per_window, np.float64)
    mae_w = np.asarray(mae_per_window, np.float64)
    ids = np.asarray(video_ids)
    if not (apd_w.shape == mae_w.shape == ids.shape) or apd_w.ndim != 1 or len(ids) == 0:
        raise ValueError(
            "apd, mae and video_ids must be non-empty [W] arrays of one length; "
            f"got {apd_w.shape}, {mae_w.shape}, {ids.shape}"
        )
    videos = np.unique(ids)
    apd_v = np.array([apd_w[ids == v].mean() for v in videos])
    mae_v = np.array([mae_w[ids == v].mean() for v in videos])
    summary = standardized_ratio(apd_v, mae_v, scaling="none")
    ratios = summary["per_video"]
    return {
        "ratio_mean": summary["mean"],
        "ratio_median": summary["median"],
        "apd": float(apd_w.mean()),
        "mae": float(mae_w.mean()),
        "ratio_per_video": {v.item(): float(r) for v, r in zip(videos, ratios) if np.isfinite(r)},
    }


RATIO_SCALINGS = ("components", "ratio", "none")


def standardized_ratio(apd_per_video, mae_per_video, scaling: str = "none", reference=None) -> dict:
    """Per-video diversity/error ratio and its mean and median: ``apd_per_video [V]``, ``mae_per_video [V]``.

    What the paper says. arXiv 2504.05537 reports, for the k = 20 lowest-MAE of 100 samples, a
    "min-max standardised APD/MAE ratio" per video, summarised by its mean and median and shown as a
    density over videos. Only the title page and abstract of the paper could be read here (v1 and v2),
    so the exact order of standardising and dividing is not known; the three readings are offered,
    each named:

    - ``"components"`` (another reading of the words "ratio of min-max-standardised APD to
      min-max-standardised MAE"): ``APD~_v = (APD_v - min APD) / (max APD - min APD)``, the
      same for MAE, then ``ratio_v = APD~_v / MAE~_v``. The video at the minimum MAE has
      ``MAE~ = 0``; its ratio is undefined (NaN) and it is left out of the mean and median (see
      ``num_undefined``), and videos near that minimum get very large ratios (hence the median).
    - ``"ratio"``: the min-max-standardised ratio, ``r_v = APD_v / MAE_v`` mapped to
      ``(r_v - min r) / (max r - min r)``; values in [0, 1] when ``reference`` is the input itself.
    - ``"none"`` (default): ``ratio_v = APD_v / MAE_v`` as given: the keypoint protocol of
      :func:`standardized_apd_mae_ratio`, where the standardisation is the per-video min-max scaling
      of the *data* before APD and MAE are computed, as the authors' code does for keypoints
      (:func:`apd_mae_ratio_by_video` uses this). For rendered frames a per-video min-max of the
      pixel values is one uniform rescaling of the video, which cancels in APD / MAE, so the plain
      ratio is the standardised one.

    ``reference = (apd_ref [R], mae_ref [R])``: where the min and max come from, e.g. the per-video
    values of every model being compared, pooled, so that all models share one scale; default the
    inputs themselves. Videos with ``MAE = 0`` (or ``MAE~ = 0``) get NaN and are left out. NumPy, float64.

    Returns ``{"mean", "median", "per_video" [V] (NaN where undefined; for density plots),
    "num_videos", "num_undefined"}``. Higher ratio = more diversity per unit of error.
    """
    if scaling not in RATIO_SCALINGS:
        raise ValueError(f"standardized_ratio: scaling must be one of {RATIO_SCALINGS}, got {scaling!r}")
    apd_v = np.asarray(apd_per_video, np.float64)
    mae_v = np.asarray(mae_per_video, np.float64)
    if apd_v.ndim != 1 or apd_v.shape != mae_v.shape or len(apd_v) == 0:
        raise ValueError(f"standardized_ratio: expected two non-empty [V] arrays, got {apd_v.shape} and {mae_v.shape}")
    if reference is None:
        apd_ref, mae_ref = apd_v, mae_v
    else:
        apd_ref, mae_ref = (np.asarray(a, np.float64).ravel() for a in reference)

    def divide(num, den):
        out = np.full(num.shape, np.nan)
        ok = den > 0
        out[ok] = num[ok] / den[ok]
        return out

    def minmax(values, ref, what):
        if ref.size == 0:
            raise ValueError(f"standardized_ratio: no defined {what} values to min-max scale by")
        lo, hi = np.min(ref), np.max(ref)
        if not hi > lo:
            raise ValueError(f"standardized_ratio: min-max scaling of {what} needs distinct values, all are {lo}; "
                             "pass a wider reference")
        return (values - lo) / (hi - lo)

    if scaling == "components":
        ratios = divide(minmax(apd_v, apd_ref, "APD"), minmax(mae_v, mae_ref, "MAE"))
    elif scaling == "ratio":
        ref = divide(apd_ref, mae_ref)
        ratios = minmax(divide(apd_v, mae_v), ref[np.isfinite(ref)], "APD/MAE")
    else:
        ratios = divide(apd_v, mae_v)
    used = ratios[np.isfinite(ratios)]
    return {
        "mean": float(used.mean()) if len(used) else float("nan"),
        "median": float(np.median(used)) if len(used) else float("nan"),
        "per_video": ratios,
        "num_videos": len(ratios),
        "num_undefined": len(ratios) - len(used),
    }


def standardized_apd_mae_ratio(samples, target, video_ids, k: int = 20) -> dict:
    """The papers' diversity/accuracy trade-off (arXiv 2504.05537): per-video APD / MAE of the k best samples.

    Inputs must already be in the papers' per-video min-max units ("standardised" keypoints: each
    of the D dimensions of a video mapped by ``(x - min) / (max - min)`` over the observed frames
    of its evaluation windows, :class:`kpflow.keypoints.MinMaxScaler`); that is what makes APD and
    MAE comparable across videos and datasets. ``samples [S, W, M, D]``, ``target [W, M, D]``,
    ``video_ids [W]`` (any hashable per-window label of the window's clip).

    What is implemented, exactly:
      1. per window, keep the ``k`` samples with lowest MAE (:func:`select_lowest_mae`);
      2. per window, their mean MAE and their APD (:func:`apd`, mean Euclidean distance over the
         ``k (k-1)`` ordered pairs of flattened ``M x D`` futures);
      3. per video, ``ratio = mean APD / mean MAE`` over its windows;
      4. report the mean and the median of the per-video ratios.

    The paper's text defining the standardisation was not available here; the authors' published
    code calls the per-video min-max scaling "std" (and its inverse "unstd"), which is the reading
    taken here. Another reading, min-max scaling the per-video APD and MAE values themselves across
    videos, is not implemented (it divides by zero for the best video). Higher ratio = more diversity
    per unit of error.
    """
    mae_w, apd_w = lowest_mae_diversity(jnp.asarray(samples), jnp.asarray(target), k)
    return apd_mae_ratio_by_video(apd_w, mae_w, video_ids)


# -- MMD ----------------------------------------------------------------------------------------


def _xp(*arrays):
    """NumPy (float64, exact enough for kernel sums) for NumPy inputs; jax.numpy otherwise (jittable)."""
    return np if all(isinstance(a, (np.ndarray, list, tuple, float, int)) for a in arrays) else jnp


def _as_float(xp, a):
    return np.asarray(a, np.float64) if xp is np else jnp.asarray(a)


def _block_kernel_sum(x, y, kernel, xp, block: int = 2048):
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


def median_heuristic_bandwidth(x, max_points: int = 2048):
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
    per_kp = steps.reshape(lead + (m, d // 6, 6))
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
    std = xp.maximum(std, 1e-6 * xp.mean(std) + 1e-12)
    return rbf_mmd(real / std, fake / std, bandwidth)


def motion_subset(num_windows: int, num_samples: int, samples_per_window: int = 4, max_points: int = 4096):
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


def motion_mmd(real_futures, forecast_futures, last_observed, samples_per_window: int = 4, max_points: int = 4096,
               bandwidth=None):
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


# -- the evaluation's table row -----------------------------------------------------------------

SCORE_KEYS = ("mae_mean", "mae_median", "mae_best", "apd", "energy_score", "motion_mmd")


def forecast_scores(samples, target, last_observed, chunk: int = 128, **motion_kwargs) -> dict[str, float]:
    """One row of the evaluation table: ``samples [S, W, M, D]``, ``target [W, M, D]``, ``last_observed [W, D]``.

    Returns Python floats: ``mae_mean`` (MAE of the mean of the samples), ``mae_median`` (of the
    per-dimension median), ``mae_best`` (best of S), ``apd``, ``energy_score`` -- each averaged over
    windows -- and ``motion_mmd`` over the whole set (:func:`motion_mmd`). Windows are scored in
    chunks of ``chunk`` so memory stays at ``O(S x chunk x M x D)``.
    """
    samples = np.asarray(samples)
    target = np.asarray(target)
    if samples.ndim != 4 or samples.shape[1:] != target.shape:
        raise ValueError(
            f"forecast_scores: samples [S, W, M, D] must match target [W, M, D]; got {samples.shape}, {target.shape}"
        )
    w = target.shape[0]
    parts = []
    for i in range(0, w, chunk):
        s_i, t_i = samples[:, i : i + chunk], target[i : i + chunk]
        pad = chunk - t_i.shape[0] if w > chunk else 0
        if pad:  # a fixed chunk shape compiles once; padded windows are dropped below
            s_i = np.concatenate([s_i, np.repeat(s_i[:, -1:], pad, axis=1)], axis=1)
            t_i = np.concatenate([t_i, np.repeat(t_i[-1:], pad, axis=0)], axis=0)
        scores = window_scores(jnp.asarray(s_i), jnp.asarray(t_i))
        parts.append({k: np.asarray(v)[: chunk - pad] for k, v in scores.items()})
    out = {k: float(np.mean(np.concatenate([p[k] for p in parts]))) for k in parts[0]}
    out["motion_mmd"] = float(motion_mmd(target, samples, np.asarray(last_observed), **motion_kwargs))
    return {k: out[k] for k in SCORE_KEYS}


# -- rendered video frames ----------------------------------------------------------------------


def _as_image_float(xp, a):
    """NumPy: float64. JAX: at least float32 (uint8 or bfloat16 frames are promoted)."""
    if xp is np:
        return np.asarray(a, np.float64)
    a = jnp.asarray(a)
    return a.astype(jnp.promote_types(a.dtype, jnp.float32))


def _check_image_pair(a, b, name: str) -> tuple[int, ...]:
    """Both ``[..., H, W, C]`` with equal ``H, W, C`` and broadcastable leading axes; returns the leading shape."""
    if a.ndim < 3 or b.ndim < 3 or a.shape[-3:] != b.shape[-3:]:
        raise ValueError(f"{name}: expected images [..., H, W, C] with the same H, W, C; got {a.shape} and {b.shape}")
    try:
        return np.broadcast_shapes(a.shape[:-3], b.shape[:-3])
    except ValueError:
        raise ValueError(f"{name}: leading axes of {a.shape} and {b.shape} do not broadcast") from None


def pixel_mae(pred, target):
    """Mean absolute error per frame: ``pred``, ``target [..., H, W, 3] float32 in [0, 1]`` -> ``[...]``.

    The mean over H, W and the channels; leading axes broadcast (``samples [S, F, H, W, 3]`` against
    ``target [F, H, W, 3]`` gives ``[S, F]``). All frames have H x W x 3 values, so the mean of the
    result over frames is the MAE of the whole video. NumPy inputs in float64, JAX in float32 (jittable).
    """
    xp = _xp(pred, target)
    pred, target = _as_image_float(xp, pred), _as_image_float(xp, target)
    _check_image_pair(pred, target, "pixel_mae")
    return xp.mean(xp.abs(pred - target), axis=(-3, -2, -1))


def _gaussian_taps(sigma: float, truncate: float) -> np.ndarray:
    """Normalised 1-D Gaussian of radius ``int(truncate * sigma + 0.5)`` (scipy.ndimage's rule)."""
    radius = int(truncate * sigma + 0.5)
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    taps = np.exp(-0.5 * (x / sigma) ** 2)
    return taps / taps.sum()


def _filter_valid(x, taps: np.ndarray, axis: int):
    """Correlate ``x`` with ``taps`` along ``axis``, keeping only positions where the window fits."""
    size = x.shape[axis] - len(taps) + 1
    index = [slice(None)] * x.ndim
    out = 0.0
    for i, w in enumerate(taps):
        index[axis] = slice(i, i + size)
        out = out + float(w) * x[tuple(index)]
    return out


def ssim(a, b, data_range: float = 1.0, sigma: float = 1.5, truncate: float = 3.5, k1: float = 0.01,
         k2: float = 0.03):
    """Per-image SSIM (Wang et al. 2004) with a Gaussian window: ``a``, ``b [..., H, W, C]`` -> ``[...]``.

    ``frames [..., H, W, 3] float32 in [0, 1]`` (``data_range`` is the span of the values); leading
    axes broadcast. The window is the normalised Gaussian of ``sigma`` cut at
    ``int(truncate * sigma + 0.5)`` pixels (11 taps by default), local statistics are population
    (not sample) moments, the map is averaged over the positions where the window fits and over
    channels. This equals ``skimage.metrics.structural_similarity(a, b, channel_axis=-1,
    data_range=1.0, gaussian_weights=True, sigma=1.5, use_sample_covariance=False)``: scikit-image
    filters with reflected borders and then crops the border of half a window, which leaves exactly
    the positions where the window fits. NumPy inputs in float64; JAX in float32 (jittable).
    Raises ValueError for mismatched shapes or images smaller than the window.
    """
    xp = _xp(a, b)
    a, b = _as_image_float(xp, a), _as_image_float(xp, b)
    _check_image_pair(a, b, "ssim")
    taps = _gaussian_taps(sigma, truncate)
    h, w = a.shape[-3:-1]
    if min(h, w) < len(taps):
        raise ValueError(f"ssim: images of {h}x{w} pixels are smaller than the {len(taps)}x{len(taps)} window "
                         f"(sigma={sigma}, truncate={truncate})")
    blur = lambda x: _filter_valid(_filter_valid(x, taps, x.ndim - 3), taps, x.ndim - 2)
    # Moments about each image's mean: identical results (the window sums to 1), less float32
    # cancellation in E[x^2] - E[x]^2 on smooth images.
    centre_a = xp.mean(a, axis=(-3, -2), keepdims=True)
    centre_b = xp.mean(b, axis=(-3, -2), keepdims=True)
    a0, b0 = a - centre_a, b - centre_b
    mu_a0, mu_b0 = blur(a0), blur(b0)
    var_a = blur(a0 * a0) - mu_a0 * mu_a0
    var_b = blur(b0 * b0) - mu_b0 * mu_b0
    cov = blur(a0 * b0) - mu_a0 * mu_b0
    mu_a, mu_b = mu_a0 + centre_a, mu_b0 + centre_b
    c1, c2 = (k1 * data_range) ** 2, (k2 * data_range) ** 2
    num = (2.0 * mu_a * mu_b + c1) * (2.0 * cov + c2)
    den = (mu_a * mu_a + mu_b * mu_b + c1) * (var_a + var_b + c2)
    return xp.mean(num / den, axis=(-3, -2, -1))


def video_sample_scores(samples, target, k: int = 20) -> dict:
    """The papers' diversity protocol on rendered futures: ``samples [S, F, H, W, 3]``, ``target [F, H, W, 3]``.

    Frames float32 in [0, 1]. Each sample's MAE is its :func:`pixel_mae` averaged over the F frames;
    the ``k`` samples with lowest MAE are kept (ties: lower sample index first, as
    :func:`select_lowest_mae`) and scored. Returns:

    - of the k kept: ``mae`` (their mean MAE), ``apd`` (their :func:`apd`: mean Euclidean distance
      over the ``k (k-1)`` ordered pairs of flattened ``F x H x W x 3`` videos), ``ssim`` (their mean
      :func:`ssim` over samples and frames);
    - of all S: ``mae_best`` (the lowest MAE, an oracle) and ``mae_mean`` (the mean of the S MAEs:
      the expected error of one random sample. Unlike the keypoint ``mae_mean`` of
      :func:`window_scores`, not the MAE of the averaged sample: an average of videos is a blur);
    - ``topk_index [k]``: which samples were kept, best first.

    Uses the ground truth to select, so, like the papers' tables, it describes the best ``k`` of S
    rather than what a deployed system would show. Computed in JAX float32; floats out.
    """
    samples, target = jnp.asarray(samples, jnp.float32), jnp.asarray(target, jnp.float32)
    if samples.ndim != 5 or target.ndim != 4 or samples.shape[1:] != target.shape:
        raise ValueError(f"video_sample_scores: expected samples [S, F, H, W, 3] and target [F, H, W, 3]; "
                         f"got {samples.shape} and {target.shape}")
    s = samples.shape[0]
    if not 1 <= k <= s:
        raise ValueError(f"video_sample_scores: k must be in [1, S={s}], got {k}")
    per_sample = jnp.mean(pixel_mae(samples, target), axis=-1)  # [S]
    index = np.argsort(np.asarray(per_sample), kind="stable")[:k]
    chosen = samples[index]
    return {
        "mae": float(jnp.mean(per_sample[index])),
        "apd": float(apd(chosen.reshape(k, 1, -1, 1))[0]),
        "ssim": float(jnp.mean(ssim(chosen, target))),
        "mae_best": float(jnp.min(per_sample)),
        "mae_mean": float(jnp.mean(per_sample)),
        "topk_index": index,
    }
