"""Normalising-flow forecaster: one conditional RealNVP over the whole future window.

The flow models the M future heads jointly, ``p(y_N, .., y_{N+M-1} | context)``, flattened to one
``M*D`` vector, so correlations across keypoints *and* across time are in the density. The shared
layer (:mod:`kpflow.forecast.io`) defines the heads (with ``io.residual``, the steps
``(x_t - x_{t-1}) / scale``, less momentum's share with ``io.momentum``: a translation, so the
likelihood stays exact) and the condition's inputs, which an MLP encodes from the observed frames. A
sample is drawn in one shot and integrated from the last observed frame, within the training data's
region (``frame_bound``); the model forecasts exactly its trained horizon.
"""

from __future__ import annotations

import jax.numpy as jnp

from kpflow.forecast.base import check_frame_bound
from kpflow.forecast.flows import MLP, ConditionalRealNVP
from kpflow.forecast.io import IOForecastModule


class NFForecaster(IOForecastModule):
    """Conditional RealNVP over the flattened future heads ``[M*D]``, conditioned on the context.

    Attributes (besides dim, num_observed, horizon and ``io``, the shared input/output layer;
    without it, :data:`~kpflow.forecast.io.PLAIN`):
      num_blocks, hidden, num_layers, activation, norm: of the :class:`ConditionalRealNVP`.
      context_hidden: width of the two-layer context encoder (the flow's condition size).
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
        self.setup_momentum()

    def encode(self, context: jnp.ndarray, scale: jnp.ndarray) -> jnp.ndarray:
        """``context [B, N, D]``, its step scale ``[B, D]`` -> condition ``[B, context_hidden]``."""
        feats = self.io.series_inputs(context, scale)  # [B, N, 2D]
        return jnp.tanh(self.context_encoder(feats.reshape(feats.shape[0], -1)))

    def loss(self, x: jnp.ndarray, step_scale: jnp.ndarray, train: bool = True):
        """``x [B, N+M, D]`` -> (mean NLL per future dimension, {"nll"})."""
        n = self.num_observed
        scale = self.io.window_scale(x[:, :n], step_scale)
        cond = self.encode(x[:, :n], scale)
        target = self.io.frames_to_heads(x, n, scale, self.momentum_coefficients())
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
        scale = self.io.window_scale(context, step_scale)
        cond = self.encode(context, scale)
        heads = self.flow.sample(cond, temperature=temperature).reshape(context.shape[0], self.horizon, self.dim)
        return self.io.heads_to_frames(context, heads, scale, self.momentum_coefficients(), self.frame_bound)
