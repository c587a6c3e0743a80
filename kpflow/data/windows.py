"""Windows over keypoint series: non-overlapping N+M evaluation windows, sliding training windows, and
the forecaster trainer's input pipeline over them (:func:`epoch_batches`, :func:`augment`)."""

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


# The window augmentations :func:`augment` knows (``config.data.augment`` picks among them).
AUGMENTATIONS = ("reflect", "reverse")


def augment(batch: np.ndarray, kinds: Sequence[str], rng: np.random.Generator) -> np.ndarray:
    """Randomly transform half of the windows of ``batch [B, T, D]`` per augmentation in ``kinds``
    (:func:`draw_augmentation`, then :func:`apply_augmentation`).

    - ``reflect``: ``x' = 2 x_0 - x``, the window mirrored through its first frame. Forecasters see
      positions relative to the window's first frame and steps, so this negates every input they
      see: head motion has no preferred direction, and the learned drift then cannot carry one
      from the few training speakers.
    - ``reverse``: the window played backwards (motion statistics of talking heads are close to
      time-reversible).
    """
    return apply_augmentation(batch, kinds, draw_augmentation(rng, len(batch), kinds))


def draw_augmentation(rng: np.random.Generator, size: int, kinds: Sequence[str]) -> np.ndarray:
    """``[size, len(kinds)]`` booleans: which windows each augmentation of ``kinds`` transforms
    (each with probability 1/2, one ``rng.random(size)`` draw per kind, in order)."""
    for kind in kinds:
        if kind not in AUGMENTATIONS:
            raise ValueError(f"unknown augmentation {kind!r}; choose from {AUGMENTATIONS}")
    return np.stack([rng.random(size) < 0.5 for _ in kinds], axis=1) if kinds else np.zeros((size, 0), bool)


def apply_augmentation(batch: np.ndarray, kinds: Sequence[str], flags: np.ndarray) -> np.ndarray:
    """``batch [B, T, D]`` with augmentation ``kinds[k]`` applied, in order, to the windows where
    ``flags[:, k]`` (see :func:`augment`). Row by row, so any rows of a batch augment alike."""
    out = np.array(batch, copy=True)
    for k, kind in enumerate(kinds):
        pick = flags[:, k]
        if kind == "reflect":
            out[pick] = 2.0 * out[pick, :1] - out[pick]
        elif kind == "reverse":
            out[pick] = out[pick, ::-1]
        else:
            raise ValueError(f"unknown augmentation {kind!r}; choose from {AUGMENTATIONS}")
    return out


def epoch_batches(windows: np.ndarray, batch_size: int, seed: int, epoch: int,
                  augmentations: Sequence[str] = ()) -> Iterator[np.ndarray]:
    """Endless shuffled (and optionally augmented) batches ``[B, N+M, D]`` for ``epoch``.

    The order and the augmentations depend only on (seed, epoch), so a resumed run sees the same batches.
    """
    rng = np.random.default_rng([seed, epoch])
    while True:
        order = rng.permutation(len(windows))
        if len(windows) <= batch_size:
            yield augment(windows[order], augmentations, rng)
            continue
        for i in range(0, len(order) - batch_size + 1, batch_size):
            yield augment(windows[order[i : i + batch_size]], augmentations, rng)
