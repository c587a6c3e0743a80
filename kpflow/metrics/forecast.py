"""All scores of sampled keypoint forecasts: per window (:func:`window_scores`) and one row of
the evaluation table (:func:`forecast_scores`).

``samples [S, W, M, D]``, ``target [W, M, D]``, ``last_observed [W, D]``. Errors in whatever units
the inputs are in; the evaluation expresses them in the papers' per-video min-max units and in raw
keypoint units.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from kpflow.metrics.diversity import apd
from kpflow.metrics.errors import best_of_s_mae, mae, sample_mean_mae
from kpflow.metrics.kernels import motion_mmd

# Windows scored per jitted call: memory stays at S x SCORE_CHUNK x M x D.
SCORE_CHUNK = 128


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


SCORE_KEYS = ("mae_mean", "mae_median", "mae_best", "apd", "energy_score", "motion_mmd")


def forecast_scores(samples, target, last_observed, chunk: int = SCORE_CHUNK, **motion_kwargs) -> dict[str, float]:
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
