"""Windows over keypoint series: non-overlapping N+M evaluation windows, sliding training windows."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence

import numpy as np


def parse_horizon(text: str) -> tuple[int, int]:
    """``"6-6"`` -> (6, 6). Raises ValueError with the expected form."""
    try:
        n, m = (int(p) for p in str(text).split("-"))
    except ValueError:
        raise ValueError(f"horizon {text!r} must look like N-M, e.g. 6-6 or 12-12") from None
    if n < 2 or m < 1:
        raise ValueError(f"horizon {text!r}: need at least 2 observed and 1 predicted frame")
    return n, m


def evaluation_windows(series: np.ndarray, num_observed: int, horizon: int) -> np.ndarray:
    """Non-overlapping windows ``[W, N+M, D]`` starting at 0, N+M, 2(N+M), ... (the papers' protocol).

    A trailing remainder shorter than N+M is dropped. Returns ``[0, N+M, D]`` for a short clip.
    """
    length = num_observed + horizon
    count = len(series) // length
    return np.asarray(series[: count * length]).reshape(count, length, series.shape[-1])


def evaluation_window_starts(num_frames: int, num_observed: int, horizon: int) -> np.ndarray:
    length = num_observed + horizon
    return np.arange(num_frames // length) * length


def observed_frames_of_windows(series: np.ndarray, num_observed: int, horizon: int) -> np.ndarray:
    """The observed frames of all evaluation windows of a clip, ``[W*N, D]``: the authors' min-max set."""
    return evaluation_windows(series, num_observed, horizon)[:, :num_observed].reshape(-1, series.shape[-1])


def sliding_windows(series: np.ndarray, length: int, stride: int = 1) -> np.ndarray:
    """All windows ``[W, length, D]`` at the given stride (training)."""
    if len(series) < length:
        return np.zeros((0, length, series.shape[-1]), series.dtype)
    idx = np.arange(0, len(series) - length + 1, stride)[:, None] + np.arange(length)[None]
    return series[idx]


def check_long_enough(clips: Mapping[str, np.ndarray], length: int, what: str) -> None:
    """Raise if no clip holds one window of ``length`` frames (names the longest clip)."""
    if not clips:
        raise ValueError(f"{what}: no clips")
    longest = max(clips, key=lambda n: len(clips[n]))
    if len(clips[longest]) < length:
        raise ValueError(
            f"{what}: every clip is shorter than one window of {length} frames (longest: {longest}, "
            f"{len(clips[longest])} frames); use a shorter horizon or longer clips"
        )


def stack_windows(clips: Mapping[str, np.ndarray] | Sequence[np.ndarray], length: int, stride: int) -> np.ndarray:
    """Sliding windows of every clip, concatenated: ``[W, length, D]`` float32."""
    series = list(clips.values()) if isinstance(clips, Mapping) else list(clips)
    parts = [sliding_windows(s, length, stride) for s in series]
    parts = [p for p in parts if len(p)]
    if not parts:
        return np.zeros((0, length, series[0].shape[-1]), np.float32)
    return np.concatenate(parts).astype(np.float32)


def batches(windows: np.ndarray, batch_size: int, rng: np.random.Generator, drop_remainder: bool = True) -> Iterator[np.ndarray]:
    """One epoch of shuffled batches ``[B, L, D]``. With fewer windows than a batch, yields one smaller batch."""
    order = rng.permutation(len(windows))
    if len(windows) < batch_size:
        yield windows[order]
        return
    stop = len(order) - (len(order) % batch_size if drop_remainder else 0)
    for i in range(0, stop, batch_size):
        yield windows[order[i : i + batch_size]]
