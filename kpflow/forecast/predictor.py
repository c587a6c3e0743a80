"""A trained forecaster as the codec's predictor (:data:`kpflow.codec.FramePredictor`).

The codec's sender and receiver both run one deterministic predictor on the frames the receiver has
shown; the sender transmits only what the prediction gets wrong. :class:`ForecastPredictor` turns a
forecaster into such a predictor:

- **deterministic**: the forecaster's :meth:`~kpflow.forecast.base.Forecaster.point_forecast` (its
  path at zero noise: a decoder's mean, damped momentum, a flow's image of zero noise), first frame,
  from the last ``num_observed`` shown frames (the first one repeated while fewer exist);
- **fitted to what the receiver has**: the receiver's frames are sparse and quantised (constant
  between packets, then a jump), not the clean series the forecaster was trained on, and a model
  that extrapolates those jumps as motion costs bits. The predicted step is therefore shrunk,
  ``last + gain * (forecast - last)``, with ``gain`` chosen by :func:`fit_gain`: the codec is run on
  the fitting clips for each candidate gain, with the receiver's real history, and the gain that
  sends the fewest bytes at no worse keypoint error wins (0 is hold-last, so the fitted predictor
  never loses to hold-last on the fitting clips);
- **the same on different hardware**: a GPU sender and a CPU receiver compute forecasts that differ
  in the last bits. The predicted step is rounded to a ``grid`` (a fraction of the codec's
  quantisation step), so both ends almost always agree exactly; where a rounding boundary splits
  them, the two ends differ by one grid step until the next intra packet, which carries the frame
  itself and puts them back in step.
"""

from __future__ import annotations

import collections
import hashlib
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from kpflow import codec

# The predicted step is rounded to this share of the codec's quantisation step: fine enough that a
# forecast step (a few thousandths of a unit per frame) survives, coarse enough that float noise
# between two machines (about 1e-6) rarely crosses a rounding boundary.
GRID_FRACTION = 1 / 64
# Gains fitted by fit_gain: 0 is hold-last, 1 the forecaster's own step.
DEFAULT_GAINS = (0.0, 0.25, 0.5, 0.75, 1.0)
# A gain must not raise the keypoint error on the fitting clips by more than this share over the best
# error among the gains, so a cheaper but visibly worse predictor is not chosen.
GAIN_MAE_TOLERANCE = 0.02
# Forecasts kept by context (the sender's mirror and the receiver ask for the same ones).
CACHE_SIZE = 1 << 16


class ForecastPredictor:
    """``predict(history [t, D]) -> [D]`` from a trained forecaster; see the module docstring.

    Args:
      forecaster, variables: a trained :class:`~kpflow.forecast.base.Forecaster` and its variables
        (``kpflow.checkpoint.load_trained(...).forecaster`` / ``.variables``).
      step: the codec's quantisation step (a number or ``[D]``); the grid is ``step * grid_fraction``.
      gain: the share of the forecast step used (:func:`fit_gain` fits it).
      name: the model's name (``vrnn``), for reports.
    """

    def __init__(self, forecaster, variables, *, step: float | np.ndarray, gain: float = 1.0, name: str | None = None,
                 grid_fraction: float = GRID_FRACTION):
        if not 0.0 <= gain <= 1.0:
            raise ValueError(f"predictor gain must be in [0, 1] (0: hold-last, 1: the forecaster's step); got {gain}")
        step = np.broadcast_to(np.asarray(step, np.float64), (forecaster.dim,))
        if not np.all(step > 0) or not grid_fraction > 0:
            raise ValueError(f"predictor grid needs a positive codec step and fraction; got {step.min()} and {grid_fraction}")
        self.forecaster = forecaster
        self.variables = variables
        self.name = name or forecaster.name
        self.gain = float(gain)
        self.step = step
        self.grid = (step * grid_fraction).astype(np.float64)
        self.context = forecaster.num_observed
        self._forecast = jax.jit(lambda v, c: forecaster.point_forecast(v, c, 1)[:, 0])
        self._cache: collections.OrderedDict[bytes, np.ndarray] = collections.OrderedDict()

    def replace(self, *, gain: float | None = None, step: float | np.ndarray | None = None) -> ForecastPredictor:
        """The same forecaster (its compiled function and cached forecasts shared) with another gain or
        codec step."""
        other = object.__new__(ForecastPredictor)
        other.__dict__.update(self.__dict__)
        if gain is not None:
            if not 0.0 <= gain <= 1.0:
                raise ValueError(f"predictor gain must be in [0, 1] (0: hold-last, 1: the forecaster's step); got {gain}")
            other.gain = float(gain)
        if step is not None:
            fraction = self.grid / np.broadcast_to(np.asarray(self.step, np.float64), self.grid.shape)
            other.step = np.broadcast_to(np.asarray(step, np.float64), self.grid.shape)
            if not np.all(other.step > 0):
                raise ValueError(f"predictor grid needs a positive codec step; got {step}")
            other.grid = other.step * fraction
        return other

    @property
    def memory(self) -> int:
        """Frames of history the prediction reads: 1 at gain 0 (hold-last), else the context length."""
        return 1 if self.gain == 0.0 else self.context

    def window(self, history: np.ndarray) -> np.ndarray:
        """The forecaster's context ``[N, D]``: the last N frames, the first repeated while fewer exist."""
        h = np.asarray(history, np.float32)[-self.context :]
        if len(h) < self.context:
            h = np.concatenate([np.repeat(h[:1], self.context - len(h), axis=0), h])
        return h

    def forecast(self, history: np.ndarray) -> np.ndarray:
        """The forecaster's next frame ``[D]`` (float64) from ``history [t >= 1, D]``, unshrunk, unrounded."""
        ctx = self.window(history)
        key = ctx.tobytes()
        hit = self._cache.get(key)
        if hit is None:
            hit = np.asarray(self._forecast(self.variables, jnp.asarray(ctx[None])), np.float64)[0]
            self._cache[key] = hit
            if len(self._cache) > CACHE_SIZE:
                self._cache.popitem(last=False)
        else:
            self._cache.move_to_end(key)
        return hit

    def __call__(self, history: np.ndarray) -> np.ndarray:
        last = np.asarray(history[-1], np.float64)
        if self.gain == 0.0:
            return last
        step = self.gain * (self.forecast(history) - last)
        if not np.all(np.isfinite(step)):  # a broken forecast must not break the call: hold
            return last
        return last + np.round(step / self.grid) * self.grid

    def fingerprint(self) -> str:
        """Names the predictor's behaviour beyond its weights: gain and grid (sender and receiver must agree)."""
        text = f"gain={self.gain!r};grid={self.grid.tobytes().hex()};context={self.context}"
        return hashlib.sha256(text.encode()).hexdigest()[:16]


def fit_gain(predictor: ForecastPredictor, series: Sequence[np.ndarray], step: float, policy: dict,
             gains: Sequence[float] = DEFAULT_GAINS, progress=None) -> tuple[ForecastPredictor, list[dict]]:
    """The gain that sends the fewest bytes on ``series`` (``[T, D]`` fitting clips) under the sender
    ``policy`` (``kpflow.codec.Sender`` keywords), among those whose keypoint error is within
    :data:`GAIN_MAE_TOLERANCE` of the best error; each gain's codec is fitted with that gain.

    Returns the predictor with that gain and one ``{"gain", "bytes", "kbps", "mae_raw"}`` per gain.
    ``progress``: wraps the loop over gains (e.g. ``kpflow.progress.progress``), or None.
    """
    if not gains or any(not 0.0 <= g <= 1.0 for g in gains):
        raise ValueError(f"gains must be a non-empty list of values in [0, 1]; got {list(gains)}")
    series = [np.asarray(s, np.float32) for s in series]
    frames = sum(len(s) for s in series)
    rows = []
    for g in (gains if progress is None else progress(list(gains))):
        p = predictor.replace(gain=g)
        params = codec.CodecParams.fit(series, step, p).fit_to_policy(series, p, **policy)
        results = [codec.transmit(s, params, p, **policy) for s in series]
        total = sum(r["bytes"] for r in results)
        mae = sum(r["mae_raw"] * len(s) for r, s in zip(results, series, strict=True)) / frames
        rows.append({"gain": float(g), "bytes": int(total), "kbps": total * 8 / (frames / codec.FPS) / 1000.0,
                     "mae_raw": float(mae)})
    best_mae = min(r["mae_raw"] for r in rows)
    fair = [r for r in rows if r["mae_raw"] <= best_mae * (1 + GAIN_MAE_TOLERANCE)]
    chosen = min(fair, key=lambda r: (r["bytes"], r["mae_raw"]))
    return predictor.replace(gain=chosen["gain"]), rows
