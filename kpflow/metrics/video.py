"""Scores of rendered video frames: pixel MAE, SSIM, and the papers' diversity protocol on the S
rendered futures of one window.

``frames [..., H, W, 3] float32 in [0, 1]``; NumPy inputs are computed in float64, JAX inputs in
float32 (jittable).
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from kpflow.metrics.diversity import LOWEST_MAE_K, apd


def _xp(*arrays):
    """NumPy for NumPy inputs (computed in float64); jax.numpy otherwise (jittable). As in kernels.py."""
    return np if all(isinstance(a, (np.ndarray, list, tuple, float, int)) for a in arrays) else jnp


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


def video_sample_scores(samples, target, k: int = LOWEST_MAE_K) -> dict:
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
