"""The one forecaster interface.

Every forecaster (GRU, VAE, NF, VRNN, GRU-NF and the baselines) is a :class:`Forecaster`: a small
frozen object wrapping a Flax linen module, with the same pure-functional entry points, so training
and evaluation code never branch on the model type:

- ``init(rng, batch, scaler) -> variables``: Flax variables; ``variables['scaler']`` holds the causal
  input scaler (fitted on the training split) so that checkpoints carry it.
- ``loss(variables, batch [B, N+M, D], rng) -> (scalar, metrics)``.
- ``loss_and_state(...)``: the same, plus updated mutable collections (batch statistics) for training.
- ``sample(variables, context [B, N, D], horizon M, rng, num_samples S) -> [S, B, M, D]``: a
  closed-loop rollout (``lax.scan`` inside the module; from step N on the model sees only its own
  outputs); the S samples come from ``jax.vmap`` over rng keys.
- ``teacher_forced(variables, window [B, N+M, D], rng, S) -> [S, B, M, D]`` (recurrent models only):
  the authors' evaluation protocol, where the ground-truth frame t-1 is fed in before predicting t.
  It is a one-step-ahead prediction with true inputs, *not* a forecast; it exists only to reproduce
  the papers' numbers and is labelled ``teacher_forced`` everywhere.

Modules work in scaled units (``CausalScaler.transform``); this wrapper scales inputs and unscales
outputs, so callers always pass and receive raw keypoint vectors.

A module subclassing :class:`ForecastModule` implements ``loss(x, train)`` and ``sample(context,
horizon)`` (one sample, drawing from ``self.make_rng('sample')``) and optionally
``teacher_forced(x)``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from kpflow.keypoints import CausalScaler

Variables = dict[str, Any]

# Mutable collections a module may update during training (batch statistics of flows).
MUTABLE_COLLECTIONS = ("batch_stats",)


class ForecastModule(nn.Module):
    """Base class for forecaster modules. Inputs are scaled ``[B, T, D]`` series.

    Attributes:
      dim: numbers per frame (6K).
      num_observed: N, the context length the module is trained with.
      horizon: M, the number of future frames it is trained to predict.
      step_scale: ``[D]`` std of one-frame increments in scaled units (from the CausalScaler), set
        by the wrapper; residual modules predict steps in these units.
    """

    dim: int = 60
    num_observed: int = 6
    horizon: int = 6

    # Whether ``teacher_forced`` exists (recurrent models).
    supports_teacher_forcing = False
    # Whether ``sample`` accepts a horizon other than the trained one.
    any_horizon = True
    # Whether the module splits sampling into ``encode(context)`` (once per window) and
    # ``rollout(state, horizon)`` (once per sample); the wrapper then vmaps only the rollout.
    two_phase_sampling = False

    def loss(self, x: jnp.ndarray, step_scale: jnp.ndarray, train: bool = True):
        """``x [B, N+M, D]`` scaled -> (scalar, metrics dict)."""
        raise NotImplementedError

    def sample(self, context: jnp.ndarray, horizon: int, step_scale: jnp.ndarray) -> jnp.ndarray:
        """``context [B, N, D]`` scaled -> one closed-loop sample ``[B, M, D]`` (rng stream 'sample')."""
        raise NotImplementedError

    def teacher_forced(self, x: jnp.ndarray, step_scale: jnp.ndarray) -> jnp.ndarray:
        """``x [B, N+M, D]`` scaled -> ``[B, M, D]``: step t predicted after feeding true frames < t."""
        raise NotImplementedError(f"{type(self).__name__} is not recurrent: it has no teacher-forced protocol")

    def point_forecast(self, context: jnp.ndarray, horizon: int, step_scale: jnp.ndarray) -> jnp.ndarray:
        """``context [B, N, D]`` scaled -> the model's deterministic forecast ``[B, M, D]``: its path with
        every noise at zero (a decoder's mean, a flow's image of zero noise, damped momentum). No
        sampling: the same context gives the same frames, whatever rng is passed."""
        raise NotImplementedError(f"{type(self).__name__} has no deterministic forecast")

    def draw_temperatures(self, num_draws: int):
        """Per-draw sampling temperatures ``[num_draws]``, passed to ``rollout`` and ``teacher_forced`` as
        ``temperature=``, for a module whose samples mix several temperatures; None (the default):
        every draw at the module's own."""
        del num_draws  # none here: every draw at the module's own temperature


@dataclasses.dataclass(frozen=True)
class Forecaster:
    """A forecaster: a module plus the pure functions of the shared interface (see module doc)."""

    name: str
    module: ForecastModule

    @property
    def dim(self) -> int:
        return self.module.dim

    @property
    def num_observed(self) -> int:
        return self.module.num_observed

    @property
    def horizon(self) -> int:
        return self.module.horizon

    @property
    def supports_teacher_forcing(self) -> bool:
        return type(self.module).supports_teacher_forcing

    # -- set-up ---------------------------------------------------------------------------------
    def init(self, rng: jax.Array, batch: jnp.ndarray, scaler: CausalScaler | None = None) -> Variables:
        """Initialise variables from an example ``batch [B, N+M, D]`` (raw units)."""
        scaler = scaler if scaler is not None else CausalScaler.identity(self.dim)
        p_rng, s_rng = jax.random.split(rng)
        x = scaler.transform(jnp.asarray(batch, jnp.float32))
        variables = self.module.init(
            {"params": p_rng, "sample": s_rng}, x, scaler.step_scale, train=False, method=type(self.module).loss
        )
        variables = dict(variables)
        variables["scaler"] = {"loc": scaler.loc, "scale": scaler.scale, "step_scale": scaler.step_scale}
        return variables

    @staticmethod
    def scaler_of(variables: Variables) -> CausalScaler:
        return CausalScaler(**variables["scaler"])

    @staticmethod
    def _module_variables(variables: Variables) -> Variables:
        return {k: v for k, v in variables.items() if k != "scaler"}

    # -- training -------------------------------------------------------------------------------
    def loss_and_state(self, variables: Variables, batch: jnp.ndarray, rng: jax.Array, train: bool = True):
        """-> ``(loss, (metrics, new_state))``; ``new_state`` holds updated mutable collections."""
        scaler = self.scaler_of(variables)
        x = scaler.transform(batch)
        mvars = self._module_variables(variables)
        mutable = [c for c in MUTABLE_COLLECTIONS if c in mvars] if train else []
        mutable = mutable or False  # apply() returns (out, state) for any list, even an empty one
        d_rng, s_rng = jax.random.split(rng)
        out = self.module.apply(
            mvars, x, scaler.step_scale, train=train, rngs={"dropout": d_rng, "sample": s_rng},
            method=type(self.module).loss, mutable=mutable,
        )
        if mutable:
            (loss, metrics), new_state = out
        else:
            (loss, metrics), new_state = out, {}
        return loss, (metrics, dict(new_state))

    def loss(self, variables: Variables, batch: jnp.ndarray, rng: jax.Array, train: bool = True):
        """``batch [B, N+M, D]`` raw -> ``(scalar, metrics)``."""
        loss, (metrics, _) = self.loss_and_state(variables, batch, rng, train=train)
        return loss, metrics

    # -- sampling -------------------------------------------------------------------------------
    def _vmapped(self, variables: Variables, fn: Callable, inputs: jnp.ndarray, rng: jax.Array, num_samples: int,
                 temperatures: jnp.ndarray | None = None, raw: bool = True):
        """``fn`` vmapped over ``num_samples`` keys -> ``[S, B, M, D]`` raw (scaled units if not ``raw``)."""
        scaler = self.scaler_of(variables)
        mvars = self._module_variables(variables)
        z = scaler.transform(inputs)
        keys = jax.random.split(rng, num_samples)

        def one(key, *tau):  # tau: this draw's temperature, when the module mixes several
            return self.module.apply(mvars, z, scaler.step_scale, *tau, rngs={"sample": key}, method=fn)

        out = jax.vmap(one)(keys) if temperatures is None else jax.vmap(one)(keys, temperatures)  # [S, B, M, D]
        return scaler.inverse(out) if raw else out

    def sample(self, variables: Variables, context: jnp.ndarray, horizon: int, rng: jax.Array, num_samples: int = 1):
        """``context [B, N, D]`` raw -> closed-loop samples ``[S, B, M, D]`` raw."""
        if not type(self.module).any_horizon and horizon != self.horizon:
            raise ValueError(f"{self.name} forecasts exactly {self.horizon} frames (its trained horizon); got {horizon}")
        if type(self.module).two_phase_sampling:
            return self._two_phase(variables, context, horizon, rng, num_samples)
        fn = lambda mdl, z, step_scale: mdl.sample(z, horizon, step_scale)
        if not getattr(self.module, "mirror_samples", False):
            return self._vmapped(variables, fn, context, rng, num_samples)
        # Antithetic pairs (see _two_phase): half the draws, and their images through the centre path.
        scaler = self.scaler_of(variables)
        z = scaler.transform(context)
        draws = self._vmapped(variables, fn, context, rng, (num_samples + 1) // 2, raw=False)
        center = self.module.apply(self._module_variables(variables), z, horizon, scaler.step_scale,
                                   method=type(self.module).context_mirror_center)
        return scaler.inverse(self._with_mirror_images(draws, center, z, num_samples))

    def _with_mirror_images(self, draws: jnp.ndarray, center: jnp.ndarray, z: jnp.ndarray, num_samples: int):
        """``draws [S', B, M, D]`` and their images ``2 center - draw`` (scaled units), first
        ``num_samples``. The scaler is affine per dimension, so mirroring in scaled units is mirroring
        in raw ones. An image of a bounded draw can leave the region (the centre path is not
        bounded), so images are bounded by the module's ``frame_bound`` like its draws."""
        images = bound_forecast_frame(2 * center - draws, z[:, -1:], getattr(self.module, "frame_bound", None))
        return jnp.concatenate([draws, images])[:num_samples]

    def _two_phase(self, variables: Variables, context: jnp.ndarray, horizon: int, rng: jax.Array, num_samples: int):
        """Encode the context once, then vmap the rollout over sample keys: the context's work is
        not repeated S times (the samples share one posterior pass over the observed frames).

        A module with a true ``mirror_samples`` attribute draws half of the samples and adds their
        mirror images through its ``mirror_center(state, horizon)`` path ``[B, M, D]`` (one-phase
        modules: ``context_mirror_center(context, horizon, step_scale)``), bounded by its
        ``frame_bound`` like its draws (:func:`bound_forecast_frame`)."""
        scaler = self.scaler_of(variables)
        mvars = self._module_variables(variables)
        z = scaler.transform(context)
        enc_rng, roll_rng = jax.random.split(rng)
        mod = type(self.module)
        state = self.module.apply(mvars, z, scaler.step_scale, rngs={"sample": enc_rng}, method=mod.encode)

        def one(key, *tau):  # tau: this draw's temperature, when the module mixes several
            extra = {"temperature": tau[0]} if tau else {}
            return self.module.apply(mvars, state, horizon, scaler.step_scale, rngs={"sample": key},
                                     method=mod.rollout, **extra)

        mirror = getattr(self.module, "mirror_samples", False)
        keys = jax.random.split(roll_rng, (num_samples + 1) // 2 if mirror else num_samples)
        taus = self.module.draw_temperatures(len(keys))
        out = jax.vmap(one)(keys) if taus is None else jax.vmap(one)(keys, taus)
        if mirror:  # antithetic pairs: x and its mirror image 2c - x through the centre path c
            center = self.module.apply(mvars, state, horizon, method=mod.mirror_center)
            out = self._with_mirror_images(out, center, z, num_samples)
        return scaler.inverse(out)

    def point_forecast(self, variables: Variables, context: jnp.ndarray, horizon: int) -> jnp.ndarray:
        """``context [B, N, D]`` raw -> the deterministic forecast ``[B, M, D]`` raw
        (:meth:`ForecastModule.point_forecast`): what a codec's predictor runs on both ends of a call."""
        if not type(self.module).any_horizon and horizon != self.horizon:
            raise ValueError(f"{self.name} forecasts exactly {self.horizon} frames (its trained horizon); got {horizon}")
        scaler = self.scaler_of(variables)
        z = scaler.transform(context)
        # Paths that draw noise only to scale it by zero still ask for a key: a fixed one.
        out = self.module.apply(self._module_variables(variables), z, horizon, scaler.step_scale,
                                rngs={"sample": jax.random.PRNGKey(0)}, method=type(self.module).point_forecast)
        return scaler.inverse(out)

    def teacher_forced(self, variables: Variables, window: jnp.ndarray, rng: jax.Array, num_samples: int = 1):
        """``window [B, N+M, D]`` raw -> ``[S, B, M, D]`` under the authors' teacher-forced protocol."""
        if not self.supports_teacher_forcing:
            raise ValueError(f"{self.name} is not recurrent: the teacher_forced protocol does not apply")
        fn = lambda mdl, z, step_scale, *tau: mdl.teacher_forced(z, step_scale, *tau)
        taus = self.module.draw_temperatures(num_samples)
        return self._vmapped(variables, fn, window, rng, num_samples, taus)


def check_frame_bound(model: str, bound: float | None) -> None:
    """One-line ValueError unless ``bound`` (a module's ``frame_bound``) is None or a positive number."""
    if bound is not None and (isinstance(bound, bool) or not isinstance(bound, (int, float)) or not bound > 0):
        raise ValueError(f"{model}: frame_bound must be a positive number of training standard deviations "
                         f"(or None for unbounded forecasts), got {bound!r}")


def check_noise(model: str, temperature: float, persistence: float) -> None:
    """One-line ValueError unless ``temperature >= 0`` (0: the point forecast) and ``0 <= persistence < 1``
    (a sampler's noise)."""
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not temperature >= 0:
        raise ValueError(f"{model}: temperature must be a number >= 0 (0: the point forecast), got {temperature!r}")
    if isinstance(persistence, bool) or not isinstance(persistence, (int, float)) or not 0.0 <= persistence < 1.0:
        raise ValueError(f"{model}: noise_persistence must be in [0, 1) (an AR(1) coefficient), got {persistence!r}")


def as_temperatures(value):
    """A temperature field as a module keeps it: a number, or a tuple of several (a scale mixture).
    A list (a config read back from JSON) becomes a tuple, as module fields must be hashable, and
    one entry is one temperature; the caller checks the values (an empty tuple stays empty)."""
    if isinstance(value, (list, tuple)):
        value = tuple(float(t) for t in value)
        return value[0] if len(value) == 1 else value
    return value


def cycle_temperatures(temperature, num_draws: int):
    """``[num_draws]`` sampling temperatures of a scale mixture (``temperature`` a tuple), draw i at
    entry ``i % len``; None when ``temperature`` is one number (every draw at it)."""
    if not isinstance(temperature, tuple):
        return None
    return jnp.asarray([temperature[i % len(temperature)] for i in range(num_draws)], jnp.float32)


def ar1_noise(fresh: jnp.ndarray, previous: jnp.ndarray | None, persistence: float) -> jnp.ndarray:
    """A forecast step's standardised noise: ``fresh`` (standard normal) when ``previous`` is None or
    ``persistence`` is 0, else ``rho previous + sqrt(1 - rho^2) fresh``, AR(1) across steps with
    standard-normal marginals. A sample's steps then share a direction: a path, not a random walk."""
    if previous is None or persistence == 0:
        return fresh
    return persistence * previous + (1.0 - persistence**2) ** 0.5 * fresh


def bound_forecast_frame(frame: jnp.ndarray, last_observed: jnp.ndarray, bound: float | None) -> jnp.ndarray:
    """A generated frame ``[.., D]`` (scaled units) clipped to the region the model was trained on.

    The region is ``bound`` training standard deviations around the training mean (0 in scaled
    units), widened per dimension to the last observed frame's distance ``|last_observed| [.., D]``,
    so a forecast never jumps back from a context that is already outside it. ``bound=None``: no clip.

    Why: forecasters that read absolute frames (GRU, VAE, NF) fed their own frames from outside the
    training region extrapolate a step that does not vanish, and the residual path integrates it
    (and their independent per-frame noise) without end: 1,000-step closed loops drifted tens of
    data ranges away. It acts when sampling only: training is unchanged, and so is a forecast that
    stays inside the region. At ``bound=4`` the region of configs/vae_vox.py's two training speakers
    holds 99.9% of their values and 95.6% of the held-out speakers'; on those speakers the bound
    moved 3% of a 6-6 VAE's sampled values and its validation MAE by under 1%.
    """
    if bound is None:
        return frame
    limit = jnp.maximum(bound, jnp.abs(last_observed))
    return jnp.clip(frame, -limit, limit)


def gaussian_nll(y: jnp.ndarray, mean: jnp.ndarray, std: jnp.ndarray) -> jnp.ndarray:
    """Element-wise ``-log N(y; mean, std^2)``."""
    return 0.5 * jnp.square((y - mean) / std) + jnp.log(std) + 0.5 * jnp.log(2 * jnp.pi)


def gaussian_kl(mq: jnp.ndarray, sq: jnp.ndarray, mp: jnp.ndarray, sp: jnp.ndarray) -> jnp.ndarray:
    """``KL(N(mq, sq^2) || N(mp, sp^2))`` summed over the last axis."""
    return jnp.sum(jnp.log(sp / sq) + (jnp.square(sq) + jnp.square(mq - mp)) / (2 * jnp.square(sp)) - 0.5, axis=-1)
