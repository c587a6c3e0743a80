"""Honest baselines behind the forecaster interface: hold-last, linear extrapolation, random walk.

They have no trained parameters. ``random_walk`` is a Gaussian random walk from the last observed
frame whose per-dimension step variance is fitted on a training split: it is exactly the
``step_scale`` of the :class:`~kpflow.keypoints.CausalScaler` fitted on that split (the RMS of
one-frame increments), so ``Forecaster.init(rng, batch, CausalScaler.fit(train_series))`` *is* the fit.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from kpflow.forecast.base import ForecastModule


def hold_last(context: jnp.ndarray, horizon: int) -> jnp.ndarray:
    """``context [..., N, D]`` -> ``[..., horizon, D]``: the last observed frame repeated."""
    return jnp.repeat(context[..., -1:, :], horizon, axis=-2)


def random_walk(last: jnp.ndarray, eps: jnp.ndarray, step_std: jnp.ndarray) -> jnp.ndarray:
    """Gaussian random walk from ``last [..., 1, D]`` with standard-normal steps ``eps [..., M, D]``
    scaled per dimension by ``step_std [D]`` -> ``[..., M, D]``. The caller draws ``eps``, so one
    formula serves :class:`RandomWalk` and a training loop's validation baseline alike."""
    return last + jnp.cumsum(eps * step_std, axis=-2)


class _Baseline(ForecastModule):
    def point(self, context: jnp.ndarray, horizon: int, step_scale: jnp.ndarray) -> jnp.ndarray:
        raise NotImplementedError

    def loss(self, x, step_scale, train: bool = True):
        # Mean squared error of the point forecast over the future, for logging only.
        pred = self.point(x[:, : self.num_observed], x.shape[1] - self.num_observed, step_scale)
        err = jnp.mean((pred - x[:, self.num_observed :]) ** 2)
        return err, {"mse": err}

    def sample(self, context, horizon, step_scale):
        return self.point(context, horizon, step_scale)


class HoldLast(_Baseline):
    """Repeat the last observed frame."""

    def point(self, context, horizon, step_scale):
        return hold_last(context, horizon)


class Linear(_Baseline):
    """Extrapolate the last observed one-frame velocity."""

    def point(self, context, horizon, step_scale):
        velocity = context[:, -1] - context[:, -2]
        steps = jnp.arange(1, horizon + 1, dtype=context.dtype)[None, :, None]
        return context[:, -1:] + steps * velocity[:, None]


class RandomWalk(_Baseline):
    """Gaussian random walk from the last frame, step std per dimension = ``step_scale`` (fitted)."""

    def point(self, context, horizon, step_scale):
        return hold_last(context, horizon)

    def sample(self, context, horizon, step_scale):
        b, _, d = context.shape
        eps = jax.random.normal(self.make_rng("sample"), (b, horizon, d), context.dtype)
        return random_walk(context[:, -1:], eps, step_scale)
