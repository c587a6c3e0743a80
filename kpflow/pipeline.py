"""The paper's system end to end: streaming schedule, forecasting, keypoint normalisation, rendering.

A sender transmits the keypoints of ``N`` observed frames, the receiver forecasts the next ``M``
and FOMM renders every frame from one source image. Over a clip of ``T`` frames this repeats in
blocks of ``N + M`` frames (:class:`Schedule`); the last, partial block keeps its observed frames
and forecasts only the frames that remain.

::

    series [T, D] --Schedule--> contexts [B, N, D] --predict--> [S, B, M, D] --assemble--> [S, T, D]
    [S, T, D] --relative_motion (transfer mode)--> kp_driving --render_frames--> frames [S, T, H, W, 3]

The forecaster sees only transmitted frames: a block's context is that block's observed frames,
nothing later (``tests/test_pipeline.py`` checks that corrupting every unobserved frame changes
nothing). Modes:

- ``reconstruction``: the source is the first frame of the clip being driven; FOMM renders with the
  absolute driving keypoints (FOMM's reconstruction protocol).
- ``transfer``: the source comes from another clip; driving keypoints are normalised with FOMM's
  relative motion (``normalize_kp`` in the original ``animate.py``, :func:`relative_motion`).

Rendering (:func:`render_frames`) runs ``vmap`` of the generator over frames under ``jit``, in
fixed-size chunks (memory bounded: ``chunk_size`` frames are live on the device at a time, and
every chunk has the same shape, so it compiles once). Frames shared by every sample (the observed
ones) are rendered once and broadcast.

``kpflow.forecast`` and ``kpflow.fomm`` do not know each other; this module joins them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from kpflow.fomm.model import frame_shape_of
from kpflow.keypoints import Keypoints

MODES = ("reconstruction", "transfer")

# ``predict(context [B, N, D], horizon M, rng, num_samples S) -> [S, B, M, D]`` in raw keypoint units.
Predictor = Callable[[jnp.ndarray, int, jax.Array, int], jnp.ndarray]


# -- schedule ------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Block:
    """One ``N + M`` block of the schedule: frame indices ``[start, start + num_observed)`` are
    transmitted, ``[start + num_observed, stop)`` are forecast (``stop - start - num_observed``
    frames, fewer than ``M`` only in the last block)."""

    start: int
    num_observed: int
    stop: int

    @property
    def observed(self) -> range:
        return range(self.start, self.start + self.num_observed)

    @property
    def forecast(self) -> range:
        return range(self.start + self.num_observed, self.stop)


@dataclasses.dataclass(frozen=True)
class Schedule:
    """The streaming schedule: ``num_observed`` (N) transmitted frames, then ``horizon`` (M) forecast
    frames, repeated. ``Schedule.parse("12-12")`` reads the papers' ``N-M`` notation."""

    num_observed: int
    horizon: int

    def __post_init__(self):
        if int(self.num_observed) < 1 or int(self.horizon) < 0:
            raise ValueError(
                f"a schedule needs N >= 1 observed and M >= 0 forecast frames; got N={self.num_observed}, M={self.horizon}"
            )

    @classmethod
    def parse(cls, text: str) -> Schedule:
        try:
            n, m = (int(p) for p in str(text).split("-"))
        except ValueError:
            raise ValueError(f"horizon must look like N-M (observed-forecast frames, e.g. 12-12); got {text!r}") from None
        return cls(n, m)

    def __str__(self) -> str:
        return f"{self.num_observed}-{self.horizon}"

    @property
    def period(self) -> int:
        return self.num_observed + self.horizon

    def blocks(self, num_frames: int) -> list[Block]:
        """The blocks covering ``num_frames`` frames; a last block too short to forecast anything is
        all observed (``num_observed`` then counts only the frames that exist)."""
        if num_frames < 1:
            raise ValueError(f"a clip needs at least one frame; got {num_frames}")
        out = []
        for start in range(0, num_frames, self.period):
            stop = min(start + self.period, num_frames)
            out.append(Block(start, min(self.num_observed, stop - start), stop))
        return out

    def observed_mask(self, num_frames: int) -> np.ndarray:
        """``[T]`` bool: True where the frame's keypoints are transmitted."""
        mask = np.zeros(num_frames, bool)
        for b in self.blocks(num_frames):
            mask[b.observed.start : b.observed.stop] = True
        return mask

    def check_clip(self, num_frames: int, name: str = "clip") -> None:
        """Raise a one-line ValueError unless the clip holds at least one full ``N + M`` block."""
        if num_frames < self.period:
            raise ValueError(
                f"{name} has {num_frames} frames; the {self} schedule needs at least {self.period} "
                f"(N={self.num_observed} observed + M={self.horizon} forecast): use a shorter horizon or a longer clip"
            )

    def transmitted_fraction(self, num_frames: int) -> float:
        """Share of frames whose keypoints go on the wire (the bandwidth factor against sending all)."""
        return float(self.observed_mask(num_frames).mean())


# -- forecasting -----------------------------------------------------------------------------------


def forecaster_predictor(forecaster, variables) -> Predictor:
    """A :data:`Predictor` from a ``kpflow.forecast.Forecaster`` and its variables (jitted per shape)."""
    sample = jax.jit(
        lambda ctx, rng, horizon, num_samples: forecaster.sample(variables, ctx, horizon, rng, num_samples),
        static_argnums=(2, 3),
    )
    return lambda context, horizon, rng, num_samples: sample(jnp.asarray(context, jnp.float32), rng, horizon, num_samples)


def hold_last_predictor(context, horizon: int, rng, num_samples: int) -> jnp.ndarray:
    """The hold-last baseline as a :data:`Predictor`: every sample repeats the last observed frame."""
    del rng
    context = jnp.asarray(context)
    out = jnp.repeat(context[:, -1:], horizon, axis=1)
    return jnp.broadcast_to(out, (num_samples,) + out.shape)


def forecast_series(predict: Predictor, series, schedule: Schedule, rng: jax.Array, num_samples: int = 1,
                    horizon: int | None = None) -> np.ndarray:
    """The receiver's keypoint series: transmitted frames as sent, the rest forecast.

    Args:
      predict: a :data:`Predictor`; it is called once, with the contexts of every block that has
        frames to forecast stacked on the batch axis (``[B, N, D]``), each context being that
        block's transmitted frames and nothing else.
      series: ``[T, D]`` keypoint vectors of the clip; only the transmitted frames are read.
      schedule: the N-M schedule.
      rng: key for the samples.
      num_samples: S.
      horizon: how many frames to ask the predictor for (default ``schedule.horizon``; fixed-horizon
        forecasters are always asked for their trained M, and a last partial block is truncated).

    Returns:
      ``[S, T, D]`` float32: equal to ``series`` on transmitted frames for every sample.
    """
    series = np.asarray(series, np.float32)
    if series.ndim != 2:
        raise ValueError(f"series must be [T, D] keypoint vectors; got shape {series.shape}")
    t, d = series.shape
    out = np.broadcast_to(series, (num_samples, t, d)).copy()
    blocks = [b for b in schedule.blocks(t) if len(b.forecast)]
    if not blocks:
        return out
    contexts = np.stack([series[b.observed.start : b.observed.stop] for b in blocks])  # [B, N, D]
    m = schedule.horizon if horizon is None else int(horizon)
    pred = np.asarray(predict(jnp.asarray(contexts), m, rng, num_samples), np.float32)
    if pred.shape != (num_samples, len(blocks), m, d):
        raise ValueError(
            f"the predictor returned shape {pred.shape}; expected [S={num_samples}, B={len(blocks)}, M={m}, D={d}]"
        )
    # Only forecast frames are written: transmitted ones stay what the receiver was sent.
    for i, b in enumerate(blocks):
        out[:, b.forecast.start : b.forecast.stop] = pred[:, i, : len(b.forecast)]
    return out


# -- transfer-mode normalisation -----------------------------------------------------------------


def convex_hull_area(points) -> float:
    """Area of the convex hull of ``points [K, 2]`` (Andrew's monotone chain, then the shoelace formula)."""
    pts = sorted(map(tuple, np.asarray(points, np.float64).tolist()))
    if len(pts) < 3:
        return 0.0

    def cross(o, a, b):
        return (a[0] - o[0]) * (b[1] - o[1]) - (a[1] - o[1]) * (b[0] - o[0])

    def half(points_):
        hull = []
        for p in points_:
            while len(hull) >= 2 and cross(hull[-2], hull[-1], p) <= 0:
                hull.pop()
            hull.append(p)
        return hull

    lower, upper = half(pts), half(reversed(pts))
    hull = np.asarray(lower[:-1] + upper[:-1])
    if len(hull) < 3:
        return 0.0
    x, y = hull[:, 0], hull[:, 1]
    return float(0.5 * abs(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))))


def movement_scale(kp_source_value, kp_initial_value) -> float:
    """FOMM's ``adapt_movement_scale``: sqrt(hull area of the source keypoints / that of the driving
    clip's first frame), so a small face in the source moves proportionally less."""
    src, drv = convex_hull_area(kp_source_value), convex_hull_area(kp_initial_value)
    if drv <= 0:
        raise ValueError("the driving clip's first-frame keypoints are collinear (zero hull area): cannot adapt the movement scale")
    return float(np.sqrt(src) / np.sqrt(drv))


def relative_motion(kp_source: Keypoints, kp_driving: Keypoints, kp_initial: Keypoints, *,
                    relative_movement: bool = True, relative_jacobian: bool = True,
                    scale: float = 1.0) -> Keypoints:
    """FOMM's transfer-mode normalisation (``normalize_kp``) of driving keypoints.

    ``kp_source``: ``value [K, 2]``, ``jacobian [K, 2, 2]`` of the source image;
    ``kp_driving``: ``[..., K, 2]`` / ``[..., K, 2, 2]`` of the driving frames;
    ``kp_initial``: ``[K, 2]`` / ``[K, 2, 2]`` of the driving clip's first frame.

    - relative movement: ``value = source + scale * (driving - initial)``;
    - relative Jacobian (only with relative movement, as in FOMM):
      ``jacobian = driving @ inv(initial) @ source``;
    - ``scale`` is 1, or :func:`movement_scale` for FOMM's ``adapt_movement_scale``.

    With ``relative_movement=False`` the driving keypoints are returned unchanged.
    """
    if not relative_movement:
        return kp_driving
    value = kp_source.value + scale * (kp_driving.value - kp_initial.value)
    jacobian = kp_driving.jacobian
    if relative_jacobian:
        jacobian = jnp.matmul(jnp.matmul(kp_driving.jacobian, jnp.linalg.inv(kp_initial.jacobian)), kp_source.jacobian)
    return Keypoints(value=value, jacobian=jacobian)


# -- rendering -----------------------------------------------------------------------------------


def _chunks(total: int, size: int):
    for start in range(0, total, size):
        yield start, min(start + size, total)


def _padded(x: np.ndarray, start: int, stop: int, size: int) -> np.ndarray:
    """``x[start:stop]`` padded to ``size`` rows by repeating its last row (one compiled chunk shape)."""
    rows = x[start:stop]
    return rows if len(rows) == size else np.concatenate([rows, np.repeat(rows[-1:], size - len(rows), axis=0)])


class Renderer:
    """Renders frames from one source image with a loaded ``kpflow.fomm.FOMM``.

    ``render(source [H, W, 3], kp_source (value [K, 2], jacobian [K, 2, 2]), kp_driving [F, ...])
    -> frames [F, H, W, 3]`` runs the generator ``vmap``-ped over frames under ``jit``,
    ``chunk_size`` frames at a time (the last chunk padded, so one compiled program serves all).
    """

    def __init__(self, fomm, chunk_size: int = 16):
        if int(chunk_size) < 1:
            raise ValueError(f"chunk_size must be >= 1; got {chunk_size}")
        self.fomm = fomm
        self.chunk_size = int(chunk_size)
        generator = fomm.networks.generator

        def one(variables, source, kp_source, kp_driving):
            # source [H, W, 3], kp_* unbatched -> frame [H, W, 3]
            add = lambda x: x[None]
            out = generator.apply(variables, source[None], jax.tree.map(add, kp_source), jax.tree.map(add, kp_driving))
            return out["prediction"][0]

        # Public so that benchmarks can lower and compile exactly the program render() runs:
        # ``(generator variables, source [H, W, 3], kp_source, kp_driving [chunk_size, ...]) -> [chunk_size, H, W, 3]``.
        self.render_chunk = jax.jit(jax.vmap(one, in_axes=(None, None, None, 0)))

    def render(self, source, kp_source: Keypoints, kp_driving: Keypoints, progress: Callable[[int], Any] | None = None) -> np.ndarray:
        """``kp_driving`` ``value [F, K, 2]`` -> ``frames [F, H, W, 3]`` float32 (host memory)."""
        source = jnp.asarray(source, jnp.float32)
        value = np.asarray(kp_driving.value, np.float32)
        jac = np.asarray(kp_driving.jacobian, np.float32)
        total = value.shape[0]
        frames = np.empty((total,) + tuple(source.shape), np.float32)
        c = self.chunk_size
        variables = self.fomm.variables["generator"]
        for start, stop in _chunks(total, c):
            n = stop - start
            chunk = Keypoints(jnp.asarray(_padded(value, start, stop, c)), jnp.asarray(_padded(jac, start, stop, c)))
            out = self.render_chunk(variables, source, kp_source, chunk)
            frames[start:stop] = np.asarray(out[:n])
            if progress is not None:
                progress(n)
        return frames


def render_samples(renderer: Renderer, source, kp_source: Keypoints, kp_driving: Keypoints,
                   shared: np.ndarray | None = None, progress: Callable[[int], Any] | None = None,
                   shared_frames: np.ndarray | None = None) -> np.ndarray:
    """Render ``S`` sampled driving series: ``kp_driving`` ``value [S, T, K, 2]`` -> ``[S, T, H, W, 3]``.

    ``shared [T]`` (bool) marks frames whose keypoints are the same in every sample (the
    transmitted ones): they are rendered once and copied into every sample. All other frames of
    all samples are flattened into one stream and rendered in the renderer's chunks.
    ``shared_frames [n_shared, H, W, 3]``, when given, are those frames already rendered (e.g. by
    FOMM without forecasting, whose keypoints they share): they are used as they are.
    """
    value = np.asarray(kp_driving.value, np.float32)
    jac = np.asarray(kp_driving.jacobian, np.float32)
    s, t = value.shape[:2]
    shared = np.zeros(t, bool) if shared is None else np.asarray(shared, bool)
    if shared.shape != (t,):
        raise ValueError(f"shared must be a [T={t}] mask; got shape {shared.shape}")
    h, w = np.shape(source)[:2]
    out = np.empty((s, t, h, w, 3), np.float32)
    if shared.any():
        if shared_frames is None:
            shared_frames = renderer.render(source, kp_source, Keypoints(value[0, shared], jac[0, shared]), progress)
        elif np.shape(shared_frames) != (int(shared.sum()), h, w, 3):
            raise ValueError(f"shared_frames must be [{int(shared.sum())}, {h}, {w}, 3]; got {np.shape(shared_frames)}")
        out[:, shared] = np.asarray(shared_frames)[None]
    own = ~shared
    if own.any():
        flat = Keypoints(value[:, own].reshape((-1,) + value.shape[2:]), jac[:, own].reshape((-1,) + jac.shape[2:]))
        frames = renderer.render(source, kp_source, flat, progress)
        out[:, own] = frames.reshape((s, int(own.sum())) + frames.shape[1:])
    return out


# -- the system ----------------------------------------------------------------------------------


@dataclasses.dataclass
class PipelineOutput:
    """What :meth:`MotionTransfer.run` produces for one clip.

    ``frames [S, T, H, W, 3]`` rendered video per sample; ``keypoints [S, T, D]`` the receiver's
    series (transmitted + forecast, before transfer normalisation); ``observed [T]`` bool mask of
    transmitted frames; ``kp_source`` the source image's keypoints; ``kp_driving`` (``value
    [S, T, K, 2]``) the keypoints FOMM rendered with (after transfer normalisation).
    """

    frames: np.ndarray
    keypoints: np.ndarray
    observed: np.ndarray
    kp_source: Keypoints
    kp_driving: Keypoints


class MotionTransfer:
    """FOMM + a forecaster in the streaming schedule.

    Args:
      fomm: a ``kpflow.fomm.FOMM`` (``kpflow.fomm.load(DIR)``).
      predict: a :data:`Predictor` (:func:`forecaster_predictor`, :func:`hold_last_predictor`), or
        None for FOMM without forecasting (every frame transmitted).
      schedule: the N-M :class:`Schedule` (ignored when ``predict`` is None).
      mode: ``"reconstruction"`` or ``"transfer"``.
      relative_movement, relative_jacobian, adapt_movement_scale: FOMM's transfer options (transfer mode only).
      chunk_size: frames rendered per compiled call (memory bound).
      forecast_horizon: frames asked of the predictor per block (default: the schedule's M).
      renderer: a :class:`Renderer` to share (its compiled program) between several pipelines.
    """

    def __init__(self, fomm, predict: Predictor | None, schedule: Schedule, mode: str = "reconstruction", *,
                 relative_movement: bool = True, relative_jacobian: bool = True, adapt_movement_scale: bool = False,
                 chunk_size: int = 16, forecast_horizon: int | None = None, renderer: Renderer | None = None):
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}; got {mode!r}")
        self.fomm = fomm
        self.predict = predict
        self.schedule = schedule
        self.mode = mode
        self.relative_movement = relative_movement
        self.relative_jacobian = relative_jacobian
        self.adapt_movement_scale = adapt_movement_scale
        self.forecast_horizon = forecast_horizon
        self.renderer = renderer if renderer is not None else Renderer(fomm, chunk_size)

    def _check(self, source, series) -> tuple[np.ndarray, np.ndarray]:
        source = np.asarray(source, np.float32)
        series = np.asarray(series, np.float32)
        if source.ndim != 3 or source.shape[-1] != 3:
            raise ValueError(f"source must be one RGB image [H, W, 3]; got shape {source.shape}")
        expected = frame_shape_of(self.fomm.config)
        if source.shape[:2] != expected:
            raise ValueError(
                f"the source image is {source.shape[0]}x{source.shape[1]} but this FOMM was built for "
                f"{expected[0]}x{expected[1]} frames: resize it (kpflow.data.videos.read_video(path, frame_shape))"
            )
        d = 6 * self.fomm.num_kp
        if series.ndim != 2 or series.shape[1] != d:
            raise ValueError(f"driving keypoints must be [T, {d}] (6 numbers per keypoint, K={self.fomm.num_kp}); got {series.shape}")
        return source, series

    def driving_keypoints(self, series, rng: jax.Array, num_samples: int = 1) -> tuple[np.ndarray, np.ndarray]:
        """-> ``(keypoints [S, T, D], observed [T])``: the receiver's series under the schedule."""
        series = np.asarray(series, np.float32)
        t = series.shape[0]
        if self.predict is None:
            return np.broadcast_to(series, (num_samples,) + series.shape).copy(), np.ones(t, bool)
        out = forecast_series(self.predict, series, self.schedule, rng, num_samples, self.forecast_horizon)
        return out, self.schedule.observed_mask(t)

    def normalise(self, keypoints: np.ndarray, kp_source: Keypoints, kp_initial: Keypoints) -> Keypoints:
        """``[S, T, D]`` -> the keypoints FOMM renders with (transfer-mode normalisation applied)."""
        kp = Keypoints.from_vector(jnp.asarray(keypoints))
        if self.mode == "reconstruction":
            return kp
        scale = movement_scale(np.asarray(kp_source.value), np.asarray(kp_initial.value)) if self.adapt_movement_scale else 1.0
        return relative_motion(kp_source, kp, kp_initial, relative_movement=self.relative_movement,
                               relative_jacobian=self.relative_jacobian, scale=scale)

    def run(self, source, series, rng: jax.Array, num_samples: int = 1, progress: Callable[[int], Any] | None = None, *,
            kp_initial=None, observed_frames: np.ndarray | None = None) -> PipelineOutput:
        """Render a clip.

        Args:
          source: ``[H, W, 3]`` float32 in [0, 1]; in reconstruction mode, the clip's first frame.
          series: ``[T, D]`` driving keypoint vectors (extracted, or decoded from a stream); only the
            transmitted frames are used when forecasting.
          rng: key for the forecast samples.
          num_samples: S futures per forecast block.
          progress: optional callback receiving the number of frames rendered by each chunk.
          kp_initial: ``[D]`` the driving clip's first-frame keypoints for transfer normalisation
            (default ``series[0]``; pass it when ``series`` is a window from the middle of a clip).
          observed_frames: ``[n_observed, H, W, 3]`` the transmitted frames already rendered
            (FOMM without forecasting), reused instead of rendering them again.
        """
        source, series = self._check(source, series)
        kp_source = jax.tree.map(lambda x: x[0], self.fomm.detect(source[None]))
        keypoints, observed = self.driving_keypoints(series, rng, num_samples)
        initial = series[0] if kp_initial is None else np.asarray(kp_initial, np.float32)
        kp_driving = self.normalise(keypoints, kp_source, Keypoints.from_vector(jnp.asarray(initial)))
        frames = render_samples(self.renderer, source, kp_source, kp_driving, shared=observed, progress=progress,
                                shared_frames=observed_frames)
        return PipelineOutput(frames=frames, keypoints=keypoints, observed=observed, kp_source=kp_source,
                              kp_driving=kp_driving)


def frames_needed(schedule: Schedule, num_frames: int, num_samples: int) -> int:
    """How many frames :meth:`MotionTransfer.run` renders for a clip (for progress bars)."""
    observed = int(schedule.observed_mask(num_frames).sum())
    return observed + num_samples * (num_frames - observed)


__all__: Sequence[str] = (
    "MODES",
    "Block",
    "MotionTransfer",
    "PipelineOutput",
    "Predictor",
    "Renderer",
    "Schedule",
    "convex_hull_area",
    "forecast_series",
    "forecaster_predictor",
    "frames_needed",
    "hold_last_predictor",
    "movement_scale",
    "relative_motion",
    "render_samples",
)
