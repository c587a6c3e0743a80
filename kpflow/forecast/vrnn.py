"""Variational recurrent neural network (Chung et al. 2015) for keypoint forecasting.

At step t, with the GRU state ``h_{t-1}`` summarising frames < t:

- prior      ``p(z_t | h_{t-1})``                = N(mu_p, sigma_p)      (Chung et al., eq. 5)
- posterior  ``q(z_t | x_t, h_{t-1})``           = N(mu_q, sigma_q)      (eq. 9)
- decoder    ``p(x_t | z_t, h_{t-1})``           Gaussian over the step   (eq. 6)
- recurrence ``h_t = GRU(h_{t-1}, [phi_x(x_t), phi_z(z_t)])``            (eq. 7)

trained by the step-wise ELBO (eq. 10). With ``residual=True`` (the default) the decoder describes
the *step* ``(x_t - x_{t-1}) / step_scale`` rather than the frame, so an untrained model already
forecasts hold-last and training only has to learn the structure on top of a random walk.

One ``nn.scan`` over time serves every use: each step carries a flag saying whether its true frame
is known. Observed steps draw z from the posterior and feed the true frame; forecast steps draw z
from the prior and feed the model's own output (closed loop), or, in the labelled
``teacher_forced`` protocol of the authors' code, feed the true frame although it is being predicted.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from kpflow.forecast.base import ForecastModule, context_step_scale
from kpflow.forecast.scoring import closed_loop_energy

_MIN_STD = 1e-3


def _gaussian_params(hidden: int, out: int, name: str):
    """An MLP head producing (mean, std) with a softplus std."""

    class _Head(nn.Module):
        @nn.compact
        def __call__(self, x):
            x = nn.relu(nn.Dense(hidden)(x))
            mean = nn.Dense(out, kernel_init=nn.initializers.zeros)(x)
            std = nn.softplus(nn.Dense(out)(x)) + _MIN_STD
            return mean, std

    return _Head(name=name)


def _gaussian_kl(mq, sq, mp, sp):
    """KL(N(mq, sq) || N(mp, sp)) summed over the last axis."""
    return jnp.sum(jnp.log(sp / sq) + (sq**2 + (mq - mp) ** 2) / (2 * sp**2) - 0.5, axis=-1)


def _gaussian_nll(x, mean, std):
    return jnp.sum(0.5 * ((x - mean) / std) ** 2 + jnp.log(std) + 0.5 * jnp.log(2 * jnp.pi), axis=-1)


class VRNNCell(nn.Module):
    """One VRNN step. Carry ``(h [B, H], prev [B, D])``; see the module docstring."""

    dim: int
    hidden: int
    latent: int
    prior_hidden: int
    posterior_hidden: int
    decoder_hidden: int
    residual: bool
    decoder_noise: bool
    momentum: bool

    def setup(self):
        self.phi_x = nn.Dense(self.hidden, name="phi_x")
        self.phi_z = nn.Dense(self.hidden, name="phi_z")
        self.prior = _gaussian_params(self.prior_hidden, self.latent, "prior")
        self.posterior = _gaussian_params(self.posterior_hidden, self.latent, "posterior")
        self.decoder = _gaussian_params(self.decoder_hidden, self.dim, "decoder")
        self.gru = nn.GRUCell(self.hidden, name="gru")
        if self.momentum and self.residual:
            # A per-dimension damped-momentum skip: the one structure of these series that transfers
            # across speakers (increments have lag-1 autocorrelation ~0.3-0.45).
            self.rho = self.param("momentum", nn.initializers.constant(0.3), (self.dim,))

    def features(self, frame, prev, anchor, step_scale):
        # Relative to the window's first frame: absolute positions identify the speaker and framing,
        # which does not transfer to new speakers.
        return nn.relu(self.phi_x(jnp.concatenate([(frame - anchor) / step_scale, (frame - prev) / step_scale], -1)))

    def __call__(self, carry, inputs, step_scale, anchor):
        """``inputs = (frame [B, D], observed [B, 1], feed_truth [B, 1])`` ->
        carry, ``(prediction [B, D], nll [B], kl [B])``.

        ``prediction`` is the decoded frame (a sample of the step distribution, or its mean when
        ``decoder_noise`` is off); ``nll``/``kl`` are the ELBO terms of ``frame`` (meaningful only on
        observed steps).
        """
        h, prev, last_step = carry
        frame, observed, feed_truth = inputs
        target = (frame - prev) / step_scale if self.residual else frame

        mp, sp = self.prior(h)
        fx = self.features(frame, prev, anchor, step_scale)
        mq, sq = self.posterior(jnp.concatenate([h, fx], -1))
        m, s = jnp.where(observed > 0, mq, mp), jnp.where(observed > 0, sq, sp)
        z = m + s * jax.random.normal(self.make_rng("sample"), m.shape, m.dtype)

        dz = nn.relu(self.phi_z(z))
        mean, std = self.decoder(jnp.concatenate([h, dz], -1))
        if self.momentum and self.residual:
            mean = mean + self.rho * last_step
        head = mean + std * jax.random.normal(self.make_rng("sample"), mean.shape) if self.decoder_noise else mean
        prediction = prev + head * step_scale if self.residual else head

        nll = _gaussian_nll(target, mean, std)
        kl = _gaussian_kl(mq, sq, mp, sp)

        fed = jnp.where(feed_truth > 0, frame, prediction)
        h, _ = self.gru(h, jnp.concatenate([self.features(fed, prev, anchor, step_scale), dz], -1))
        return (h, fed, (fed - prev) / step_scale), (prediction, nll, kl)


class VRNNForecaster(ForecastModule):
    """VRNN forecaster (registry name ``vrnn``). Paper size: hidden 256, latent 20, MLPs 128.

    Attributes:
      hidden: GRU units. latent: size of z_t. *_hidden: widths of the prior, posterior and decoder MLPs.
      residual: decode steps in ``step_scale`` units instead of frames.
      kl_weight: weight of the KL term (beta). free_bits: KL per step below this is not penalised.
      decoder_noise: sample the decoder's Gaussian when forecasting (otherwise its mean: all
        randomness then comes from z, which keeps samples coherent across keypoints).
      closed_loop_weight: weight of a closed-loop term added to the ELBO: the energy score (a
        strictly proper scoring rule) of ``closed_loop_samples`` reparameterised rollouts from the
        observed frames, against the true future, in ``step_scale`` units per frame. The ELBO alone
        trains one-step predictions from true inputs; this term trains the forecast that is actually
        used, with the model fed its own outputs (it removes exposure bias). 0 gives the plain VRNN.
      adaptive_scale: measure steps in each window's own context volatility, shrunk toward the
        dataset's with this many pseudo-steps (``context_step_scale``); a negative value uses the
        dataset's step scale for every window.
      momentum: add a learned per-dimension multiple of the last step to the decoder's mean step.
    """

    hidden: int = 64
    latent: int = 16
    prior_hidden: int = 64
    posterior_hidden: int = 64
    decoder_hidden: int = 64
    residual: bool = True
    kl_weight: float = 1.0
    free_bits: float = 0.0
    decoder_noise: bool = True
    closed_loop_weight: float = 0.0
    closed_loop_samples: int = 8
    adaptive_scale: float = 4.0
    momentum: bool = True

    supports_teacher_forcing = True

    def setup(self):
        scan = nn.scan(
            VRNNCell,
            variable_broadcast="params",
            split_rngs={"params": False, "sample": True},
            in_axes=(1, nn.broadcast, nn.broadcast),
            out_axes=1,
        )
        self.cell = scan(
            dim=self.dim, hidden=self.hidden, latent=self.latent, prior_hidden=self.prior_hidden,
            posterior_hidden=self.posterior_hidden, decoder_hidden=self.decoder_hidden,
            residual=self.residual, decoder_noise=self.decoder_noise, momentum=self.momentum, name="cell",
        )

    def _run(self, frames, observed, feed_truth, step_scale):
        """Scan over ``frames [B, T, D]`` with per-step flags ``[T]`` -> ``(predictions, nll, kl)`` over time."""
        b, t, _ = frames.shape
        flags = lambda f: jnp.broadcast_to(jnp.asarray(f, frames.dtype)[None, :, None], (b, t, 1))  # noqa: E731
        if self.adaptive_scale >= 0:
            step_scale = context_step_scale(frames[:, : self.num_observed], step_scale, self.adaptive_scale)
        carry = (jnp.zeros((b, self.hidden), frames.dtype), frames[:, 0], jnp.zeros_like(frames[:, 0]))
        _, outputs = self.cell(carry, (frames, flags(observed), flags(feed_truth)), step_scale, frames[:, 0])
        return outputs

    def loss(self, x, step_scale, train: bool = True):
        """Negative ELBO per step and dimension over frames 1..T-1 of ``x [B, T, D]`` (frame 0 only primes the state)."""
        t = x.shape[1]
        ones = jnp.ones((t,))
        _, nll, kl = self._run(x, ones, ones, step_scale)
        nll, kl = nll[:, 1:], kl[:, 1:]
        kl_pen = jnp.maximum(kl, self.free_bits) if self.free_bits > 0 else kl
        loss = jnp.mean(nll + self.kl_weight * kl_pen) / self.dim
        metrics = {"nll": jnp.mean(nll) / self.dim, "kl": jnp.mean(kl)}
        if self.closed_loop_weight > 0:
            es = self.closed_loop_energy(x, step_scale)
            metrics["closed_loop_es"] = es
            loss = loss + self.closed_loop_weight * es
        return loss, metrics

    def closed_loop_energy(self, x, step_scale):
        """Energy score of ``closed_loop_samples`` rollouts of ``x[:, N:]`` from ``x[:, :N]`` (see scoring.py)."""
        n, k = self.num_observed, self.closed_loop_samples
        b, t, d = x.shape
        context = jnp.tile(x[:, :n], (k, 1, 1))  # [K*B, N, D]: K independent rollouts per window
        rollouts = self.sample(context, t - n, step_scale).reshape(k, b, t - n, d)
        return closed_loop_energy(rollouts, x, n, step_scale)

    def sample(self, context, horizon, step_scale):
        """Closed loop: posterior over ``context [B, N, D]``, then prior and own outputs for ``horizon`` steps."""
        b, n, d = context.shape
        frames = jnp.concatenate([context, jnp.zeros((b, horizon, d), context.dtype)], axis=1)
        known = jnp.concatenate([jnp.ones((n,)), jnp.zeros((horizon,))])
        predictions, _, _ = self._run(frames, known, known, step_scale)
        return predictions[:, n:]

    def teacher_forced(self, x, step_scale):
        """The authors' protocol: frame t is predicted from the prior, then the TRUE frame t is fed in."""
        n, t = self.num_observed, x.shape[1]
        known = jnp.concatenate([jnp.ones((n,)), jnp.zeros((t - n,))])
        predictions, _, _ = self._run(x, known, jnp.ones((t,)), step_scale)
        return predictions[:, n:]
