"""GRU-NF: a recurrent network whose state conditions a RealNVP flow (Rasul et al. 2021,
"Multivariate probabilistic time series forecasting via conditioned normalizing flows").

A stacked GRU reads the frames; its top state ``h_{t-1}`` conditions a RealNVP density over the
next frame, ``p(x_t | h_{t-1})`` (Rasul et al., eq. 9), trained by maximum likelihood with true
inputs. Frames enter and leave through the shared input/output layer (:mod:`kpflow.forecast.io`,
the ``io`` field): with ``io.residual`` the flow models the step ``(x_t - x_{t-1}) / scale``, less
momentum's share with ``io.momentum`` (a translation, so the likelihood stays exact). Forecasts are
closed-loop: sample a head from the flow, feed the new frame back (kept within the training data's
region, ``frame_bound``), repeat.

Training runs the GRU over the whole window with ``nn.scan`` and evaluates the flow once on all
``B x (T-1)`` steps, so the batch-norm bijectors between coupling blocks see one large batch;
sampling scans GRU step + flow sample together. Both paths use the same submodules through Flax's
function form of ``nn.scan``, so they share parameters.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from kpflow.forecast.base import (
    ar1_noise,
    as_temperatures,
    bound_forecast_frame,
    check_frame_bound,
    check_noise,
    cycle_temperatures,
)
from kpflow.forecast.flows import ConditionalRealNVP
from kpflow.forecast.io import IOForecastModule, IOLayer
from kpflow.forecast.scoring import closed_loop_energy

# Running average of the heads' second moment (``noise_rank``): about the last 100 training steps.
HEAD_MOMENT_MOMENTUM = 0.99


class GRUNFForecaster(IOForecastModule):
    """GRU-NF (registry name ``grunf``). Paper size: 3 x 512 GRU, 12 blocks of 5 x 2048 units.

    Attributes:
      io: the shared input/output layer (:class:`~kpflow.forecast.io.IOLayer`; its momentum shifts
        the flow's step); None: :attr:`legacy_io`.
      hidden, num_gru_layers: the stacked GRU.
      num_blocks, flow_hidden, flow_layers, activation, norm: the conditional RealNVP
        (``norm="batch"``: batch-norm bijectors between coupling blocks, as in the paper).
      closed_loop_weight, closed_loop_samples: as in :class:`~kpflow.forecast.vrnn.VRNNForecaster`,
        an energy-score term on reparameterised closed-loop rollouts added to the likelihood.
      temperature: scale of the flow's base noise when forecasting (1 samples the model; below 1
        gives sharper samples), chosen on validation data. A tuple is a scale mixture, as the
        VRNN's ``latent_temperature``: draw i at ``temperature[i % len]`` (mirror images at their
        draw's), and the closed-loop training term's rollouts cycle through it the same way.
      noise_persistence: AR(1) coefficient rho of the flow's standardised base noise across the
        forecast's steps, ``e_t = rho e_{t-1} + sqrt(1 - rho^2) n_t`` (0: fresh noise every step,
        the papers' sampler). Each step's noise stays standard normal, so every one-step
        conditional is the model's; a sample's steps share a direction, so it is a path rather
        than a random walk (what best-of-S rewards). The closed-loop training term rolls out with
        the same noise.
      noise_rank: the rank r of each forecast step's innovation (0, or D and above: full rank, the
        papers' sampler).
        A sampled head is the flow's zero-noise head plus the principal-axes part of what the noise
        adds: ``f(0) + U_r U_r^T (f(tau e) - f(0))``, with ``U_r`` the r leading eigenvectors of
        the training heads' second moment (a running average in ``batch_stats``, as the
        batch-norm's statistics). Each sample is then a path in the few directions keypoints move
        together (head motion), without the per-coordinate jitter that the flow also models, as
        the VRNN's deterministic decoder on a 16-dimensional latent: best-of-S rewards that. The
        likelihood is unchanged; sampling, the closed-loop training term and the teacher-forced
        protocol use the same sampler.
      frame_bound: closed-loop frames stay within this many training standard deviations of the
        training mean, per dimension (or as far as the last observed frame, if farther;
        :func:`~kpflow.forecast.base.bound_forecast_frame`); None: unbounded. Sampling only: the
        likelihood, the closed-loop training term and the teacher-forced protocol (whose
        predictions are never fed back) are unchanged.
    """

    hidden: int = 64
    num_gru_layers: int = 1
    num_blocks: int = 4
    flow_hidden: int = 64
    flow_layers: int = 2
    activation: str = "tanh"
    norm: str = "batch"
    closed_loop_weight: float = 0.0
    closed_loop_samples: int = 8
    temperature: float | tuple[float, ...] = 1.0
    noise_persistence: float = 0.0
    noise_rank: int = 0
    frame_bound: float | None = 4.0

    supports_teacher_forcing = True
    # The GRU's pass over the context is deterministic: encoding it once per window is exact.
    two_phase_sampling = True
    # Without ``io``: the layer of GRU-NF configs written before the shared one (sign invariance was
    # the field ``sign_invariant``, off by default).
    legacy_io = IOLayer(sign_invariant=False)

    def __post_init__(self):
        check_frame_bound("grunf", self.frame_bound)  # at construction: a bad config fails in one line
        temps = as_temperatures(self.temperature)
        object.__setattr__(self, "temperature", temps)
        for tau in temps if isinstance(temps, tuple) and temps else (temps,):  # () is refused as itself
            check_noise("grunf", tau, self.noise_persistence)
        rank = self.noise_rank
        if isinstance(rank, bool) or not isinstance(rank, int) or rank < 0:
            raise ValueError(f"grunf: noise_rank must be an integer >= 0 (0: full rank), got {rank!r}")
        super().__post_init__()

    def setup(self):
        self.embed = nn.Dense(self.hidden, name="embed")
        self.grus = [nn.GRUCell(self.hidden, name=f"gru_{i}") for i in range(self.num_gru_layers)]
        self.flow = ConditionalRealNVP(
            dim=self.dim, num_blocks=self.num_blocks, hidden=self.flow_hidden, num_layers=self.flow_layers,
            activation=self.activation, norm=self.norm, name="flow",
        )
        self.setup_momentum()
        if self._low_rank:
            # Second moment of the training heads, a running average (HEAD_MOMENT_MOMENTUM).
            self.head_moment = self.variable("batch_stats", "head_moment", lambda: jnp.eye(self.dim, dtype=jnp.float32))

    @property
    def _low_rank(self) -> bool:
        return 0 < self.noise_rank < self.dim

    def _track_head_moment(self, heads, train: bool) -> None:
        """Fold ``heads [N, D]`` into the running second moment (set from them at initialisation)."""
        if not self._low_rank or not (train or self.is_initializing()):
            return
        moment = jax.lax.stop_gradient(heads.T @ heads / heads.shape[0])
        if self.is_initializing():
            self.head_moment.value = moment
        else:
            m = HEAD_MOMENT_MOMENTUM
            self.head_moment.value = m * self.head_moment.value + (1 - m) * moment

    def _noise_basis(self):
        """``[D, r]``: the leading eigenvectors of the heads' second moment; None at full rank."""
        if not self._low_rank:
            return None
        _, vectors = jnp.linalg.eigh(self.head_moment.value)  # ascending eigenvalues
        return vectors[:, -self.noise_rank:]

    def _sample_head(self, noise, top, basis):
        """The flow's head for base ``noise [B, D]`` given ``top [B, H]``, its innovation kept to the
        span of ``basis [D, r]`` (None: all of it)."""
        if basis is None:
            return self.flow.forward(noise, top)
        # One pass over both noises: two half-size passes of the small nets take longer.
        both = self.flow.forward(jnp.concatenate([noise, jnp.zeros_like(noise)]), jnp.concatenate([top, top]))
        head, center = jnp.split(both, 2)
        return center + ((head - center) @ basis) @ basis.T

    # -- pieces ---------------------------------------------------------------------------------
    def _gru_step(self, carry, frame, prev, anchor, step_scale):
        """Feed ``frame [B, D]`` (the layer's inputs: its position, relative to the window's first
        frame ``anchor`` with ``io.relative``, and its step from ``prev``) -> new carry (list of
        [B, H]), top state."""
        inp = nn.relu(self.embed(self.io.frame_inputs(frame, prev, anchor, step_scale)))
        new = []
        for cell, h in zip(self.grus, carry):
            h, inp = cell(h, inp)
            new.append(h)
        return new, inp

    def _init_carry(self, batch, dtype):
        return [jnp.zeros((batch, self.hidden), dtype) for _ in self.grus]

    def _encode(self, frames, step_scale):
        """GRU over true ``frames [B, T, D]`` -> top states after each frame ``[B, T, H]`` and final carry."""

        def body(mdl, carry, inputs):
            state, prev = carry
            frame = inputs
            state, top = mdl._gru_step(state, frame, prev, frames[:, 0], step_scale)
            return (state, frame), top

        scan = nn.scan(body, variable_broadcast=["params", "batch_stats"], split_rngs={"params": False},
                       in_axes=1, out_axes=1)
        (state, _), tops = scan(self, (self._init_carry(frames.shape[0], frames.dtype), frames[:, 0]), frames)
        return tops, state

    # -- interface ------------------------------------------------------------------------------
    def loss(self, x, step_scale, train: bool = True):
        """Negative log-likelihood per dimension of frames 1..T-1 given the GRU state of the frames before."""
        b, t, d = x.shape
        scale = self.io.window_scale(x[:, : self.num_observed], step_scale)
        tops, _ = self._encode(x, scale)
        cond = tops[:, :-1].reshape(b * (t - 1), -1)
        heads = self.io.frames_to_heads(x, 1, scale, self.momentum_coefficients())  # [B, T-1, D]
        heads = heads.reshape(b * (t - 1), d)
        self._track_head_moment(heads, train)
        nll = -jnp.mean(self.flow.log_prob(heads, cond, train=train)) / d
        metrics = {"nll": nll}
        loss = nll
        if self.closed_loop_weight > 0:
            n, k = self.num_observed, self.closed_loop_samples
            enc = self.encode(jnp.tile(x[:, :n], (k, 1, 1)), step_scale)
            taus = self.draw_temperatures(k)  # rollout i of every window at the mixture's entry i
            tau = None if taus is None else jnp.repeat(taus, b)[:, None]
            rollouts = self.rollout(enc, t - n, step_scale, bounded=False, temperature=tau).reshape(k, b, t - n, d)
            es = closed_loop_energy(rollouts, x, n, step_scale)
            metrics["closed_loop_es"] = es
            loss = loss + self.closed_loop_weight * es
        return loss, metrics

    def _rollout(self, state, top, context, horizon, step_scale, truth=None, bound=None, temperature=None):
        """From the GRU state after ``context [B, N, D]``, sample ``horizon`` frames; feed samples (or
        ``truth``) back. ``bound``: each sampled frame is clipped (``bound_forecast_frame``); None: not."""
        anchor, last_observed = context[:, 0], context[:, -1]
        tau = self.temperature if temperature is None else temperature
        if isinstance(tau, tuple):  # a configuration mistake, not a wrong argument type
            msg = (f"grunf: temperature {tau} is a mixture, drawn per sample; pass this draw's "
                   "temperature (Forecaster.sample and teacher_forced do)")
            raise ValueError(msg)  # noqa: TRY004
        rho = self.noise_persistence
        basis = self._noise_basis()

        def body(mdl, carry, inputs):
            state, top, prev, last_step, eps = carry
            noise = mdl.flow.base_noise(eps.shape[:-1])
            eps = ar1_noise(noise, eps, rho)
            head = mdl._sample_head(tau * eps, top, basis)
            frame = mdl.io.head_to_frame(prev, head, step_scale, mdl.momentum_shift(last_step))
            frame = bound_forecast_frame(frame, last_observed, bound)
            fed = frame if inputs is None else inputs
            state, top = mdl._gru_step(state, fed, prev, anchor, step_scale)
            return (state, top, fed, (fed - prev) / step_scale, eps), frame

        scan = nn.scan(body, variable_broadcast=["params", "batch_stats"],
                       split_rngs={"params": False, "sample": True}, in_axes=1, out_axes=1, length=horizon)
        # The first step's noise is standard normal: rho * e_0 + sqrt(1 - rho^2) n_1 with e_0 ~ N(0, I).
        eps0 = (self.flow.base_noise(context.shape[:1]) if rho > 0
                else jnp.zeros(context[:, -1].shape, jnp.float32))
        carry = (state, top, context[:, -1], self.io.last_step(context, step_scale), eps0)
        _, frames = scan(self, carry, truth)
        return frames

    def encode(self, context, step_scale):
        """GRU over ``context [B, N, D]`` -> the state a rollout starts from (deterministic)."""
        scale = self.io.window_scale(context, step_scale)
        tops, state = self._encode(context, scale)
        return {"state": state, "top": tops[:, -1], "context": context[:, jnp.array([0, -2, -1])], "scale": scale}

    def draw_temperatures(self, num_draws: int):
        """``[num_draws]`` temperatures of a mixture (``temperature`` a tuple), draw i at entry
        ``i % len``; None for one temperature."""
        return cycle_temperatures(self.temperature, num_draws)

    def rollout(self, enc, horizon, step_scale, bounded=True, temperature=None):
        """From ``encode``'s state, ``horizon`` closed-loop frames ``[B, M, D]``, kept within
        ``frame_bound`` unless ``bounded=False`` (training's closed-loop term); ``temperature``: this
        draw's (a number, or ``[B, 1]``), default the module's."""
        bound = self.frame_bound if bounded else None
        return self._rollout(enc["state"], enc["top"], enc["context"], horizon, enc["scale"], bound=bound,
                             temperature=temperature)

    def mirror_center(self, enc, horizon):
        """The damped momentum path from ``encode``'s state (``mirror_samples``' centre)."""
        prev, last = enc["context"][:, -2], enc["context"][:, -1]
        return self.damped_momentum_path(last, (last - prev) / enc["scale"], enc["scale"], horizon)

    def sample(self, context, horizon, step_scale):
        """Closed loop from ``context [B, N, D]`` -> ``[B, M, D]``."""
        return self.rollout(self.encode(context, step_scale), horizon, step_scale)

    def point_forecast(self, context, horizon, step_scale):
        """The closed loop of the flow's image of zero noise (plus momentum) ``[B, M, D]``."""
        enc = self.encode(context, step_scale)
        return self._rollout(enc["state"], enc["top"], enc["context"], horizon, enc["scale"], bound=self.frame_bound,
                             temperature=0.0)

    def teacher_forced(self, x, step_scale, temperature=None):
        """The authors' protocol: each predicted frame conditions on the TRUE frames before it."""
        n = self.num_observed
        scale = self.io.window_scale(x[:, :n], step_scale)
        tops, state = self._encode(x[:, :n], scale)
        return self._rollout(state, tops[:, -1], x[:, :n], x.shape[1] - n, scale, truth=x[:, n:],
                             temperature=temperature)
