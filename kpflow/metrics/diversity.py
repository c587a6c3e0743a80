"""Diversity of sampled forecasts, the papers' protocol: APD, the k lowest-MAE of S samples,
and per-video APD / MAE ratios (arXiv 2504.05537).

``samples [S, W, M, D]``, ``target [W, M, D]`` as in :mod:`kpflow.metrics.errors`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from kpflow.metrics.errors import mae, sum_pairwise_l2

# The papers' diversity tables keep the 20 lowest-MAE of 100 samples per window.
LOWEST_MAE_K = 20


def apd(samples: jnp.ndarray) -> jnp.ndarray:
    """Average pairwise displacement among the S samples of each window: ``[S, W, M, D] -> [W]``.

    ``APD = 1/(S (S-1)) sum_{i != j} ||X_i - X_j||`` with X the flattened ``M x D`` future
    (Euclidean distance, as in DLow / the papers' diversity tables). Zero for S = 1 or identical samples.
    """
    s = samples.shape[0]
    if s < 2:
        return jnp.zeros(samples.shape[1], samples.dtype)
    x = samples.reshape(s, samples.shape[1], -1)
    return sum_pairwise_l2(x) / (s * (s - 1))


def select_lowest_mae(samples: jnp.ndarray, target: jnp.ndarray, k: int = LOWEST_MAE_K) -> jnp.ndarray:
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


def lowest_mae_diversity(samples: jnp.ndarray, target: jnp.ndarray, k: int = LOWEST_MAE_K) -> tuple[jnp.ndarray, jnp.ndarray]:
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


def standardized_apd_mae_ratio(samples, target, video_ids, k: int = LOWEST_MAE_K) -> dict:
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
