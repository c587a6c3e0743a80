"""Inputs and outputs the command lines share: finding and reading videos, detecting their keypoints,
padding batches, checking where results go.

Every function validates at the boundary and raises :class:`kpflow.cli.UsageError` (one line) for
a mistake the user can fix, so each CLI prints it the same way.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from kpflow.cli import UsageError


def pad_rows(x: np.ndarray, size: int) -> np.ndarray:
    """``x [n, ...]`` with its last row repeated up to ``size`` rows (``n <= size``), so that every
    batch a jitted function sees has one shape (one compilation). Callers drop the padded rows."""
    n = len(x)
    if n == size:
        return x
    if n == 0 or n > size:
        raise ValueError(f"cannot pad {n} rows to {size}")
    return np.concatenate([x, np.repeat(x[-1:], size - n, axis=0)])


def extract_keypoints(fomm, frames, batch_size: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """Keypoints of every frame of one video.

    Args:
      fomm: a loaded ``kpflow.fomm.FOMM`` (anything with ``detect(frames [B, H, W, 3]) -> Keypoints``).
      frames: ``[T, H, W, 3]`` float in [0, 1], T >= 1.
      batch_size: frames per ``detect`` call. Every call gets exactly ``batch_size`` frames (the
        last batch padded with copies of the last frame, whose keypoints are dropped), so the
        jitted detector compiles once per frame size whatever T is.

    Returns:
      ``(value [T, K, 2], jacobian [T, K, 2, 2])`` float32 numpy arrays.
    """
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or len(frames) == 0:
        raise ValueError(f"frames must be [T, H, W, 3] with T >= 1; got shape {frames.shape}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    num_frames = len(frames)
    # Dispatch every batch before fetching any result: JAX runs them asynchronously while the
    # host slices and pads the next one.
    outputs = [fomm.detect(pad_rows(frames[i : i + batch_size], batch_size)) for i in range(0, num_frames, batch_size)]
    value = np.concatenate([np.asarray(kp.value, np.float32) for kp in outputs])[:num_frames]
    jacobian = np.concatenate([np.asarray(kp.jacobian, np.float32) for kp in outputs])[:num_frames]
    return value, jacobian


def video_paths(path: str | os.PathLike, split: str = "test", flag: str = "--videos") -> list[Path]:
    """The videos a command-line path names: one video, a folder of videos, or the ``split``/
    folder of a FOMM layout. UsageError (naming ``flag``) when there are none."""
    from kpflow.data.videos import NoVideosError, resolve_videos

    try:
        return resolve_videos(path, split, flag)
    except NoVideosError as e:
        raise UsageError(str(e)) from None


def read_frames(path: str | os.PathLike, frame_shape: tuple[int, int]) -> np.ndarray:
    """``frames [T, H, W, 3]`` float32 in [0, 1] of one video at ``frame_shape``; an unreadable
    video is one UsageError line naming the file."""
    from kpflow.data.videos import VideoReadError, read_video

    try:
        return read_video(path, frame_shape)
    except VideoReadError as e:
        raise UsageError(str(e)) from None


def keypoint_series(fomm, frames, batch_size: int = 32) -> np.ndarray:
    """The FOMM detector's keypoints of every frame as one series ``[T, 6K]`` (value and Jacobian
    of each keypoint, :func:`kpflow.keypoints.keypoints_to_vector`): what a sender transmits."""
    from kpflow.keypoints import keypoints_to_vector

    return keypoints_to_vector(*extract_keypoints(fomm, frames, batch_size))


def check_output_path(path: str | os.PathLike, flag: str = "--out", *, folder: bool = False) -> Path:
    """Fail before any work if ``path`` cannot be written: a file to write (a folder with
    ``folder=True``) under a file, a folder given for a file or a file for a folder, a place that is
    not writable. Creates nothing: the command makes the folders when it writes."""
    path = Path(path)
    if folder and path.exists() and not path.is_dir():
        raise UsageError(f"{flag} {str(path)!r} is a file; give a folder")
    if not folder and path.is_dir():
        raise UsageError(f"{flag} {str(path)!r} is a folder; give a file name")
    # The deepest place that exists decides: every folder below it is made by the command.
    existing = next((p for p in (path, *path.parents) if p.exists()), None)
    if existing is None:  # only when the working directory itself was removed
        raise UsageError(f"{flag} {str(path)!r}: no part of it exists")
    if existing != path and not existing.is_dir():
        raise UsageError(f"{flag} {str(path)!r}: {str(existing)!r} is a file, not a folder")
    if not os.access(existing, os.W_OK | (os.X_OK if existing.is_dir() else 0)):
        raise UsageError(f"{flag} {str(path)!r}: {str(existing)!r} is not writable")
    return path
