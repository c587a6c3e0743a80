"""Errors of keypoint forecasts against the truth: MAE of a point forecast, of the mean, median
and best of S samples, and the energy score.

Conventions: ``samples [S, W, M, D]`` (S samples of W windows, M future frames, D numbers per
frame), ``target [W, M, D]``. Errors are in whatever units the inputs are in. Pure functions over
NumPy or JAX arrays, jittable.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


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


def sum_pairwise_l2(x: jnp.ndarray) -> jnp.ndarray:
    """``x [S, W, F]`` -> ``[W]``: sum of ``||x_i - x_j||`` over all ordered pairs (i, j).

    Row by row with ``lax.scan`` so memory stays at ``[S, W, F]`` instead of ``[S, S, W, F]``. The
    spread term of :func:`energy_score` and the numerator of :func:`kpflow.metrics.diversity.apd`.
    """

    def row(_, xi):
        return None, jnp.sum(jnp.sqrt(jnp.sum((x - xi[None]) ** 2, axis=-1)), axis=0)

    _, rows = jax.lax.scan(row, None, x)
    return jnp.sum(rows, axis=0)


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
    term2 = sum_pairwise_l2(x) / (2.0 * s * (s - 1))
    return term1 - term2
