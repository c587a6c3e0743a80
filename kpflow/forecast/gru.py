"""Autoregressive GRU forecaster with a Gaussian output head (DeepAR-style, Salinas et al. 2020).

A stack of ``num_layers`` GRU cells reads each frame's inputs from the shared layer
(:mod:`kpflow.forecast.io`: the frame or its position in the window, and its step). From the top
state ``h_t`` (which has seen frames <= t) a linear head gives the mean and softplus std of the next
head ``y_{t+1}``, which the layer turns into frame t+1 (with ``io.residual``, the step from frame t
in units of the window's step scale). ``deterministic=True`` keeps only the mean: a plain GRU point
forecaster trained with MSE whose "samples" are all equal.

- ``loss``: one-step-ahead NLL (or MSE) of every frame after the first, teacher-forced on the window.
- ``sample``: warm the state up on the context, then a closed-loop ``nn.scan`` that feeds the model's
  own draws back in, each kept within the training data's region (``frame_bound``).
- ``teacher_forced``: the authors' protocol; the state has seen the *true* frames < t when it
  predicts t. A one-step-ahead prediction, not a forecast.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from kpflow.forecast.base import (
    ar1_noise,
    bound_forecast_frame,
    check_frame_bound,
    check_noise,
    gaussian_nll,
)
from kpflow.forecast.io import IOForecastModule

_MIN_STD = 1e-3
# softplus(_STD_OFFSET) = 1: the untrained head predicts unit-std steps, the scale of the data.
_STD_OFFSET = 0.5413249


class StackedGRUCell(nn.Module):
    """``num_layers`` GRU cells, each feeding the next. Carry: a tuple of ``num_layers`` ``[B, H]``."""

    hidden: int
    num_layers: int

    @nn.compact
    def __call__(self, carry: tuple[jnp.ndarray, ...], inputs: jnp.ndarray):
        """``inputs [B, F]`` -> (new carry, top state ``[B, H]``)."""
        new_carry = []
        h = inputs
        for i, c in enumerate(carry):
            c, h = nn.GRUCell(self.hidden, name=f"layer_{i}")(c, h)
            new_carry.append(c)
        return tuple(new_carry), h

    def initial_carry(self, batch_size: int) -> tuple[jnp.ndarray, ...]:
        return tuple(
            jnp.zeros((batch_size, self.hidden), jnp.float32) for _ in range(self.num_layers)
        )


class GRUForecaster(IOForecastModule):
    """Multi-layer GRU with a Gaussian (or point) head over the next step.

    Attributes (besides dim, num_observed, horizon and ``io``, the shared input/output layer;
    without it, :data:`~kpflow.forecast.io.PLAIN`):
      hidden: GRU width; num_layers: stacked GRU cells.
      deterministic: point forecaster trained with MSE (samples are the mean; ``mirror_samples``
        is then off, as there are no draws to mirror).
      frame_bound: closed-loop frames stay within this many training standard deviations of the
        training mean, per dimension (or as far as the last observed frame, if farther;
        :func:`~kpflow.forecast.base.bound_forecast_frame`); None: unbounded. Sampling only.
      temperature: scale of the head's noise when forecasting (1 samples the model).
      noise_persistence: AR(1) coefficient rho of the head's standardised noise across the
        forecast's steps (0: fresh noise every step, DeepAR's sampler); as in
        :class:`~kpflow.forecast.grunf.GRUNFForecaster`, each step's noise stays standard normal.
    """

    hidden: int = 256
    num_layers: int = 2
    deterministic: bool = False
    frame_bound: float | None = 4.0
    temperature: float = 1.0
    noise_persistence: float = 0.0

    supports_teacher_forcing = True

    def __post_init__(self):
        check_frame_bound("gru", self.frame_bound)  # at construction: a bad config fails in one line
        check_noise("gru", self.temperature, self.noise_persistence)
        if self.deterministic:  # a point forecast has no draws to mirror: its samples stay that forecast
            object.__setattr__(self, "mirror_samples", False)
        super().__post_init__()

    def setup(self):
        self.cell = StackedGRUCell(self.hidden, self.num_layers)
        out = self.dim if self.deterministic else 2 * self.dim
        # Zero kernel: the untrained model predicts a zero head (hold-last, or the damped momentum
        # path) whatever the state.
        self.head = nn.Dense(out, kernel_init=nn.initializers.zeros)
        self.setup_momentum()

    # -- pieces ---------------------------------------------------------------------------------
    def _head_params(self, h: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray | None]:
        """``h [.., H]`` -> mean ``[.., D]`` and std ``[.., D]`` (None when deterministic)."""
        out = self.head(h)
        if self.deterministic:
            return out, None
        mean, raw = jnp.split(out, 2, axis=-1)
        return mean, nn.softplus(raw + _STD_OFFSET) + _MIN_STD

    def _draw(self, h: jnp.ndarray, noise: bool = True, eps=None, temperature: float = 1.0):
        """One head draw ``[.., D]`` from the state ``h [.., H]`` (the mean when deterministic or
        without ``noise``) and its standardised noise; ``eps``: the last step's, which the noise
        continues with ``noise_persistence`` (None: fresh noise)."""
        mean, std = self._head_params(h)
        if std is None or not noise:
            return mean, eps
        eps = ar1_noise(jax.random.normal(self.make_rng("sample"), mean.shape, mean.dtype), eps,
                        self.noise_persistence)
        return mean + temperature * std * eps, eps

    def _encode(self, x: jnp.ndarray, scale: jnp.ndarray):
        """Run the GRU over ``x [B, T, D]`` (``scale [B, D]``): -> (final carry, top states ``[B, T, H]``;
        h_t saw frames <= t)."""
        scan = nn.scan(
            lambda mdl, carry, feat: mdl.cell(carry, feat),
            variable_broadcast="params",
            split_rngs={"params": False},
            in_axes=1,
            out_axes=1,
        )
        return scan(self, self.cell.initial_carry(x.shape[0]), self.io.series_inputs(x, scale))

    # -- interface ------------------------------------------------------------------------------
    def loss(self, x: jnp.ndarray, step_scale: jnp.ndarray, train: bool = True):
        """``x [B, T, D]`` -> one-step-ahead NLL (MSE if deterministic) per dimension of frames 1..T-1."""
        scale = self.io.window_scale(x[:, : self.num_observed], step_scale)
        _, h = self._encode(x[:, :-1], scale)  # h_t predicts frame t+1
        target = self.io.frames_to_heads(x, 1, scale, self.momentum_coefficients())
        mean, std = self._head_params(h)
        mse = jnp.mean(jnp.square(target - mean))
        if std is None:
            return mse, {"mse": mse}
        nll = jnp.mean(gaussian_nll(target, mean, std))
        return nll, {"nll": nll, "mse": mse}

    def sample(self, context: jnp.ndarray, horizon: int, step_scale: jnp.ndarray) -> jnp.ndarray:
        """``context [B, N, D]`` -> one closed-loop draw ``[B, M, D]`` (rng stream "sample")."""
        return self._closed_loop(context, horizon, step_scale, noise=True)

    def point_forecast(self, context: jnp.ndarray, horizon: int, step_scale: jnp.ndarray) -> jnp.ndarray:
        """The closed loop of the head's means ``[B, M, D]``."""
        return self._closed_loop(context, horizon, step_scale, noise=False)

    def _closed_loop(self, context, horizon, step_scale, noise: bool):
        scale = self.io.window_scale(context, step_scale)
        carry, h = self._encode(context, scale)
        anchor, last_observed = context[:, 0], context[:, -1]

        def step(mdl, state, _):
            carry, h, prev, last_step, eps = state
            head, eps = mdl._draw(h, noise, eps, mdl.temperature)
            frame = mdl.io.head_to_frame(prev, head, scale, mdl.momentum_shift(last_step))
            frame = bound_forecast_frame(frame, last_observed, mdl.frame_bound)
            # The new frame's recurrent input, exactly as series_inputs builds it for true frames.
            carry, h = mdl.cell(carry, mdl.io.frame_inputs(frame, prev, anchor, scale))
            return (carry, h, frame, (frame - prev) / scale, eps), frame

        rollout = nn.scan(
            step,
            variable_broadcast="params",
            split_rngs={"params": False, "sample": True},
            length=horizon,
            out_axes=1,
        )
        # With persistence, the first step continues a standard-normal draw, so its noise is standard normal too.
        persistent = noise and not self.deterministic and self.noise_persistence > 0
        eps0 = (jax.random.normal(self.make_rng("sample"), last_observed.shape, last_observed.dtype) if persistent
                else jnp.zeros_like(last_observed))
        _, frames = rollout(self, (carry, h[:, -1], last_observed, self.io.last_step(context, scale), eps0), None)
        return frames

    def teacher_forced(self, x: jnp.ndarray, step_scale: jnp.ndarray) -> jnp.ndarray:
        """``x [B, N+M, D]`` -> ``[B, M, D]``; frame t drawn from the state that saw TRUE frames < t."""
        n = self.num_observed
        scale = self.io.window_scale(x[:, :n], step_scale)
        _, h = self._encode(x[:, :-1], scale)
        heads, _ = self._draw(h[:, n - 1 :])  # [B, M, D], from h_{t-1} for t = N..N+M-1
        last_steps = self.io.series_steps(x, scale)[:, n - 1 : -1]  # the step into frame t-1
        return self.io.head_to_frame(x[:, n - 1 : -1], heads, scale[:, None], self.momentum_shift(last_steps))
