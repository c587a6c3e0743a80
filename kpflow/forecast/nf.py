"""Normalising-flow forecaster: one conditional RealNVP over the whole future window.

The flow models the M future steps jointly, ``p(y_N, .., y_{N+M-1} | context)`` with
``y_t = (x_t - x_{t-1}) / step_scale`` (the residual parameterisation, see
:func:`~kpflow.forecast.base.frame_to_residual_target`), flattened to one ``M*D`` vector, so
correlations across keypoints *and* across time are in the density. The condition is an MLP
encoding of the observed frames' :func:`~kpflow.forecast.base.step_features`. A sample is drawn in
one shot and integrated from the last observed frame, within the training data's region
(``frame_bound``); the model forecasts exactly its trained horizon.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from kpflow.forecast.base import (
    ForecastModule,
    bound_forecast_frame,
    check_frame_bound,
    frame_to_residual_target,
    residual_head_to_frame,
    step_features,
)
from kpflow.forecast.flows import MLP, ConditionalRealNVP


def heads_to_frames(
    last: jnp.ndarray, heads: jnp.ndarray, step_scale: jnp.ndarray, residual: bool, bound: float | None = None
) -> jnp.ndarray:
    """Integrate heads into frames: ``last [B, D]``, ``heads [B, M, D]`` -> ``frames [B, M, D]``.

    Frame t is :func:`residual_head_to_frame` of frame t-1 (``last`` for the first) and head t,
    clipped to the training region by :func:`~kpflow.forecast.base.bound_forecast_frame` (``bound``
    training standard deviations, or ``last``'s distance if farther; None: unclipped).
    """

    def step(prev, head):
        frame = bound_forecast_frame(residual_head_to_frame(prev, head, step_scale, residual), last, bound)
        return frame, frame

    _, frames = jax.lax.scan(step, last, jnp.swapaxes(heads, 0, 1))
    return jnp.swapaxes(frames, 0, 1)


def future_targets(
    x: jnp.ndarray, num_observed: int, step_scale: jnp.ndarray, residual: bool
) -> jnp.ndarray:
    """Heads that reproduce the future of ``x [B, N+M, D]``: ``[B, M, D]`` (steps when ``residual``)."""
    return frame_to_residual_target(
        x[:, num_observed - 1 : -1], x[:, num_observed:], step_scale, residual
    )


class NFForecaster(ForecastModule):
    """Conditional RealNVP over the flattened future steps ``[M*D]``, conditioned on the context.

    Attributes (besides dim, num_observed, horizon):
      num_blocks, hidden, num_layers, activation, norm: of the :class:`ConditionalRealNVP`.
      context_hidden: width of the two-layer context encoder (the flow's condition size).
      residual: model steps from the last frame (True) or the frames themselves.
      frame_bound: forecast frames stay within this many training standard deviations of the
        training mean, per dimension (or as far as the last observed frame, if farther;
        :func:`~kpflow.forecast.base.bound_forecast_frame`); None: unbounded. Sampling only.
    """

    num_blocks: int = 8
    hidden: int = 512
    num_layers: int = 3
    activation: str = "tanh"
    norm: str = "batch"
    context_hidden: int = 256
    residual: bool = True
    frame_bound: float | None = 4.0

    any_horizon = False

    def __post_init__(self):
        check_frame_bound("nf", self.frame_bound)  # at construction: a bad config fails in one line
        super().__post_init__()

    def setup(self):
        self.context_encoder = MLP(self.context_hidden, 1, self.context_hidden, activation="tanh")
        self.flow = ConditionalRealNVP(
            dim=self.horizon * self.dim,
            num_blocks=self.num_blocks,
            hidden=self.hidden,
            num_layers=self.num_layers,
            activation=self.activation,
            norm=self.norm,
        )

    def encode(self, context: jnp.ndarray, step_scale: jnp.ndarray) -> jnp.ndarray:
        """``context [B, N, D]`` -> condition ``[B, context_hidden]``."""
        feats = step_features(context, step_scale)  # [B, N, 2D]
        return jnp.tanh(self.context_encoder(feats.reshape(feats.shape[0], -1)))

    def loss(self, x: jnp.ndarray, step_scale: jnp.ndarray, train: bool = True):
        """``x [B, N+M, D]`` -> (mean NLL per future dimension, {"nll"})."""
        n = self.num_observed
        cond = self.encode(x[:, :n], step_scale)
        target = future_targets(x, n, step_scale, self.residual)
        target = target.reshape(target.shape[0], -1)  # [B, M*D], time-major within a row
        nll = -jnp.mean(self.flow.log_prob(target, cond, train)) / target.shape[-1]
        return nll, {"nll": nll}

    def sample(self, context: jnp.ndarray, horizon: int, step_scale: jnp.ndarray) -> jnp.ndarray:
        """``context [B, N, D]`` -> ``[B, M, D]`` (M = the trained horizon; the wrapper checks it)."""
        return self._forecast(context, step_scale, temperature=1.0)

    def point_forecast(self, context: jnp.ndarray, horizon: int, step_scale: jnp.ndarray) -> jnp.ndarray:
        """The flow's image of zero noise ``[B, M, D]``."""
        return self._forecast(context, step_scale, temperature=0.0)

    def _forecast(self, context, step_scale, temperature: float):
        cond = self.encode(context, step_scale)
        heads = self.flow.sample(cond, temperature=temperature).reshape(context.shape[0], self.horizon, self.dim)
        return heads_to_frames(context[:, -1], heads, step_scale, self.residual, self.frame_bound)
