"""Video readers for the formats and folder layouts of the original First Order Motion Model (FOMM).

A *video* is any of (as FOMM's ``read_video`` accepts):

- a directory of frame images (``.png``/``.jpg``/``.jpeg``, frames in file-name order);
- a ``.png``/``.jpg`` *frame strip*: one image of the frames side by side, ``[H, T * W, 3]``;
- a ``.gif``, ``.mp4``, ``.mov`` or ``.avi`` file, decoded by imageio (ffmpeg for the movies).

Every reader returns ``frames [T, H, W, 3] float32 in [0, 1]``. A dataset folder follows FOMM's
layout, ``root/train/`` and ``root/test/`` (VoxCeleb names like
``id10283#N69Hp2DGMLk#000519#000619.mp4``, whose identity is the prefix before the first ``#``).

This module reads videos and lists them; pair sampling and batching for FOMM training are in
:mod:`kpflow.data.video_pairs`, FOMM's augmentation in :mod:`kpflow.data.video_augment`.
No jax, no torch.
"""

from __future__ import annotations

import concurrent.futures
import os
import sys
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import imageio.v3 as iio
import numpy as np
from PIL import Image

MOVIE_EXTENSIONS = (".mp4", ".mov", ".avi")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")
VIDEO_EXTENSIONS = (".gif", *MOVIE_EXTENSIONS, *IMAGE_EXTENSIONS)
NO_VIDEOS_HINT = "expected .mp4/.gif/.png strips or frame folders"
# An explicit imageio plugin per extension: the same decoder whatever else is installed (pyav would
# otherwise take over mp4), and a corrupt file fails once instead of after trying every plugin.
_PLUGINS = {**{ext: "pillow" for ext in (".gif", *IMAGE_EXTENSIONS)},
            **{ext: "FFMPEG" for ext in MOVIE_EXTENSIONS}}


# A decoder's reason is cut to this many characters: the error stays one readable line.
ERROR_REASON_CHARS = 160


class VideoReadError(ValueError):
    """A video that cannot be read; the message is one line naming the file and the reason."""


class NoVideosError(VideoReadError, FileNotFoundError):
    """A video folder that does not exist or holds no videos (also a ``FileNotFoundError``)."""


class NoReadableVideosError(VideoReadError):
    """None of the videos a run was given could be read (one line: how many, the first reason)."""


def _one_line(exc: BaseException, limit: int = ERROR_REASON_CHARS) -> str:
    """``TypeName: first line of the message`` (imageio's ffmpeg errors carry pages of stderr)."""
    lines = [s.strip() for s in str(exc).splitlines() if s.strip()]
    text = lines[0] if lines else ""
    text = text if len(text) <= limit else text[: limit - 3] + "..."
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def frame_size(frame_shape: Sequence[int] | None) -> tuple[int, int] | None:
    """A ``frame_shape`` argument checked: ``(H, W)`` or ``(H, W, 3)`` -> ``(H, W)``; None stays None.

    Raises a one-line ValueError for anything else.
    """
    if frame_shape is None:
        return None
    shape = tuple(int(s) for s in frame_shape)
    if len(shape) not in (2, 3) or min(shape[:2]) < 1 or (len(shape) == 3 and shape[2] != 3):
        raise ValueError(f"frame_shape must be (H, W) or (H, W, 3), H, W >= 1; got {frame_shape}")
    return shape[0], shape[1]


def _to_rgb(frames: np.ndarray, path: Path) -> np.ndarray:
    """``[T, H, W]`` or ``[T, H, W, 1|2|3|4]`` -> ``[T, H, W, 3]``: replicate grey, drop alpha."""
    if frames.ndim == 3:
        frames = frames[..., None]
    if frames.ndim != 4 or frames.shape[-1] not in (1, 2, 3, 4):
        raise VideoReadError(f"{path}: cannot read video (unexpected pixel shape {frames.shape})")
    if frames.shape[-1] in (1, 2):  # grey (+ alpha)
        return np.repeat(frames[..., :1], 3, axis=-1)
    return frames[..., :3]


def frames_to_float(frames: np.ndarray) -> np.ndarray:
    """Integer pixels -> float32 in [0, 1] (divided by the dtype's maximum); floats are clipped."""
    if frames.dtype == np.bool_:
        return frames.astype(np.float32)
    if np.issubdtype(frames.dtype, np.integer):
        return frames.astype(np.float32) / np.float32(np.iinfo(frames.dtype).max)
    return np.clip(frames.astype(np.float32), 0.0, 1.0)


def _resize_frames(frames: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``[T, h, w, 3]`` -> ``[T, H, W, 3]`` with PIL's bilinear filter (antialiased when shrinking).

    uint8 frames stay uint8 (PIL's RGB path); anything else goes through float32 per channel.
    """
    height, width = size
    if frames.shape[1:3] == (height, width):
        return frames
    bilinear = Image.Resampling.BILINEAR
    if frames.dtype == np.uint8:
        return np.stack([np.asarray(Image.fromarray(f).resize((width, height), bilinear))
                         for f in frames])

    def resize_channel(channel: np.ndarray) -> np.ndarray:  # float32 [h, w] -> [H, W] (mode "F")
        image = Image.fromarray(np.ascontiguousarray(channel, np.float32))
        return np.asarray(image.resize((width, height), bilinear))

    frames = frames_to_float(frames)
    return np.stack([np.stack([resize_channel(f[..., c]) for c in range(3)], -1) for f in frames])


def _imread(path: Path, **kwargs: Any) -> np.ndarray:
    """imageio's ``imread`` whose failures become one-line ``VideoReadError`` naming the file."""
    try:
        with warnings.catch_warnings():
            # ffmpeg runs via subprocess (fork + exec at once), which JAX's fork warning does not concern.
            warnings.filterwarnings("ignore", message=r"os\.fork\(\) was called", category=RuntimeWarning)
            return np.asarray(iio.imread(path, plugin=_PLUGINS[path.suffix.lower()], **kwargs))
    except Exception as exc:  # noqa: BLE001 -- any decoder failure means "unreadable" to the caller
        raise VideoReadError(f"{path}: cannot read video ({_one_line(exc)})") from None


def _frame_files(folder: Path) -> list[Path]:
    """The frame images of a folder, sorted by name (hidden files ignored)."""
    return sorted(
        p for p in folder.iterdir()
        if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_EXTENSIONS
    )


def _read_frame_folder(path: Path, size: tuple[int, int] | None) -> np.ndarray:
    files = _frame_files(path)
    if not files:
        raise VideoReadError(f"{path}: cannot read video (a folder with no .png/.jpg frames)")
    frames = [_to_rgb(_imread(f)[None], f)[0] for f in files]
    if len({f.dtype for f in frames}) > 1:  # e.g. 8-bit and 16-bit PNGs mixed: go through float
        frames = [frames_to_float(f) for f in frames]
    if size is not None:
        frames = [_resize_frames(f[None], size)[0] for f in frames]
    shapes = sorted({f.shape for f in frames})
    if len(shapes) > 1:
        raise VideoReadError(
            f"{path}: frames differ in size {shapes[:3]}; pass frame_shape to resize them"
        )
    return np.stack(frames)


def _split_strip(image: np.ndarray, path: Path, size: tuple[int, int] | None) -> np.ndarray:
    """A frame strip ``[H, T * W, 3]`` -> ``[T, H, W, 3]``.

    The frame width is the image height (square frames) without ``size``; with ``size = (h, w)``
    it is ``w`` when the strip is ``h`` high, else the width of the same aspect ratio at this
    height (the frames are resized to ``size`` afterwards).
    """
    height, total_width = image.shape[:2]
    if size is None:
        width = height
    else:
        width = size[1] if height == size[0] else round(size[1] * height / size[0])
    if width < 1 or total_width % width:
        raise VideoReadError(
            f"{path}: cannot read video (a frame strip {total_width} wide is not a whole number of "
            f"frames {width} wide)"
        )
    count = total_width // width
    # [H, T*W, 3] -> [H, T, W, 3] -> [T, H, W, 3]: frames are concatenated along the width.
    return image.reshape(height, count, width, image.shape[-1]).transpose(1, 0, 2, 3)


def decode_video(path: str | os.PathLike, frame_shape: Sequence[int] | None = None) -> np.ndarray:
    """Decode one video -> ``[T, H, W, 3]``: uint8 when the file is 8-bit, else float32 in [0, 1].

    :func:`read_video` without the conversion to float: keeping uint8 lets
    :class:`kpflow.data.video_pairs.VideoFolder` cache decoded videos in a quarter of the float32
    memory (:func:`frames_to_float` converts them). Raises :class:`VideoReadError` as ``read_video``.
    """
    path = Path(path)
    size = frame_size(frame_shape)
    if not path.exists():
        raise VideoReadError(f"{path}: cannot read video (no such file or directory)")
    if path.is_dir():
        frames = _read_frame_folder(path, size)
    else:
        suffix = path.suffix.lower()
        if suffix not in VIDEO_EXTENSIONS:
            raise VideoReadError(
                f"{path}: unsupported video extension {suffix or '(none)'!r}; "
                f"supported: {', '.join(VIDEO_EXTENSIONS)} or a folder of frames"
            )
        if suffix in IMAGE_EXTENSIONS:
            image = _imread(path)
            image = _to_rgb(image[None], path)[0]
            frames = _split_strip(image, path, size)
        else:
            frames = _to_rgb(_imread(path, index=None), path)
        if size is not None:
            frames = _resize_frames(frames, size)
    if len(frames) == 0 or min(frames.shape[1:3]) == 0:
        raise VideoReadError(f"{path}: cannot read video (zero frames decoded)")
    return frames


def read_video(path: str | os.PathLike, frame_shape: Sequence[int] | None = None) -> np.ndarray:
    """Read one video (folder of frames, frame strip, gif, mp4, mov, avi).

    Args:
      path: the video (see the module docstring for the formats).
      frame_shape: ``(H, W)`` or ``(H, W, 3)``; frames of another size are resized to it (bilinear,
        antialiased), and a frame strip is split into frames of this aspect ratio. None keeps the
        file's size (a strip's frames are then square).

    Returns:
      frames ``[T, H, W, 3]`` float32 in [0, 1] (grey replicated to RGB, alpha dropped).

    Raises:
      VideoReadError: one line naming the file: missing, unreadable, zero frames, or an unsupported
        extension.
    """
    return frames_to_float(decode_video(path, frame_shape))


def _is_video(path: Path) -> bool:
    if path.name.startswith("."):
        return False
    if path.is_dir():
        return bool(_frame_files(path))
    return path.is_file() and path.suffix.lower() in VIDEO_EXTENSIONS


def list_videos(root: str | os.PathLike) -> list[Path]:
    """The videos directly in ``root``, sorted by name: files with a video extension and
    sub-directories that hold frame images.

    Raises:
      NoVideosError: (a ``VideoReadError`` and a ``FileNotFoundError``) when ``root`` does not
        exist or holds no videos.
    """
    root = Path(root)
    if not root.is_dir():
        raise NoVideosError(f"video folder {str(root)!r} does not exist; {NO_VIDEOS_HINT}")
    videos = sorted((p for p in root.iterdir() if _is_video(p)), key=lambda p: p.name)
    if not videos:
        raise NoVideosError(f"no videos in {root}; {NO_VIDEOS_HINT}")
    return videos


def resolve_videos(path: str | os.PathLike, split: str = "test", flag: str = "video path") -> list[Path]:
    """The videos a command-line path names: one video, a folder of videos, or the ``split``/
    folder of a FOMM layout (``root/train``, ``root/test``).

    Raises:
      NoVideosError: one line, when ``path`` does not exist (naming it as ``flag``) or holds no videos.
    """
    root = Path(path)
    if not root.exists():
        raise NoVideosError(f"{flag} {str(path)!r} does not exist")
    if root.is_dir() and (root / split).is_dir():
        root = root / split
    if root.is_file():
        return [root]
    return list_videos(root)


def video_name(path: str | os.PathLike) -> str:
    """A video's clip name: the file name without its extension (a frame folder's own name)."""
    path = Path(path)
    return path.name if path.is_dir() or path.suffix.lower() not in VIDEO_EXTENSIONS else path.stem


def identity_of(name: str) -> str:
    """``id10283#N69Hp2DGMLk#000519#000619`` -> ``id10283`` (the whole name if it has no ``#``)."""
    return name.split("#", 1)[0]


# -- the one policy for unreadable videos -----------------------------------------------------------

# Skipped videos named in a summary line; the rest are counted.
MAX_NAMED_SKIPS = 10


def _report_to_stderr(line: str) -> None:
    """One line on stderr, written through tqdm so that a progress bar on a terminal stays whole."""
    from tqdm import tqdm

    tqdm.write(line, file=sys.stderr)


class VideoSkips:
    """The videos a run passed over because they could not be read.

    The policy of every kpflow reader of several videos (the evaluation commands, FOMM training):
    skip an unreadable video and report it, carry on with the others, and exit non-zero at the end
    naming how many were skipped; when none can be read, fail at once with one line.

    Each skip is reported as one line, ``skipping <file>: cannot read video (<reason>)``, through
    ``report`` (default: stderr). The lines are held back until a first video has been read, so a
    run in which none can be read ends with the single line of :meth:`check_some_read` instead.
    :func:`iter_readable` does the bookkeeping; :meth:`summary` is the end-of-run line.
    """

    def __init__(self, report: Callable[[str], None] | None = None):
        self.skipped: list[tuple[Path, str]] = []  # (file, one-line reason), in the order met
        self.num_read = 0
        self._report = report or _report_to_stderr
        self._held: list[str] = []

    def __len__(self) -> int:
        return len(self.skipped)

    @property
    def num_tried(self) -> int:
        return self.num_read + len(self.skipped)

    def skip(self, path: str | os.PathLike, error: BaseException) -> None:
        """Record ``path`` as unreadable (``error`` says why) and report it."""
        self.skipped.append((Path(path), str(error)))
        line = f"skipping {error}"
        if self.num_read:
            self._report(line)
        else:
            self._held.append(line)

    def read(self) -> None:
        """Count one video read (and report the skips held back until now)."""
        self.num_read += 1
        for line in self._held:
            self._report(line)
        self._held.clear()

    def check_some_read(self) -> None:
        """NoReadableVideosError (one line) when videos were tried and none could be read."""
        if self.skipped and not self.num_read:
            first = self.skipped[0][1]
            if len(self.skipped) == 1:
                raise NoReadableVideosError(first)
            raise NoReadableVideosError(f"none of the {len(self.skipped)} videos could be read; the first: {first}")

    def summary(self) -> str:
        """``"2 of 9 videos could not be read and were skipped: a.mp4, b.gif"``, or ``""`` when none were."""
        if not self.skipped:
            return ""
        names = [p.name for p, _ in self.skipped[:MAX_NAMED_SKIPS]]
        more = len(self.skipped) - len(names)
        return (f"{len(self.skipped)} of {self.num_tried} videos could not be read and were skipped: "
                + ", ".join(names) + (f" and {more} more" if more > 0 else ""))


def iter_readable(
    paths: Iterable[str | os.PathLike],
    read: Callable[[Path], Any],
    skips: VideoSkips,
    prefetch: bool = False,
) -> Iterator[tuple[Path, Any]]:
    """``(path, read(path))`` for every video of ``paths`` that can be read, in order; one that
    raises :class:`VideoReadError` is recorded in ``skips`` (and reported) and passed over.

    Args:
      paths: the videos.
      read: e.g. ``lambda p: read_video(p, frame_shape)``.
      skips: collects the unreadable videos (see :class:`VideoSkips`).
      prefetch: read the next video in a background thread while the caller works on this one
        (decoders mostly release the GIL).

    Raises:
      NoReadableVideosError: after the last video, when none could be read (so the first item
        either exists or this is raised: pull it before any long set-up).
    """
    def attempt(path: Path):
        try:
            return read(path), None
        except VideoReadError as e:
            return None, e

    paths = iter(paths)
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        path = next(paths, None)
        pending = pool.submit(attempt, path) if prefetch and path is not None else None
        while path is not None:
            following = next(paths, None)
            if pending is not None:
                result, error = pending.result()
                pending = pool.submit(attempt, following) if following is not None else None
            else:
                result, error = attempt(path)
            if error is not None:
                skips.skip(path, error)
            else:
                skips.read()
                yield Path(path), result
            path = following
    skips.check_some_read()
