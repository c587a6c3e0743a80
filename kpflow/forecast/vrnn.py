"""Variational recurrent neural network (Chung et al. 2015) for keypoint forecasting.

At step t, with the GRU state ``h_{t-1}`` summarising frames < t:

- prior      ``p(z_t | h_{t-1})``                = N(mu_p, sigma_p)      (Chung et al., eq. 5)
- posterior  ``q(z_t | x_t, h_{t-1})``           = N(mu_q, sigma_q)      (eq. 9)
- decoder    ``p(x_t | z_t, h_{t-1})``           Gaussian over the step   (eq. 6)
- recurrence ``h_t = GRU(h_{t-1}, [phi_x(x_t), phi_z(z_t)])``            (eq. 7)

trained by the step-wise ELBO (eq. 10). Frames enter and leave through the shared input/output
layer (:mod:`kpflow.forecast.io`, the ``io`` field), whose biases make it forecast new speakers
honestly:

- ``io.residual``: the decoder describes the *step* ``(x_t - x_{t-1}) / scale``, so an untrained
  model forecasts hold-last and training learns the structure on top of a random walk;
- ``io.relative``: inputs are positions relative to the window's first frame plus steps, never
  absolute positions, which identify a speaker's framing and do not transfer; with
  ``io.adaptive_scale`` steps are measured in the window's own context volatility (causal;
  :func:`~kpflow.forecast.io.context_step_scale`);
- ``io.momentum``: a learned per-dimension multiple of the last step is added to the mean step;
- ``io.sign_invariant``: the state sees magnitudes only (the posterior still sees signed frames).

A VRNN built without ``io`` has the layer it had before the shared one: all of these but sign
invariance (:attr:`VRNNForecaster.legacy_io`).

Two options shape the samples for long horizons (both on in the ``:cpu`` config):

- ``equivariant``: the model is exactly equivariant to reflecting a window through its first frame
  (``x -> 2 x_0 - x``, head motion has no preferred direction). The prior's mean is zero, the
  posterior's mean and the decoder's mean are odd (in the frame's features and in z), their stds
  even, and the state sees only reflection-invariant inputs. The direction of motion then reaches
  the forecast through ``io.momentum`` alone. Without this, a drift learned from the two training
  speakers (whose motion persists) leaks into the state through z and overshoots on held-out
  speakers: at 12-12 the mean of the samples was 4-10% worse than hold-last.
- ``latent_persistence`` rho: the prior's standardised noise is AR(1) across steps, so a sampled
  z drives a whole stretch of coherent motion instead of fresh jitter every frame; each step's
  marginal is still N(mu_p, sigma_p), and the KL uses this conditional prior. With a deterministic
  decoder (``decoder_temperature=0``) every sample is then a low-dimensional, smooth path: the best
  of 100 such paths lies much closer to the truth than the best of 100 random walks.

Sampling has two phases, each an ``nn.scan`` over submodules shared with training: ``encode`` runs
the posterior over the observed frames once per window; ``rollout`` draws z from the prior and feeds
the model's own outputs back (closed loop), each kept within the training data's region
(``frame_bound``), and is ``vmap``-ed over sample keys by the wrapper. The labelled
``teacher_forced`` protocol of the authors' code instead feeds the true frame t after predicting it.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from kpflow.forecast.base import (
    as_temperatures,
    bound_forecast_frame,
    check_frame_bound,
    cycle_temperatures,
    gaussian_kl,
    gaussian_nll,
)
from kpflow.forecast.cells import GRUCell, SplitDense, check_matmul_dtype, dense
from kpflow.forecast.io import IOForecastModule, IOLayer, resolve
from kpflow.forecast.scoring import closed_loop_energy

_MIN_STD = 1e-3


class GaussianHead(nn.Module):
    """MLP -> (mean, std) with a softplus std; the mean layer starts at zero.

    Called on several inputs it is the MLP of their concatenation, with the same parameters,
    computed part by part (:class:`~kpflow.forecast.cells.SplitDense`)."""

    hidden: int
    out: int
    matmul_dtype: str | None = None

    @nn.compact
    def __call__(self, *inputs):
        # Explicit names: those nn.compact gave when the first layer was an nn.Dense (checkpoints load).
        x = nn.relu(SplitDense(self.hidden, self.matmul_dtype, name="Dense_0")(*inputs))
        mean = dense(self.out, self.matmul_dtype, kernel_init=nn.initializers.zeros, name="Dense_1")(x)
        std = nn.softplus(dense(self.out, self.matmul_dtype, name="Dense_2")(x)) + _MIN_STD
        return mean, std


class VRNNForecaster(IOForecastModule):
    """VRNN forecaster (registry name ``vrnn``). Paper size: hidden 256, latent 20, MLPs 128.

    Attributes:
      io: the shared input/output layer (:class:`~kpflow.forecast.io.IOLayer`); None:
        :attr:`legacy_io`.
      hidden: GRU units. latent: size of z_t. *_hidden: widths of the prior, posterior and decoder MLPs.
      kl_weight: weight of the KL term (beta).
      latent_temperature: scale of the prior's noise on z when forecasting (sampling and the
        teacher-forced protocol; never in training): 1 samples the prior, below 1 narrows the
        samples around their centre, like a flow's sampling temperature. Chosen on validation data.
        A tuple of temperatures is a scale mixture: the draws cycle through them (draw i at
        ``latent_temperature[i % len]``, mirror images at their draw's), so one window's samples
        hold tight and wide futures at once. That hedges against a new speaker moving more or less
        than the training speakers did, where one temperature is too wide for some and too narrow
        for others.
      mirror_samples: antithetic pairs through the damped momentum path (:class:`IOForecastModule`;
        for the equivariant model the path is the forecast with z = 0 throughout).
      decoder_temperature: scale of the decoder's Gaussian noise when forecasting: 1 samples it,
        0 takes its mean (all randomness then comes from z, which is shared by all keypoints, so
        samples stay coherent), values between trade calibration against sharpness; chosen on
        validation data like a sampling temperature of other generative models.
      closed_loop_weight: weight of a closed-loop term added to the ELBO: the energy score (a
        strictly proper scoring rule) of ``closed_loop_samples`` reparameterised rollouts from the
        observed frames against the true future. The ELBO trains one-step predictions from true
        inputs; this term trains the forecast actually used, fed its own outputs. 0: plain VRNN.
      embed_inputs: True (Chung et al.): x and z pass through the ``hidden``-wide embeddings
        phi_x, phi_z before the GRU and the decoder; False (the authors' code): the raw features and
        z go in, which narrows the GRU's input (with ``position_features=False``: 80 numbers
        instead of 512 at the authors' sizes).
      position_features: feed the frame's position (``io.relative``: relative to the window's first
        frame) as well as the step (False: steps only, D numbers per frame like the authors' GRU
        input).
      equivariant: exact reflection equivariance (see the module docstring); it also feeds the
        state the reflection-invariant products step_t * step_{t-1}.
      latent_persistence: AR(1) coefficient of the prior's standardised noise across steps (0:
        Chung et al.'s independent steps).
      fresh_forecast_latent: start the forecast's latent chain from its stationary N(0, 1) instead
        of the context's last (signed) latent, so no direction carries over through z.
      frame_bound: closed-loop frames stay within this many training standard deviations of the
        training mean, per dimension (or as far as the last observed frame, if farther;
        :func:`~kpflow.forecast.base.bound_forecast_frame`); mirror images too. None: unbounded.
        Sampling only: the ELBO, the closed-loop training term and the teacher-forced protocol
        (whose predictions are never fed back) are unchanged.
      matmul_dtype: ``"bfloat16"`` multiplies matrices in bfloat16 with float32 accumulation
        (:mod:`kpflow.forecast.cells`); None: float32 throughout. Parameters are float32 either way,
        so a model trained in one runs in the other.
    """

    hidden: int = 64
    latent: int = 16
    prior_hidden: int = 64
    posterior_hidden: int = 64
    decoder_hidden: int = 64
    kl_weight: float = 1.0
    decoder_temperature: float = 1.0
    latent_temperature: float | tuple[float, ...] = 1.0
    closed_loop_weight: float = 0.0
    closed_loop_samples: int = 8
    matmul_dtype: str | None = None
    embed_inputs: bool = True
    position_features: bool = True
    latent_persistence: float = 0.0
    fresh_forecast_latent: bool = False
    equivariant: bool = False
    frame_bound: float | None = 4.0

    supports_teacher_forcing = True
    two_phase_sampling = True
    # Without ``io``: the layer of VRNN configs written before the shared one (sign invariance was
    # the field ``sign_invariant``, off by default).
    legacy_io = IOLayer(sign_invariant=False)

    def __post_init__(self):
        # Checked at construction, so a bad config fails in one line before anything is traced.
        temps = as_temperatures(self.latent_temperature)
        object.__setattr__(self, "latent_temperature", temps)
        values = temps if isinstance(temps, tuple) else (temps,)
        if not values or not all(t > 0 for t in values):
            raise ValueError(f"vrnn: latent_temperature must be > 0 (or a non-empty tuple of such), got {temps}")
        if not 0.0 <= self.latent_persistence < 1.0:
            raise ValueError(f"vrnn: latent_persistence must be in [0, 1) (an AR(1) coefficient), "
                             f"got {self.latent_persistence}")
        check_matmul_dtype(self.matmul_dtype)
        check_frame_bound("vrnn", self.frame_bound)
        layer = resolve(self.io, self.legacy_io)
        if self.equivariant and self.position_features and not layer.relative:
            raise ValueError("vrnn: equivariant needs io.relative (a reflection through the window's first "
                             "frame negates relative positions, not absolute ones)")
        super().__post_init__()

    def setup(self):
        mt = self.matmul_dtype
        if self.embed_inputs:
            self.phi_x = dense(self.hidden, mt, name="phi_x")
            self.phi_z = dense(self.hidden, mt, name="phi_z")
        self.prior = GaussianHead(self.prior_hidden, self.latent, mt, name="prior")
        self.posterior = GaussianHead(self.posterior_hidden, self.latent, mt, name="posterior")
        self.decoder = GaussianHead(self.decoder_hidden, self.dim, mt, name="decoder")
        self.gru = GRUCell(self.hidden, mt, name="gru")
        self.setup_momentum()  # the one structure found to transfer across speakers

    # -- one step -------------------------------------------------------------------------------
    def _scale(self, context, step_scale):
        """``[B, D]`` step scale of each window (the layer's ``window_scale``)."""
        return self.io.window_scale(context, step_scale)

    def _features(self, frame, prev, anchor, scale, magnitudes: bool = False, sign: float = 1.0):
        feats = sign * self.io.features(frame, prev, anchor, scale, positions=self.position_features)
        feats = jnp.abs(feats) if magnitudes else feats
        return nn.relu(self.phi_x(feats)) if self.embed_inputs else feats

    def _posterior(self, h, frame, prev, anchor, scale):
        m1, s1 = self.posterior(h, self._features(frame, prev, anchor, scale))
        if not self.equivariant:
            return m1, s1
        # Odd mean, even std: reflecting the window reflects the posterior.
        m2, s2 = self.posterior(h, self._features(frame, prev, anchor, scale, sign=-1.0))
        return 0.5 * (m1 - m2), 0.5 * (s1 + s2)

    def _decode(self, h, z, last_step):
        """-> (dz features, mean step, std of step)."""
        embed = lambda v: nn.relu(self.phi_z(v)) if self.embed_inputs else v
        dz = embed(z)
        mean, std = self.decoder(h, dz)
        if self.equivariant:  # odd in z: the prior is symmetric, so the mean step is the momentum's alone
            mean2, std2 = self.decoder(h, embed(-z))
            mean, std = 0.5 * (mean - mean2), 0.5 * (std + std2)
        if self.io.uses_momentum:
            mean = mean + self.momentum_shift(last_step)
        return dz, mean, std

    def _to_frame(self, prev, head, scale):
        return self.io.head_to_frame(prev, head, scale)  # momentum is in the head already (_decode)

    def _to_head(self, prev, frame, scale):
        return self.io.frame_to_head(prev, frame, scale)

    def _advance(self, h, frame, prev, dz, z, eps, anchor, scale, last_step):
        """Feed ``frame`` -> new carry ``(h, frame, step, eps)``."""
        fx = self._features(frame, prev, anchor, scale, magnitudes=self.io.sign_invariant or self.equivariant)
        inputs = [fx, dz]
        if self.equivariant:
            # Only reflection-invariant inputs reach the state: |z|, and step_t * step_{t-1}, whose
            # sign tells persistent motion from jitter (speakers differ: lag-1 autocorrelation of the
            # steps is 0.13 for one held-out speaker, 0.49 and 0.67 for the training ones).
            inputs[1] = nn.relu(self.phi_z(jnp.abs(z))) if self.embed_inputs else jnp.abs(z)
            inputs.append(jnp.tanh((frame - prev) / scale * last_step))
        h, _ = self.gru(h, jnp.concatenate(inputs, -1))
        return (h, frame, (frame - prev) / scale, eps)

    def _prior(self, h, eps_prev):
        """-> (mean, std) of ``z_t`` given ``h_{t-1}`` and the previous standardised latent, and the
        marginal (mean, std). With ``latent_persistence`` rho the standardised latent is AR(1):
        ``z_t = mu + sigma (rho eps_{t-1} + sqrt(1 - rho^2) eta)``; each step's marginal is Chung et al.'s
        N(mu, sigma)."""
        mp, sp = self.prior(h)
        if self.equivariant:
            mp = jnp.zeros_like(mp)
        rho = self.latent_persistence
        if rho == 0:
            return mp, sp, mp, sp
        return mp + rho * sp * eps_prev, sp * jnp.sqrt(1.0 - rho**2), mp, sp

    def _observe_step(self, carry, frame, anchor, scale):
        """Posterior step on a known ``frame`` -> carry, (nll [B], kl [B])."""
        h, prev, last_step, eps_prev = carry
        mp, sp, mp0, sp0 = self._prior(h, eps_prev)
        mq, sq = self._posterior(h, frame, prev, anchor, scale)
        z = mq + sq * jax.random.normal(self.make_rng("sample"), mq.shape, mq.dtype)
        dz, mean, std = self._decode(h, z, last_step)
        target = self._to_head(prev, frame, scale)
        nll, kl = jnp.sum(gaussian_nll(target, mean, std), axis=-1), gaussian_kl(mq, sq, mp, sp)
        return self._advance(h, frame, prev, dz, z, (z - mp0) / sp0, anchor, scale, last_step), (nll, kl)

    def _forecast_step(self, carry, truth, anchor, scale, temperature, last_observed=None, bound=None):
        """Prior step: predict a frame; feed it back (closed loop) or feed ``truth`` (teacher forcing).
        ``temperature`` scales the prior's noise (with a persistent latent, its chain stays
        stationary at N(0, temperature^2) in standardised units). ``bound``: the frame is clipped
        (:func:`~kpflow.forecast.base.bound_forecast_frame` around ``last_observed [B, D]``); None: not."""
        h, prev, last_step, eps_prev = carry
        mp, sp, mp0, sp0 = self._prior(h, eps_prev)
        z = mp + sp * temperature * jax.random.normal(self.make_rng("sample"), mp.shape, mp.dtype)
        dz, mean, std = self._decode(h, z, last_step)
        head = mean
        if self.decoder_temperature > 0:
            eps = jax.random.normal(self.make_rng("sample"), mean.shape, mean.dtype)
            head = mean + self.decoder_temperature * std * eps
        frame = bound_forecast_frame(self._to_frame(prev, head, scale), last_observed, bound)
        fed = frame if truth is None else truth
        return self._advance(h, fed, prev, dz, z, (z - mp0) / sp0, anchor, scale, last_step), frame

    # -- scans ----------------------------------------------------------------------------------
    def _scan(self, body, carry, xs, length=None):
        scan = nn.scan(body, variable_broadcast="params", split_rngs={"params": False, "sample": True},
                       in_axes=1, out_axes=1, length=length)
        return scan(self, carry, xs)

    def _observe(self, frames, anchor, scale):
        """Posterior pass over known ``frames [B, T, D]`` -> final carry, (nll, kl) ``[B, T]``."""
        b = frames.shape[0]
        # The standardised latent before the first frame: a draw from its stationary N(0, 1).
        eps = (jax.random.normal(self.make_rng("sample"), (b, self.latent), frames.dtype)
               if self.latent_persistence > 0 else jnp.zeros((b, self.latent), frames.dtype))
        carry = (jnp.zeros((b, self.hidden), frames.dtype), frames[:, 0], jnp.zeros_like(frames[:, 0]), eps)
        return self._scan(lambda m, c, f: m._observe_step(c, f, anchor, scale), carry, frames)

    # -- interface ------------------------------------------------------------------------------
    def loss(self, x, step_scale, train: bool = True):
        """Negative ELBO per step and dimension over frames 1..T-1 of ``x [B, T, D]`` (frame 0 primes the state)."""
        scale = self._scale(x[:, : self.num_observed], step_scale)
        _, (nll, kl) = self._observe(x, x[:, 0], scale)
        nll, kl = nll[:, 1:], kl[:, 1:]
        loss = jnp.mean(nll + self.kl_weight * kl) / self.dim
        metrics = {"nll": jnp.mean(nll) / self.dim, "kl": jnp.mean(kl)}
        if self.closed_loop_weight > 0:
            n, k = self.num_observed, self.closed_loop_samples
            b, t, d = x.shape
            state = self.encode(x[:, :n], step_scale)
            tiled = jax.tree_util.tree_map(lambda a: jnp.tile(a, (k,) + (1,) * (a.ndim - 1)), state)
            rollouts = self.rollout(tiled, t - n, step_scale, temperature=1.0, bounded=False).reshape(k, b, t - n, d)
            es = closed_loop_energy(rollouts, x, n, step_scale)
            metrics["closed_loop_es"] = es
            loss = loss + self.closed_loop_weight * es
        return loss, metrics

    def encode(self, context, step_scale):
        """Observe ``context [B, N, D]`` once -> the state a rollout starts from (a pytree)."""
        scale = self._scale(context, step_scale)
        carry, _ = self._observe(context, context[:, 0], scale)
        return {"carry": carry, "anchor": context[:, 0], "scale": scale}

    def draw_temperatures(self, num_draws: int):
        """``[num_draws]`` latent temperatures of a mixture (``latent_temperature`` a tuple), draw i at
        entry ``i % len``; None for one temperature (the rollout's default)."""
        return cycle_temperatures(self.latent_temperature, num_draws)

    def rollout(self, state, horizon, step_scale, truth=None, temperature=None, bounded=True):
        """From ``encode``'s state, ``horizon`` closed-loop frames ``[B, M, D]`` (or teacher-forced with
        ``truth``); ``temperature`` defaults to ``latent_temperature`` (training passes 1). A mixture
        of temperatures is drawn per sample: ``Forecaster`` passes each draw's (``draw_temperatures``).
        Closed-loop frames are kept within ``frame_bound`` unless ``bounded=False`` (training's
        closed-loop term); teacher-forced ones never are (nothing is fed back)."""
        anchor, scale, carry = state["anchor"], state["scale"], state["carry"]
        # carry[1] is the last observed frame: the region is widened to it.
        clip = {"last_observed": carry[1], "bound": self.frame_bound if bounded and truth is None else None}
        tau = self.latent_temperature if temperature is None else temperature
        if isinstance(tau, tuple):  # a configuration mistake, not a wrong argument type
            msg = (f"vrnn: latent_temperature {tau} is a mixture, drawn per sample; pass this draw's "
                   "temperature (Forecaster.sample and teacher_forced do)")
            raise ValueError(msg)  # noqa: TRY004
        if self.fresh_forecast_latent and self.latent_persistence > 0:
            # The forecast's latent starts from its stationary law, not from the context's last one.
            eps = carry[3]
            carry = carry[:3] + (tau * jax.random.normal(self.make_rng("sample"), eps.shape, eps.dtype),)
        # The first step runs before the scan. Its state is the encoded context's, the same for every
        # sample, so under the sampler's vmap its state-side products (the prior, the GRU's recurrent
        # products, the state's part of the decoder) are computed once, not once per sample.
        carry, first = self._forecast_step(carry, None if truth is None else truth[:, 0], anchor, scale, tau, **clip)
        if horizon == 1:
            return first[:, None]
        if truth is None:
            body = lambda m, c, _: m._forecast_step(c, None, anchor, scale, tau, **clip)
            _, frames = self._scan(body, carry, None, length=horizon - 1)
        else:
            body = lambda m, c, f: m._forecast_step(c, f, anchor, scale, tau)
            _, frames = self._scan(body, carry, truth[:, 1:])
        return jnp.concatenate([first[:, None], frames], axis=1)

    def mirror_center(self, state, horizon):
        """The damped momentum path ``[B, M, D]`` from ``encode``'s state: steps ``rho^k`` times the
        last observed step (hold-last without momentum); ``mirror_samples`` mirrors through it (the
        wrapper bounds the mirror images by ``frame_bound`` as the rollout bounds the draws)."""
        _, prev, last_step, _ = state["carry"]
        return self.damped_momentum_path(prev, last_step, state["scale"], horizon)

    def point_forecast(self, context, horizon, step_scale):
        """The damped momentum path from ``context`` (:meth:`mirror_center`; for the equivariant model
        the forecast with z = 0 throughout, the centre of the samples)."""
        return self.mirror_center(self.encode(context, step_scale), horizon)

    def sample(self, context, horizon, step_scale):
        """Closed loop: posterior over ``context [B, N, D]``, then prior and own outputs for ``horizon`` steps."""
        return self.rollout(self.encode(context, step_scale), horizon, step_scale)

    def teacher_forced(self, x, step_scale, temperature=None):
        """The authors' protocol: frame t is predicted from the prior, then the TRUE frame t is fed in."""
        n = self.num_observed
        state = self.encode(x[:, :n], step_scale)
        return self.rollout(state, x.shape[1] - n, step_scale, truth=x[:, n:], temperature=temperature)
