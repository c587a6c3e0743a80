"""Conditional VAE forecaster (Sohn, Lee and Yan, 2015) over the whole future window.

With ``c`` an MLP encoding of the observed frames' inputs from the shared layer
(:mod:`kpflow.forecast.io`) and ``y [M*D]`` the flattened future heads (with ``io.residual``, the
steps in units of the window's step scale, less momentum's share when ``io.momentum``):

- encoder ``q(z | c, y) = N(mu_q, sigma_q)``,
- prior   ``p(z | c)  = N(mu_p, sigma_p)`` (or ``N(0, I)`` with ``conditional_prior=False``),
- decoder ``p(y | z, c) = N(g(z, c), diag(sigma_y^2))`` with a learned per-dimension ``sigma_y``,

trained on the negative ELBO ``E_q[-log p(y | z, c)] + beta KL(q || p)`` (Kingma and Welling 2014,
eq. 3; Sohn et al. 2015, section 3), with one reparameterised draw of z. A forecast draws z from the
prior and y from the decoder (or takes its mean with ``sample_noise=False``), then the layer
integrates the heads from the last observed frame, within the training data's region
(``frame_bound``). The model forecasts exactly its trained horizon.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from kpflow.forecast.base import check_frame_bound, gaussian_kl, gaussian_nll
from kpflow.forecast.flows import MLP
from kpflow.forecast.io import IOForecastModule

_MIN_STD = 1e-4
_STD_OFFSET = 0.5413249  # softplus(_STD_OFFSET) = 1


def _mean_std(out: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray]:
    """``[.., 2L]`` -> mean ``[.., L]``, softplus std ``[.., L]``."""
    mean, raw = jnp.split(out, 2, axis=-1)
    return mean, nn.softplus(raw + _STD_OFFSET) + _MIN_STD


class VAEForecaster(IOForecastModule):
    """Conditional VAE over the flattened future heads ``[M*D]``.

    Attributes (besides dim, num_observed, horizon and ``io``, the shared input/output layer;
    without it, :data:`~kpflow.forecast.io.PLAIN`):
      hidden: width of every MLP (context encoder, encoder, prior, decoder).
      latent: size of z.
      num_layers: hidden layers per MLP.
      beta: KL weight.
      conditional_prior: p(z | context) (True) or N(0, I).
      sample_noise: forecasts include the decoder's Gaussian noise (True) or use its mean.
      frame_bound: forecast frames stay within this many training standard deviations of the
        training mean, per dimension (or as far as the last observed frame, if farther;
        :func:`~kpflow.forecast.base.bound_forecast_frame`); None: unbounded. Sampling only.
    """

    hidden: int = 256
    latent: int = 32
    num_layers: int = 2
    beta: float = 1.0
    conditional_prior: bool = True
    sample_noise: bool = True
    frame_bound: float | None = 4.0

    any_horizon = False

    def __post_init__(self):
        check_frame_bound("vae", self.frame_bound)  # at construction: a bad config fails in one line
        super().__post_init__()

    def setup(self):
        out = self.horizon * self.dim
        self.context_encoder = MLP(self.hidden, self.num_layers, self.hidden, activation="relu")
        self.encoder = MLP(self.hidden, self.num_layers, 2 * self.latent, activation="relu")
        if self.conditional_prior:
            self.prior = MLP(self.hidden, self.num_layers, 2 * self.latent, activation="relu")
        # Zero last layer: the untrained decoder predicts zero heads (hold-last, or the damped
        # momentum path).
        self.decoder = MLP(
            self.hidden, self.num_layers, out, activation="relu", zero_init_last=True
        )
        self.decoder_raw_std = self.param("decoder_raw_std", nn.initializers.zeros, (out,))
        self.setup_momentum()

    def encode_context(self, context: jnp.ndarray, scale: jnp.ndarray) -> jnp.ndarray:
        """``context [B, N, D]``, its step scale ``[B, D]`` -> ``c [B, hidden]``."""
        feats = self.io.series_inputs(context, scale)
        return nn.relu(self.context_encoder(feats.reshape(feats.shape[0], -1)))

    def prior_params(self, c: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray]:
        """``c [B, hidden]`` -> prior mean and std ``[B, latent]``."""
        if self.conditional_prior:
            return _mean_std(self.prior(c))
        zeros = jnp.zeros(c.shape[:-1] + (self.latent,), c.dtype)
        return zeros, jnp.ones_like(zeros)

    def decode(self, z: jnp.ndarray, c: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray]:
        """``z [B, latent]``, ``c [B, hidden]`` -> mean ``[B, M*D]`` and std ``[M*D]`` of the heads."""
        mean = self.decoder(jnp.concatenate([z, c], axis=-1))
        return mean, nn.softplus(self.decoder_raw_std + _STD_OFFSET) + _MIN_STD

    def loss(self, x: jnp.ndarray, step_scale: jnp.ndarray, train: bool = True):
        """``x [B, N+M, D]`` -> (negative ELBO per future dimension, {"nll", "kl"}), both per dimension."""
        n = self.num_observed
        scale = self.io.window_scale(x[:, :n], step_scale)
        c = self.encode_context(x[:, :n], scale)
        y = self.io.frames_to_heads(x, n, scale, self.momentum_coefficients())
        y = y.reshape(y.shape[0], -1)  # [B, M*D]
        mq, sq = _mean_std(self.encoder(jnp.concatenate([c, y], axis=-1)))
        # Reparameterisation trick (Kingma and Welling 2014, section 2.4): z is differentiable in (mq, sq).
        z = mq + sq * jax.random.normal(self.make_rng("sample"), mq.shape, mq.dtype)
        mean, std = self.decode(z, c)
        mp, sp = self.prior_params(c)
        per_dim = y.shape[-1]
        nll = jnp.mean(jnp.sum(gaussian_nll(y, mean, std), axis=-1)) / per_dim
        kl = jnp.mean(gaussian_kl(mq, sq, mp, sp)) / per_dim
        return nll + self.beta * kl, {"nll": nll, "kl": kl}

    def sample(self, context: jnp.ndarray, horizon: int, step_scale: jnp.ndarray) -> jnp.ndarray:
        """``context [B, N, D]`` -> ``[B, M, D]`` (M = the trained horizon; the wrapper checks it)."""
        return self._forecast(context, step_scale, noise=True)

    def point_forecast(self, context: jnp.ndarray, horizon: int, step_scale: jnp.ndarray) -> jnp.ndarray:
        """The decoder's mean at the prior's mean ``[B, M, D]``."""
        return self._forecast(context, step_scale, noise=False)

    def _forecast(self, context, step_scale, noise: bool):
        scale = self.io.window_scale(context, step_scale)
        c = self.encode_context(context, scale)
        mp, sp = self.prior_params(c)
        z = mp
        if noise:
            z_key, y_key = jax.random.split(self.make_rng("sample"))
            z = z + sp * jax.random.normal(z_key, mp.shape, mp.dtype)
        mean, std = self.decode(z, c)
        y = mean
        if noise and self.sample_noise:
            y = y + std * jax.random.normal(y_key, mean.shape, mean.dtype)
        heads = y.reshape(context.shape[0], self.horizon, self.dim)
        return self.io.heads_to_frames(context, heads, scale, self.momentum_coefficients(), self.frame_bound)
