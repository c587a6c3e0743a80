"""The input/output layer every forecaster shares: what its core reads, and how its output becomes a frame.

GRU, VAE, NF, VRNN and GRU-NF differ in their generative core. Around it sits one layer, configured
by ``config.model.io`` (an :class:`IOLayer`), that turns observed frames into the core's inputs and
the core's output, its *head*, into the next frame. Its fields are the biases that let a forecaster
trained on a few speakers forecast new ones:

- ``residual``: the head is the step from the last frame in units of the window's step scale, so a
  core whose head is zero forecasts hold-last; False: the head is the frame itself.
- ``relative``: inputs are positions relative to the window's first frame plus steps, never absolute
  positions (those identify a speaker's framing, which does not transfer); False: the frame and its
  step, the papers' inputs.
- ``adaptive_scale``: steps are measured in the window's own observed volatility, shrunk toward the
  dataset's with this many pseudo-steps (:func:`context_step_scale`); negative: the dataset's scale.
- ``momentum``: a learned per-dimension multiple ``rho`` of the last step is added to the step the
  head describes (damped momentum; residual models only), so the head is the innovation.
- ``sign_invariant``: what conditions the core (a recurrent state, a context encoder) sees magnitudes
  only, so the direction of motion reaches the forecast through momentum alone; a directional drift
  learned from the training speakers cannot.

Two more biases live elsewhere and apply to every model already: reflection augmentation
(``data.augment=("reflect",)``, :mod:`kpflow.data.windows`) and the causal scaler
(:class:`~kpflow.forecast.base.Forecaster`).

:data:`SHARED` turns every bias on; :data:`PLAIN` is the papers' layer (the frame and its step in,
a residual step out). A model subclasses :class:`IOForecastModule`, which gives it the ``io`` field
and the momentum parameter; a model built without ``io`` gets its class's ``legacy_io``, the layer it
had before this one existed, so configs and checkpoints written then build the same model.

Shapes: frames and heads ``[.., D]`` in scaled units (:class:`~kpflow.keypoints.CausalScaler`); a
window's step scale ``scale [B, D]``.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from kpflow.forecast.base import ForecastModule, bound_forecast_frame

# Increments of the keypoint series have positive lag-1 autocorrelation on every VoxCeleb speaker
# (0.13-0.67): the momentum starts there.
MOMENTUM_INIT = 0.3


@dataclasses.dataclass(frozen=True)
class IOLayer:
    """The shared input/output layer's settings (``config.model.io``); the defaults are :data:`SHARED`.

    Its methods are pure functions of frames; the learned momentum ``rho [D]`` (when ``momentum``)
    is a parameter of the model that uses the layer (:class:`IOForecastModule`) and is passed in.
    """

    residual: bool = True
    relative: bool = True
    adaptive_scale: float = 4.0
    momentum: bool = True
    sign_invariant: bool = True

    def __post_init__(self):
        for name in ("residual", "relative", "momentum", "sign_invariant"):
            if not isinstance(getattr(self, name), bool):  # a config's value: a ValueError like the others
                raise ValueError(f"model.io.{name} must be a boolean, got {getattr(self, name)!r}")  # noqa: TRY004
        scale = self.adaptive_scale
        if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale):
            raise ValueError(f"model.io.adaptive_scale must be a finite number (negative: off), got {scale!r}")
        object.__setattr__(self, "adaptive_scale", float(scale))

    @property
    def uses_momentum(self) -> bool:
        """Momentum acts on steps, so only a residual layer has it."""
        return self.momentum and self.residual

    # -- inputs ---------------------------------------------------------------------------------
    def window_scale(self, context: jnp.ndarray, step_scale: jnp.ndarray) -> jnp.ndarray:
        """``[B, D]`` step scale of each window from its observed frames ``context [B, N, D]`` and the
        dataset's ``step_scale [D]`` (:func:`context_step_scale`; the dataset's when not adaptive)."""
        return context_step_scale(context, step_scale, self.adaptive_scale)

    def features(self, frame, prev, anchor, scale, positions: bool = True) -> jnp.ndarray:
        """Signed inputs ``[.., 2D]`` of ``frame``: its position (relative to the window's first frame
        ``anchor`` and in ``scale`` units, or the frame itself) and its step from ``prev`` in ``scale``
        units; ``positions=False``: the step alone ``[.., D]``. Causal: frame t's use frames <= t."""
        step = (frame - prev) / scale
        if not positions:
            return step
        position = (frame - anchor) / scale if self.relative else frame
        return jnp.concatenate([position, step], -1)

    def condition(self, features: jnp.ndarray) -> jnp.ndarray:
        """What the core's conditioning sees of ``features``: their magnitudes when sign-invariant."""
        return jnp.abs(features) if self.sign_invariant else features

    def frame_inputs(self, frame, prev, anchor, scale) -> jnp.ndarray:
        """:meth:`features` as the conditioning sees them (:meth:`condition`): one frame fed back."""
        return self.condition(self.features(frame, prev, anchor, scale))

    def series_inputs(self, x: jnp.ndarray, scale: jnp.ndarray) -> jnp.ndarray:
        """:meth:`frame_inputs` of every frame of ``x [B, T, D]`` -> ``[B, T, 2D]``, relative to ``x``'s
        first frame; the first frame's step is zero."""
        prev = jnp.concatenate([x[:, :1], x[:, :-1]], axis=1)
        return self.frame_inputs(x, prev, x[:, :1], scale[:, None])

    @staticmethod
    def series_steps(x: jnp.ndarray, scale: jnp.ndarray) -> jnp.ndarray:
        """Steps into every frame of ``x [B, T, D]`` in ``scale [B, D]`` units ``[B, T, D]``; the first is zero."""
        return jnp.diff(x, axis=1, prepend=x[:, :1]) / scale[:, None]

    @staticmethod
    def last_step(context: jnp.ndarray, scale: jnp.ndarray) -> jnp.ndarray:
        """The step into the last observed frame ``[B, D]`` (zero for a one-frame context)."""
        if context.shape[1] < 2:
            return jnp.zeros_like(context[:, -1])
        return (context[:, -1] - context[:, -2]) / scale

    # -- outputs --------------------------------------------------------------------------------
    def head_to_frame(self, prev, head, scale, shift=None) -> jnp.ndarray:
        """The frame after ``prev`` that the core's ``head`` describes: ``prev + (head + shift) * scale``
        (residual; ``shift``: momentum's ``rho * last_step``, or None) or the head itself."""
        if not self.residual:
            return head
        return prev + (head if shift is None else head + shift) * scale

    def frame_to_head(self, prev, frame, scale, shift=None) -> jnp.ndarray:
        """Inverse of :meth:`head_to_frame`: the head that reproduces ``frame`` (a training target)."""
        if not self.residual:
            return frame
        step = (frame - prev) / scale
        return step if shift is None else step - shift

    def heads_to_frames(self, context, heads, scale, rho=None, bound: float | None = None) -> jnp.ndarray:
        """Integrate heads ``[B, M, D]`` from the last frame of ``context [B, N, D]`` -> frames ``[B, M, D]``.

        Frame t is :meth:`head_to_frame` of frame t-1 with momentum ``rho [D]`` (None: none) times the
        step into frame t-1, clipped to the training region (:func:`bound_forecast_frame`, ``bound``
        standard deviations or the last observed frame's distance; None: unclipped). With zero heads
        the frames follow the damped momentum path, hold-last without momentum.
        """
        last = context[:, -1]

        def step(carry, head):
            prev, last_step = carry
            shift = None if rho is None else rho * last_step
            frame = bound_forecast_frame(self.head_to_frame(prev, head, scale, shift), last, bound)
            return (frame, (frame - prev) / scale), frame

        _, frames = jax.lax.scan(step, (last, self.last_step(context, scale)), jnp.swapaxes(heads, 0, 1))
        return jnp.swapaxes(frames, 0, 1)

    def frames_to_heads(self, x, start: int, scale, rho=None) -> jnp.ndarray:
        """Inverse of :meth:`heads_to_frames` without the bound: the heads ``[B, T-start, D]`` that
        reproduce frames ``start..T-1`` of ``x [B, T, D]`` from the true frames before each, with
        momentum ``rho [D]`` (a residual layer's; None: none). The training targets."""
        heads = self.frame_to_head(x[:, start - 1 : -1], x[:, start:], scale[:, None])
        if rho is None:
            return heads
        # With momentum (a residual layer) the heads so far are the steps: each frame's last step is
        # the one into its predecessor (before the first: the step into frame start-1, zero at 1).
        last_steps = jnp.concatenate([self.last_step(x[:, :start], scale)[:, None], heads[:, :-1]], axis=1)
        return heads - rho * last_steps


SHARED = IOLayer()
PLAIN = IOLayer(relative=False, adaptive_scale=-1.0, momentum=False, sign_invariant=False)
PRESETS = {"shared": SHARED, "plain": PLAIN}
# Flat model fields of configs written before the ``io`` block (the VRNN's and GRU-NF's four, the
# other models' ``residual``): read as the ``io`` fields of the same names.
LEGACY_FIELDS = ("residual", "adaptive_scale", "momentum", "sign_invariant")


def resolve(value: Any, default: IOLayer) -> IOLayer:
    """An :class:`IOLayer` from a model's ``io`` field: None (``default``), a layer, a preset name of
    :data:`PRESETS`, or a mapping of its fields (a config's ``model.io``; absent fields take the
    :data:`SHARED` defaults). One-line ValueError for an unknown preset or field."""
    if value is None:
        return default
    if isinstance(value, IOLayer):
        return value
    if isinstance(value, str):
        if value not in PRESETS:
            raise ValueError(f"model.io: unknown preset {value!r}; choose one of: {', '.join(PRESETS)}")
        return PRESETS[value]
    if not hasattr(value, "keys"):  # a ConfigDict is not a Mapping, but has keys() and []
        raise ValueError(f"model.io must be a preset name ({', '.join(PRESETS)}) or a block of fields, got {value!r}")
    names, given = [f.name for f in dataclasses.fields(IOLayer)], list(value.keys())
    unknown = sorted(set(given) - set(names))
    if unknown:
        raise ValueError(f"model.io: unknown field(s) {unknown}; it takes: {names}")
    return IOLayer(**{k: value[k] for k in given})


def fold_legacy_fields(hparams: dict, default: IOLayer) -> dict:
    """``hparams`` with the flat :data:`LEGACY_FIELDS` of an older config moved into ``io`` (over
    ``default``, the model's ``legacy_io``). One-line ValueError when a config gives both."""
    legacy = {k: hparams[k] for k in LEGACY_FIELDS if k in hparams}
    if not legacy:
        return hparams
    if hparams.get("io") is not None:
        raise ValueError(f"model: {sorted(legacy)} belong in model.io; give them there only")
    rest = {k: v for k, v in hparams.items() if k not in legacy}
    return {**rest, "io": dataclasses.replace(default, **legacy)}


class IOForecastModule(ForecastModule):
    """A forecaster module whose inputs and outputs go through the shared layer.

    Attributes (besides dim, num_observed, horizon):
      io: the :class:`IOLayer` (or a preset name, or a mapping of its fields; resolved at
        construction); None: the class's ``legacy_io``.
      mirror_samples: the sampler's antithetic pairs, for every model alike: draw half of the
        samples and add their mirror images through the damped momentum path (hold-last without
        momentum; :meth:`damped_momentum_path`), so the samples' mean is that path exactly (while
        ``frame_bound`` clips no value), whatever drift the learned dynamics add, and the law of
        the deviations from it is symmetric. Half the rollouts. False: the model's own draws.

    A subclass calls :meth:`setup_momentum` in its ``setup``; the parameter is named ``momentum``
    (``rho [D]``), at the top of the model's parameters.
    """

    io: IOLayer | None = None
    mirror_samples: bool = False

    # The layer a model built without ``io`` gets: the one it had before the shared layer existed.
    legacy_io = PLAIN

    def __post_init__(self):
        object.__setattr__(self, "io", resolve(self.io, type(self).legacy_io))
        super().__post_init__()

    def setup_momentum(self) -> None:
        """Declare the damped momentum ``rho [D]`` (from ``setup``), when the layer has momentum."""
        if self.io.uses_momentum:
            self.rho = self.param("momentum", nn.initializers.constant(MOMENTUM_INIT), (self.dim,))

    def momentum_coefficients(self) -> jnp.ndarray | None:
        """``rho [D]``, or None when the layer has no momentum."""
        return self.rho if self.io.uses_momentum else None

    def momentum_shift(self, last_step: jnp.ndarray) -> jnp.ndarray | None:
        """Momentum's share ``rho * last_step`` of the next step (None without momentum)."""
        return self.rho * last_step if self.io.uses_momentum else None

    def damped_momentum_path(self, last, last_step, scale, horizon: int) -> jnp.ndarray:
        """``[B, M, D]``: from the last observed frame ``last [B, D]``, steps ``rho^k`` times its last
        step ``last_step [B, D]`` (in ``scale [B, D]`` units), k = 1..M: the forecast of a zero head
        (:meth:`IOLayer.heads_to_frames` unbounded); hold-last without momentum. The centre of
        ``mirror_samples``."""
        if not self.io.uses_momentum:
            return jnp.broadcast_to(last[:, None], (last.shape[0], horizon, last.shape[-1]))
        powers = jnp.cumprod(jnp.broadcast_to(self.rho, (horizon, last.shape[-1])), axis=0)  # rho^k [M, D]
        return last[:, None] + jnp.cumsum(powers * last_step[:, None], axis=1) * scale[:, None]

    def context_mirror_center(self, context, horizon: int, step_scale) -> jnp.ndarray:
        """:meth:`damped_momentum_path` from ``context [B, N, D]`` (the mirror centre of a model that
        samples in one phase)."""
        scale = self.io.window_scale(context, step_scale)
        return self.damped_momentum_path(context[:, -1], self.io.last_step(context, scale), scale, horizon)


def context_step_scale(context: jnp.ndarray, step_scale: jnp.ndarray, prior_steps: float) -> jnp.ndarray:
    """Per-window step scale ``[B, D]`` from the observed frames ``context [B, N, D]`` (scaled units).

    The RMS of the context's N-1 steps, shrunk toward the dataset's ``step_scale [D]`` with
    ``prior_steps`` pseudo-steps: ``sqrt((p s^2 + sum_t dx_t^2) / (p + N - 1))``. It uses observed
    frames only, so it is causal; dividing a window's steps by it (as reversible instance
    normalisation does) makes a model indifferent to how much a particular clip moves, which the
    papers' per-clip min-max units reward, and lets it follow changing volatility. A negative
    ``prior_steps`` turns the adaptation off: every window gets the dataset's ``step_scale``.
    """
    steps = jnp.diff(context, axis=1)
    p = jnp.maximum(prior_steps, 0.0)
    num = p * step_scale**2 + jnp.sum(steps**2, axis=1)
    # The floor keeps a dimension that did not move (with prior_steps=0) from dividing by zero.
    adaptive = jnp.maximum(jnp.sqrt(num / (p + steps.shape[1])), 1e-3 * step_scale)
    return jnp.where(prior_steps < 0, jnp.broadcast_to(step_scale, adaptive.shape), adaptive)
