"""Keypoints: the FOMM motion representation and its flat time-series form.

A frame's motion is K keypoints, each a location ``value [K, 2]`` (x then y, FOMM's normalised
image coordinates in [-1, 1]) and a local affine ``jacobian [K, 2, 2]``. Forecasters see the flat
vector ``[.., 6K]`` with per-keypoint layout ``[x, y, j00, j01, j10, j11]``.

Two scalers:
- :class:`MinMaxScaler`: the papers' per-video min-max scaling of each dimension. It uses frames
  after the window being forecast, so it is for *reporting* errors in the papers' units only.
- :class:`CausalScaler`: dataset-level statistics fitted on a training split, for *model inputs*.
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.struct
import jax.numpy as jnp
import numpy as np

FEATURES_PER_KEYPOINT = 6


@flax.struct.dataclass
class Keypoints:
    """``value [.., K, 2]`` and ``jacobian [.., K, 2, 2]``; a pytree, so it jits and vmaps."""

    value: jnp.ndarray
    jacobian: jnp.ndarray

    @property
    def num_keypoints(self) -> int:
        return self.value.shape[-2]

    def to_vector(self) -> jnp.ndarray:
        """``[.., K, 2]`` + ``[.., K, 2, 2]`` -> ``[.., 6K]`` with layout ``[x, y, j00, j01, j10, j11]``."""
        xp = jnp if not isinstance(self.value, np.ndarray) else np
        jac = self.jacobian.reshape(self.jacobian.shape[:-2] + (4,))
        per_kp = xp.concatenate([self.value, jac], axis=-1)  # [.., K, 6]
        return per_kp.reshape(per_kp.shape[:-2] + (-1,))

    @classmethod
    def from_vector(cls, vector) -> Keypoints:
        """``[.., 6K]`` -> Keypoints. Raises ValueError if the last dimension is not a multiple of 6."""
        d = vector.shape[-1]
        if d % FEATURES_PER_KEYPOINT:
            raise ValueError(
                f"keypoint vectors must have 6K entries per frame ([x, y, j00, j01, j10, j11] per "
                f"keypoint); got last dimension {d}"
            )
        per_kp = vector.reshape(vector.shape[:-1] + (d // FEATURES_PER_KEYPOINT, FEATURES_PER_KEYPOINT))
        value = per_kp[..., :2]
        jacobian = per_kp[..., 2:].reshape(per_kp.shape[:-1] + (2, 2))
        return cls(value=value, jacobian=jacobian)


def keypoints_to_vector(value, jacobian) -> np.ndarray:
    """NumPy convenience: ``value [T, K, 2]``, ``jacobian [T, K, 2, 2]`` -> ``[T, 6K]``."""
    return np.asarray(Keypoints(np.asarray(value), np.asarray(jacobian)).to_vector())


def vector_to_keypoints(vector) -> tuple[np.ndarray, np.ndarray]:
    """NumPy convenience: ``[T, 6K]`` -> (``value [T, K, 2]``, ``jacobian [T, K, 2, 2]``)."""
    kp = Keypoints.from_vector(np.asarray(vector))
    return np.asarray(kp.value), np.asarray(kp.jacobian)


def check_series(series: np.ndarray, name: str = "series", dim: int | None = None) -> np.ndarray:
    """Validate a keypoint series ``[T, D]`` at a boundary; returns it as float32.

    Raises ValueError with a one-line message naming ``name`` for a wrong rank, a dimension that is
    not 6K (or not ``dim``), or non-finite values.
    """
    series = np.asarray(series)
    if series.ndim != 2:
        raise ValueError(f"{name}: expected a keypoint series [T, 6K], got shape {series.shape}")
    d = series.shape[-1]
    if d % FEATURES_PER_KEYPOINT or d == 0:
        raise ValueError(f"{name}: last dimension {d} is not 6K ([x, y, j00, j01, j10, j11] per keypoint)")
    if dim is not None and d != dim:
        raise ValueError(f"{name}: has {d} numbers per frame, the model expects {dim} ({dim // 6} keypoints)")
    bad = ~np.isfinite(series)
    if bad.any():
        t = int(np.argwhere(bad)[0][0])
        raise ValueError(f"{name}: contains NaN or inf (first at frame {t}); clean or drop the clip")
    return series.astype(np.float32, copy=False)


class MinMaxScaler:
    """The papers' per-video min-max scaling: ``(x - min) / (max - min)`` per dimension.

    Fit on the frames that define the units (the authors use the observed frames of all evaluation
    windows of a clip). Dimensions with zero range are left unscaled (range taken as 1).
    """

    def __init__(self, minimum: np.ndarray, maximum: np.ndarray):
        self.minimum = np.asarray(minimum, np.float64)
        self.maximum = np.asarray(maximum, np.float64)
        rng = self.maximum - self.minimum
        self.range = np.where(rng > 1e-12, rng, 1.0)

    @classmethod
    def fit(cls, frames: np.ndarray) -> MinMaxScaler:
        """``frames [T, D]`` (any leading dims are flattened)."""
        frames = np.asarray(frames).reshape(-1, np.shape(frames)[-1])
        if frames.shape[0] == 0:
            raise ValueError("MinMaxScaler.fit needs at least one frame")
        return cls(frames.min(axis=0), frames.max(axis=0))

    def transform(self, x):
        return (x - self.minimum) / self.range

    def inverse(self, z):
        return z * self.range + self.minimum

    def scale_error(self, err):
        """Express a difference (error) in these units: divide by the range."""
        return err / self.range


@flax.struct.dataclass
class CausalScaler:
    """Dataset-level standardisation for model inputs, fitted on a training split only.

    ``loc [D]`` and ``scale [D]`` are the mean and standard deviation of frames; ``step_scale [D]`` is
    the standard deviation of one-frame increments *in scaled units*, which residual models use as
    the natural size of a step. Being fixed statistics of other clips, it leaks nothing from a
    window's future. A pytree: it is stored in a model's variables and travels with checkpoints.
    """

    loc: jnp.ndarray
    scale: jnp.ndarray
    step_scale: jnp.ndarray

    @classmethod
    def fit(cls, series: Sequence[np.ndarray], min_scale: float = 1e-6) -> CausalScaler:
        """``series``: list of ``[T_i, D]`` arrays (the training split)."""
        series = [np.asarray(s, np.float64) for s in series if len(s) > 0]
        if not series:
            raise ValueError("CausalScaler.fit needs at least one non-empty series")
        frames = np.concatenate(series, axis=0)
        loc = frames.mean(axis=0)
        scale = np.maximum(frames.std(axis=0), min_scale)
        steps = [np.diff(s, axis=0) for s in series if len(s) > 1]
        if steps:
            steps = np.concatenate(steps, axis=0) / scale
            step_scale = np.maximum(np.sqrt((steps**2).mean(axis=0)), min_scale)
        else:
            step_scale = np.ones_like(loc)
        return cls(
            loc=jnp.asarray(loc, jnp.float32),
            scale=jnp.asarray(scale, jnp.float32),
            step_scale=jnp.asarray(step_scale, jnp.float32),
        )

    @classmethod
    def identity(cls, dim: int) -> CausalScaler:
        one = jnp.ones((dim,), jnp.float32)
        return cls(loc=jnp.zeros((dim,), jnp.float32), scale=one, step_scale=one)

    def transform(self, x):
        return (x - self.loc) / self.scale

    def inverse(self, z):
        return z * self.scale + self.loc

    def to_dict(self) -> dict:
        return {k: np.asarray(getattr(self, k)).tolist() for k in ("loc", "scale", "step_scale")}

    @classmethod
    def from_dict(cls, d: dict) -> CausalScaler:
        return cls(**{k: jnp.asarray(np.asarray(d[k], np.float32)) for k in ("loc", "scale", "step_scale")})
