"""Scoring rules as training losses (differentiable versions of the metrics in kpflow.metrics)."""

from __future__ import annotations

import jax.numpy as jnp


def _safe_norm(v: jnp.ndarray, axis: int = -1) -> jnp.ndarray:
    """Euclidean norm whose gradient is 0 (not NaN) at 0, as on the diagonal of pairwise distances."""
    sq = jnp.sum(v**2, axis=axis)
    safe = jnp.where(sq > 1e-12, sq, 1.0)
    return jnp.where(sq > 1e-12, jnp.sqrt(safe), 0.0)


def energy_score_loss(samples: jnp.ndarray, target: jnp.ndarray) -> jnp.ndarray:
    """Fair energy score per window, ``samples [K, B, ...]``, ``target [B, ...]`` -> ``[B]``.

    ``mean_k ||X_k - y|| - 1/(2K(K-1)) sum_{k != l} ||X_k - X_l||`` over the flattened trailing axes
    (Gneiting & Raftery 2007, eq. 22). Minimised in expectation by the true distribution, so
    training on it calibrates both the centre and the spread of the samples. K is small in training,
    so the K x K pairs are formed directly.
    """
    k = samples.shape[0]
    x = samples.reshape(k, samples.shape[1], -1)
    y = target.reshape(target.shape[0], -1)
    term1 = jnp.mean(_safe_norm(x - y[None]), axis=0)
    if k == 1:
        return term1
    pairs = _safe_norm(x[:, None] - x[None])  # [K, K, B], zero diagonal
    return term1 - jnp.sum(pairs, axis=(0, 1)) / (2.0 * k * (k - 1))


def closed_loop_energy(rollouts: jnp.ndarray, x: jnp.ndarray, num_observed: int, step_scale: jnp.ndarray) -> jnp.ndarray:
    """Mean energy score of closed-loop ``rollouts [K, B, M, D]`` against ``x[:, N:]`` of ``x [B, N+M, D]``.

    Measured from the last observed frame in ``step_scale`` units (every dimension counts by its
    typical motion, like the papers' per-dimension min-max units) and divided by sqrt(M) so the
    weight means the same at every horizon.
    """
    last = x[:, num_observed - 1 : num_observed]
    score = energy_score_loss((rollouts - last[None]) / step_scale, (x[:, num_observed:] - last) / step_scale)
    return jnp.mean(score) / jnp.sqrt(x.shape[1] - num_observed)
