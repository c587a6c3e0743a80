"""Inputs and outputs the command lines share: finding and reading videos, detecting their keypoints,
reading ``.npz`` files, padding batches, checking where results go.

Every function validates at the boundary and raises :class:`kpflow.cli.UsageError` (one line) for
a mistake the user can fix, so each CLI prints it the same way (:func:`load_npz`, used by library
readers too, raises a one-line ValueError instead).

Unreadable videos follow one policy in every command (:class:`kpflow.data.videos.VideoSkips`):
skip and report each (one line, the file and the reason), carry on, and exit non-zero at the end
naming how many were skipped; when none can be read, one error line at once. A command does::

    skips = VideoSkips()
    for path, frames in read_videos(paths, frame_shape, skips):
        ...                                     # work on the readable ones
    return video_run_status(skips, prog)        # EXIT_OK, or one "error: ..." line and EXIT_FAILED
"""

from __future__ import annotations

import os
import sys
import zipfile
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np

from kpflow.cli import EXIT_FAILED, EXIT_OK, UsageError, one_line


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


def read_videos(
    paths: Iterable[str | os.PathLike], frame_shape: tuple[int, int] | None, skips, prefetch: bool = False
) -> Iterator[tuple[Path, np.ndarray]]:
    """``(path, frames [T, H, W, 3] float32 in [0, 1])`` of every readable video of ``paths`` at
    ``frame_shape``; an unreadable one is reported as one line, recorded in ``skips`` (a
    :class:`kpflow.data.videos.VideoSkips`) and passed over (see the module docstring).

    Raises UsageError (one line) when none can be read; it comes with the first item, so pull that
    (``next(...)``) before any long set-up. ``prefetch`` decodes the next video in a thread.
    """
    from kpflow.data.videos import NoReadableVideosError, iter_readable, read_video

    try:
        yield from iter_readable(paths, lambda p: read_video(p, frame_shape), skips, prefetch=prefetch)
    except NoReadableVideosError as e:
        raise UsageError(str(e)) from None


def video_run_status(skips, prog: str = "") -> int:
    """The end of a run that read videos: ``EXIT_OK`` when none was skipped; else one line
    ``[prog: ]error: N of M videos could not be read and were skipped: ...`` on stderr and
    ``EXIT_FAILED``, so that a pipeline notices."""
    if not len(skips):
        return EXIT_OK
    print(f"{prog + ': ' if prog else ''}error: {skips.summary()} (the results cover the others)", file=sys.stderr)
    return EXIT_FAILED


# First bytes of a zip archive (what an .npz is): a local file header, or an empty archive.
_ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")
_NPY_MAGIC = b"\x93NUMPY"


def load_npz(path: str | os.PathLike, what: str = "an .npz archive") -> dict[str, np.ndarray]:
    """Every array of the ``.npz`` file ``path``, read at once, Python objects (pickles) refused.

    ``what`` says what the file should be, for the messages (e.g. "a keypoint clip (value,
    jacobian)"). Raises FileNotFoundError (one line) when ``path`` is not a file, and ValueError
    (one line naming the file) when it is not a readable ``.npz``: a text or other file renamed,
    a single ``.npy`` array, a truncated or damaged archive, or one holding Python objects.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        what_is = "is a folder" if os.path.isdir(path) else "does not exist"
        raise FileNotFoundError(f"{path} {what_is}; expected {what}")
    with open(path, "rb") as f:
        head = f.read(64)
    if not head.startswith(_ZIP_MAGIC):
        if head.startswith(_NPY_MAGIC):
            kind = "a single .npy array"
        elif not head:
            kind = "an empty file"
        else:
            try:
                kind = f"a text file starting {head[:24].decode('utf-8')!r}"
            except UnicodeDecodeError:
                kind = "a file with no zip header"
        raise ValueError(f"{path}: {kind}, not an .npz archive; expected {what}")
    try:
        with np.load(path, allow_pickle=False) as data:
            return {key: data[key] for key in data.files}
    except ValueError as e:
        if "allow_pickle" in str(e):
            raise ValueError(f"{path}: holds Python objects, which are not loaded (pickles can run code); "
                             f"expected {what} of plain arrays") from None
        raise ValueError(f"{path}: damaged .npz ({one_line(e)}); expected {what}") from None
    except zipfile.BadZipFile:
        raise ValueError(f"{path}: truncated or damaged .npz (its zip index is missing); expected {what}") from None
    except (EOFError, OSError, KeyError, zipfile.LargeZipFile) as e:
        raise ValueError(f"{path}: truncated or damaged .npz ({type(e).__name__}: {one_line(e)}); "
                         f"expected {what}") from None


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
