"""Video feature extractors: whole videos to fixed-length vectors, for distances between sets of videos.

The protocol is small: an extractor is a callable ``extractor(videos [V, T, H, W, 3] float32 in
[0, 1]) -> np.ndarray [V, F]`` with a ``.name``; the feature length F depends only on the
extractor and on T, H, W. :func:`kpflow.metrics.jedi` (and any MMD of :mod:`kpflow.metrics`)
compares two such feature sets.

- :class:`KeypointTrajectoryFeatures` (``"keypoints"``): keypoints detected on every frame by a
  caller-supplied detector, described by how they move (:func:`kpflow.metrics.motion_features`).
- ``"vjepa"``: V-JEPA video features, JEDi's own (``kpflow.vjepa.VJEPAFeatures``, imported only when
  asked for; the user supplies the weights).

:func:`get_extractor` builds one by name; no other code branches on the kind of extractor.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol, runtime_checkable

import numpy as np

from kpflow.keypoints import Keypoints
from kpflow.metrics.kernels import motion_features


@runtime_checkable
class VideoFeatureExtractor(Protocol):
    """``extractor(videos [V, T, H, W, 3] float32 in [0, 1]) -> np.ndarray [V, F]``, named by ``.name``."""

    name: str

    def __call__(self, videos) -> np.ndarray: ...


def check_videos(videos, name: str = "videos", min_frames: int = 1) -> np.ndarray:
    """Validate a batch of videos at a boundary; returns ``[V, T, H, W, 3]`` float32.

    One-line ValueError for a wrong rank, a channel count other than 3, fewer than ``min_frames``
    frames, or values outside [0, 1] (e.g. uint8 frames not yet divided by 255).
    """
    videos = np.asarray(videos)
    if videos.ndim != 5 or videos.shape[-1] != 3:
        raise ValueError(f"{name}: expected videos [V, T, H, W, 3], got shape {videos.shape}")
    if videos.shape[0] == 0 or videos.shape[1] < min_frames:
        raise ValueError(f"{name}: need at least 1 video of {min_frames} frames, got shape {videos.shape}")
    videos = videos.astype(np.float32, copy=False)
    lo, hi = float(videos.min()), float(videos.max())
    if not (lo >= 0.0 and hi <= 1.0):
        raise ValueError(f"{name}: frames must be float in [0, 1], got values in [{lo}, {hi}]")
    return videos


class KeypointTrajectoryFeatures:
    """Motion features of the keypoints a detector finds on every frame: ``[V, T, H, W, 3] -> [V, F]``.

    ``detect``: any callable ``frames [B, H, W, 3] -> Keypoints-like`` with ``.value [B, K, 2]`` and
    ``.jacobian [B, K, 2, 2]`` (e.g. a bound FOMM keypoint detector, ideally ``jax.jit``-ed). Frames
    of all videos are fed in batches of exactly ``batch_size`` (the last one padded by repeating its
    last frame, the padding dropped after), so a jitted detector compiles once.

    Features per video: the keypoint series ``[T, 6K]`` (:meth:`Keypoints.to_vector`) through
    :func:`kpflow.metrics.motion_features` with the first frame as the reference, i.e. the T-1
    per-step increments (the first one from frame 0) and the per-step speeds of the locations and of
    the Jacobians: ``F = (T-1) * 6K + 2 * (T-1) * K``, fixed for a fixed T. Positions themselves are
    left out: this describes how things move, not where they are.
    """

    name = "keypoints"

    def __init__(self, detect: Callable, batch_size: int = 32):
        if not callable(detect):
            raise TypeError(f"KeypointTrajectoryFeatures: detect must be callable, got {type(detect).__name__}")
        if batch_size < 1:
            raise ValueError(f"KeypointTrajectoryFeatures: batch_size must be >= 1, got {batch_size}")
        self.detect = detect
        self.batch_size = batch_size

    def keypoint_series(self, videos) -> np.ndarray:
        """``videos [V, T, H, W, 3] float32 in [0, 1]`` -> keypoint vectors ``[V, T, 6K]`` float32."""
        return self._series(check_videos(videos, "KeypointTrajectoryFeatures"))

    def __call__(self, videos) -> np.ndarray:
        """``videos [V, T, H, W, 3] float32 in [0, 1]`` (T >= 2) -> ``[V, (T-1) * 6K + 2 * (T-1) * K]`` float32."""
        series = self._series(check_videos(videos, "KeypointTrajectoryFeatures", min_frames=2))
        return np.asarray(motion_features(series[:, 1:], series[:, 0]), np.float32)

    def _series(self, videos: np.ndarray) -> np.ndarray:
        v, t = videos.shape[:2]
        frames = videos.reshape((v * t,) + videos.shape[2:])
        values, jacobians = [], []
        for start in range(0, len(frames), self.batch_size):
            batch = frames[start : start + self.batch_size]
            real = len(batch)
            if real < self.batch_size:
                batch = np.concatenate([batch, np.repeat(batch[-1:], self.batch_size - real, axis=0)])
            kp = self.detect(batch)
            value, jacobian = np.asarray(kp.value), np.asarray(kp.jacobian)
            if value.ndim != 3 or value.shape[0] != self.batch_size or value.shape[-1] != 2 \
                    or jacobian.shape != value.shape + (2,):
                raise ValueError(f"KeypointTrajectoryFeatures: detect must return value [B, K, 2] and jacobian "
                                 f"[B, K, 2, 2] for B={self.batch_size}; got {value.shape} and {jacobian.shape}")
            values.append(value[:real])
            jacobians.append(jacobian[:real])
        series = Keypoints(np.concatenate(values), np.concatenate(jacobians)).to_vector()
        return series.reshape(v, t, -1).astype(np.float32)


def _vjepa(**kwargs):
    # Imported on demand: only this extractor needs the V-JEPA model, and its weights are the user's.
    from kpflow.vjepa import VJEPAFeatures

    return VJEPAFeatures(**kwargs)


EXTRACTORS: dict[str, Callable[..., VideoFeatureExtractor]] = {
    "keypoints": KeypointTrajectoryFeatures,
    "vjepa": _vjepa,
}


def get_extractor(name: str, **kwargs) -> VideoFeatureExtractor:
    """The extractor called ``name`` built with ``kwargs``: ``"keypoints"`` (``detect=``, ``batch_size=``)
    or ``"vjepa"`` (``weights=``: path of the V-JEPA weights). One-line ValueError for unknown names."""
    if name not in EXTRACTORS:
        raise ValueError(f"unknown feature extractor {name!r}; known: {', '.join(sorted(EXTRACTORS))}")
    return EXTRACTORS[name](**kwargs)
