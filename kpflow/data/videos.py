"""Video datasets in the layouts of the original First Order Motion Model (FOMM).

A *video* is any of (as FOMM's ``read_video`` accepts):

- a directory of frame images (``.png``/``.jpg``/``.jpeg``, frames in file-name order);
- a ``.png``/``.jpg`` *frame strip*: one image of the frames side by side, ``[H, T * W, 3]``;
- a ``.gif``, ``.mp4``, ``.mov`` or ``.avi`` file, decoded by imageio (ffmpeg for the movies).

Every reader returns ``frames [T, H, W, 3] float32 in [0, 1]``. A dataset folder follows FOMM's
layout, ``root/train/`` and ``root/test/`` (VoxCeleb names like
``id10283#N69Hp2DGMLk#000519#000619.mp4``, whose identity is the prefix before the first ``#``).

``VideoFolder`` samples (source, driving) frame pairs for stage-1 FOMM training and hands out whole
videos for keypoint extraction; ``PairBatches`` batches the pairs epoch by epoch, as FOMM's
``DatasetRepeater`` + shuffled ``DataLoader`` do; ``Augmentation`` is FOMM's
``augmentation_params`` (flips, random resize and crop, colour jitter) in numpy. No jax, no torch.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator, Mapping, Sequence
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


class VideoReadError(ValueError):
    """A video that cannot be read; the message is one line naming the file and the reason."""


class NoVideosError(VideoReadError, FileNotFoundError):
    """A video folder that does not exist or holds no videos (also a ``FileNotFoundError``)."""


# ---------------------------------------------------------------------------------------------
# Reading


def _one_line(exc: BaseException, limit: int = 160) -> str:
    """``TypeName: first line of the message`` (imageio's ffmpeg errors carry pages of stderr)."""
    lines = [s.strip() for s in str(exc).splitlines() if s.strip()]
    text = lines[0] if lines else ""
    text = text if len(text) <= limit else text[: limit - 3] + "..."
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _check_frame_shape(frame_shape: Sequence[int] | None) -> tuple[int, int] | None:
    """``(H, W)`` or ``(H, W, 3)`` -> ``(H, W)``; None stays None."""
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


def _to_float(frames: np.ndarray) -> np.ndarray:
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

    frames = _to_float(frames)
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
        frames = [_to_float(f) for f in frames]
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


def _load_video(path: str | os.PathLike, frame_shape: Sequence[int] | None = None) -> np.ndarray:
    """Decode one video -> ``[T, H, W, 3]``: uint8 when the file is 8-bit, else float32 in [0, 1].

    Keeping uint8 lets ``VideoFolder`` cache decoded videos in a quarter of the float32 memory.
    """
    path = Path(path)
    size = _check_frame_shape(frame_shape)
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
    return _to_float(_load_video(path, frame_shape))


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


# ---------------------------------------------------------------------------------------------
# Augmentation


def _rgb_to_hsv(rgb: np.ndarray) -> np.ndarray:
    """``[..., 3]`` RGB in [0, 1] -> HSV in [0, 1] (hue as a fraction of the full turn)."""
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    # Pairwise maximum/minimum: numpy reductions over a length-3 last axis are much slower.
    maxc = np.maximum(np.maximum(r, g), b)
    minc = np.minimum(np.minimum(r, g), b)
    delta = maxc - minc
    safe_delta = np.where(delta > 0, delta, 1.0)
    sat = np.where(maxc > 0, delta / np.where(maxc > 0, maxc, 1.0), 0.0)
    rc, gc, bc = (maxc - r) / safe_delta, (maxc - g) / safe_delta, (maxc - b) / safe_delta
    hue = np.where(maxc == r, bc - gc, np.where(maxc == g, 2.0 + rc - bc, 4.0 + gc - rc))
    hue = np.where(delta > 0, (hue / 6.0) % 1.0, 0.0)
    return np.stack([hue, sat, maxc], axis=-1)


def _hsv_to_rgb(hsv: np.ndarray) -> np.ndarray:
    """Inverse of ``_rgb_to_hsv``."""
    h, s, v = hsv[..., :1], hsv[..., 1:2], hsv[..., 2:]
    # The piecewise-linear form of HSV -> RGB: channel n (5, 3, 1 for R, G, B) is
    # v - v s clip(min(k, 4 - k), 0, 1) with k = (n + 6 h) mod 6; no per-sector branching.
    k = (np.array([5.0, 3.0, 1.0], hsv.dtype) + 6.0 * h) % 6.0
    return v - v * s * np.clip(np.minimum(k, 4.0 - k), 0.0, 1.0)


def _grayscale(frames: np.ndarray) -> np.ndarray:
    """``[..., 3]`` -> ``[..., 1]``: ITU-R 601 luma, as torchvision's ``rgb_to_grayscale``."""
    return (frames @ np.array([0.299, 0.587, 0.114], frames.dtype))[..., None]


def _bilinear_resize(frames: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``[T, H, W, C]`` -> ``[T, h, w, C]``, bilinear with half-pixel centres (no antialiasing:
    augmentation ratios are near 1)."""
    height, width = frames.shape[1:3]

    def axis(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        pos = np.clip((np.arange(n_out) + 0.5) * n_in / n_out - 0.5, 0, n_in - 1)
        lo = np.floor(pos).astype(np.int64)
        hi = np.minimum(lo + 1, n_in - 1)
        return lo, hi, (pos - lo).astype(frames.dtype)

    y0, y1, wy = axis(height, size[0])
    x0, x1, wx = axis(width, size[1])
    rows = frames[:, y0] * (1 - wy)[None, :, None, None] + frames[:, y1] * wy[None, :, None, None]
    return rows[:, :, x0] * (1 - wx)[None, None, :, None] + rows[:, :, x1] * wx[None, None, :, None]


def _factor_range(name: str, value: Any, center: float, bound: float | None) -> tuple[float, float]:
    """ColorJitter's range: ``b`` -> ``[max(0, center - b), center + b]``; a pair is kept."""
    if isinstance(value, (int, float)):
        if value < 0:
            raise ValueError(f"jitter_param.{name} must be >= 0, got {value}")
        lo, hi = center - value, center + value
        if bound is None:
            lo = max(0.0, lo)
    elif isinstance(value, Sequence) and len(value) == 2:
        lo, hi = float(value[0]), float(value[1])
    else:
        raise ValueError(f"jitter_param.{name} must be a number or a [lo, hi] pair, got {value!r}")
    if lo > hi or (bound is not None and (lo < -bound or hi > bound)) or (bound is None and lo < 0):
        limits = f"within [-{bound}, {bound}]" if bound is not None else "non-negative"
        raise ValueError(f"jitter_param.{name} range [{lo}, {hi}] must be ordered and {limits}")
    return float(lo), float(hi)


def _as_dict(params: Any) -> dict:
    """A dict, an ``ml_collections.ConfigDict`` or None -> a plain dict."""
    if params is None:
        return {}
    if hasattr(params, "to_dict"):
        return params.to_dict()
    return dict(params)


class Augmentation:
    """FOMM's ``augmentation_params`` in numpy, one random draw per call shared by every frame.

    ``params`` (all keys optional; FOMM's vox config uses ``flip_param`` and ``jitter_param``)::

        {"flip_param": {"horizontal_flip": bool, "time_flip": bool},
         "resize_param": {"ratio": [lo, hi]},
         "crop_param": {"size": [H, W]},
         "jitter_param": {"brightness": b, "contrast": c, "saturation": s, "hue": h}}

    Applied in FOMM's order: flips (each with p = 0.5, drawn independently; FOMM's own RandomFlip
    never does both at once), resize by a ratio drawn from ``[lo, hi]``, crop to ``size`` at a
    random offset (zero padding, centred, when the clip is smaller; without ``crop_param`` a
    resized clip is cropped/padded back to its input size so batches keep one shape), then colour
    jitter as torchvision's ``ColorJitter``: brightness, contrast (blend with the mean grey level
    of each frame), saturation (blend with the grey image) and hue (rotation in HSV), in a random
    order, each clipped to [0, 1]. A parameter of 0 skips that adjustment (exact identity).
    """

    KEYS = ("flip_param", "resize_param", "crop_param", "jitter_param")

    def __init__(self, params: Mapping[str, Any] | None = None):
        params = _as_dict(params)
        unknown = sorted(set(params) - set(self.KEYS))
        if unknown:
            raise ValueError(f"unsupported augmentation {unknown}; supported: {list(self.KEYS)}")
        flip = _as_dict(params.get("flip_param"))
        self.horizontal_flip = bool(flip.get("horizontal_flip", False))
        self.time_flip = bool(flip.get("time_flip", False))

        resize = _as_dict(params.get("resize_param"))
        self.resize_ratio: tuple[float, float] | None = None
        if resize:
            ratio = resize.get("ratio")
            if ratio is None or len(ratio) != 2 or not 0 < ratio[0] <= ratio[1]:
                raise ValueError(f"resize_param.ratio must be [lo, hi], 0 < lo <= hi; got {ratio}")
            self.resize_ratio = (float(ratio[0]), float(ratio[1]))

        crop = _as_dict(params.get("crop_param"))
        self.crop_size: tuple[int, int] | None = None
        if crop:
            size = crop.get("size")
            if size is None or len(size) != 2 or min(size) < 1:
                raise ValueError(f"crop_param.size must be [H, W] with H, W >= 1, got {size}")
            self.crop_size = (int(size[0]), int(size[1]))

        jitter = _as_dict(params.get("jitter_param"))
        unknown = sorted(set(jitter) - {"brightness", "contrast", "saturation", "hue"})
        if unknown:
            raise ValueError(f"unknown jitter_param keys {unknown}")
        # name -> (lo, hi) factor range; zero parameters are dropped so they are an exact identity.
        self.jitter: dict[str, tuple[float, float]] = {}
        for name in ("brightness", "contrast", "saturation"):
            if jitter.get(name):
                self.jitter[name] = _factor_range(name, jitter[name], 1.0, None)
        if jitter.get("hue"):
            self.jitter["hue"] = _factor_range("hue", jitter["hue"], 0.0, 0.5)

    def __repr__(self) -> str:
        return (
            f"Augmentation(horizontal_flip={self.horizontal_flip}, time_flip={self.time_flip}, "
            f"resize_ratio={self.resize_ratio}, crop_size={self.crop_size}, jitter={self.jitter})"
        )

    def __call__(self, frames: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """``frames [T, H, W, 3]`` float in [0, 1] -> augmented ``[T, H', W', 3]`` float32 in [0, 1]
        (``H', W'`` = the crop size when cropping, else ``H, W``)."""
        frames = np.asarray(frames, np.float32)
        if frames.ndim != 4 or frames.shape[-1] != 3:
            raise ValueError(f"Augmentation expects frames [T, H, W, 3], got {frames.shape}")
        out_size = self.crop_size or frames.shape[1:3]
        if self.time_flip and rng.random() < 0.5:
            frames = frames[::-1]
        if self.horizontal_flip and rng.random() < 0.5:
            frames = frames[:, :, ::-1]
        if self.resize_ratio is not None:
            scale = rng.uniform(*self.resize_ratio)
            size = tuple(max(1, int(scale * s)) for s in frames.shape[1:3])
            frames = _bilinear_resize(frames, size)
        if self.crop_size is not None or frames.shape[1:3] != tuple(out_size):
            frames = self._random_crop(frames, out_size, rng)
        if self.jitter:
            frames = self._color_jitter(frames, rng)
        return np.ascontiguousarray(frames, dtype=np.float32)

    @staticmethod
    def _random_crop(
        frames: np.ndarray, size: Sequence[int], rng: np.random.Generator
    ) -> np.ndarray:
        """Zero pad (centred) up to ``size`` where smaller, then crop ``size`` at random."""
        height, width = size
        pad_h, pad_w = max(0, height - frames.shape[1]), max(0, width - frames.shape[2])
        if pad_h or pad_w:
            pads = ((0, 0), (pad_h // 2, pad_h - pad_h // 2), (pad_w // 2, pad_w - pad_w // 2),
                    (0, 0))
            frames = np.pad(frames, pads)
        top = int(rng.integers(0, frames.shape[1] - height + 1))
        left = int(rng.integers(0, frames.shape[2] - width + 1))
        return frames[:, top: top + height, left: left + width]

    def _color_jitter(self, frames: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        # One factor per adjustment for the whole clip, so source and driving get the same colours.
        factors = {name: rng.uniform(lo, hi) for name, (lo, hi) in self.jitter.items()}
        for name in rng.permutation(sorted(factors)):
            f = np.float32(factors[name])
            if name == "brightness":
                frames = frames * f
            elif name == "contrast":
                mean = _grayscale(frames).mean(axis=(1, 2, 3), keepdims=True)
                frames = f * frames + (1 - f) * mean
            elif name == "saturation":
                frames = f * frames + (1 - f) * _grayscale(frames)
            else:  # hue
                hsv = _rgb_to_hsv(frames)
                hsv[..., 0] = (hsv[..., 0] + f) % 1.0
                frames = _hsv_to_rgb(hsv)
            frames = np.clip(frames, 0.0, 1.0).astype(np.float32)
        return frames


# ---------------------------------------------------------------------------------------------
# Datasets


class VideoFolder:
    """The videos of one split of a FOMM-layout folder, for pair sampling and extraction.

    Layout: ``root/train/`` and ``root/test/`` hold the videos (any format ``read_video`` takes).
    ``split=None`` reads ``root`` itself, and so does any split when ``root`` has neither a
    ``train/`` nor a ``test/`` sub-folder (a flat folder of videos).

    Args:
      root: the dataset folder.
      split: ``"train"``, ``"test"`` or None.
      frame_shape: ``(H, W[, 3])`` every frame is resized to; None keeps the files' sizes.
      id_sampling: FOMM's ``id_sampling``: an item is an identity (the name prefix before the first
        ``#``), and each pair comes from a random video of that identity, so identities with many
        videos are not over-sampled. ``len`` is then the number of identities.
      cache: keep decoded videos in memory (uint8 when the files are 8-bit), so each video is
        decoded once. The datasets used here are small (the 28 VoxCeleb train clips of
        ``shared/data/vox_videos``, 9,330 frames at 256x256, take 1.8 GB as uint8); pass False for
        larger ones.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        split: str | None = "train",
        frame_shape: Sequence[int] | None = (256, 256, 3),
        id_sampling: bool = False,
        cache: bool = True,
    ):
        root = Path(root)
        if split not in ("train", "test", None):
            raise ValueError(f"split must be 'train', 'test' or None, got {split!r}")
        folder = root
        if split is not None:
            if (root / split).is_dir():
                folder = root / split
            elif (root / "train").is_dir() or (root / "test").is_dir():
                raise NoVideosError(
                    f"{root} has the FOMM layout but no {split}/ folder; {NO_VIDEOS_HINT}"
                )
        self.root = root
        self.folder = folder
        self.split = split
        self.frame_shape = _check_frame_shape(frame_shape)
        self.id_sampling = bool(id_sampling)
        self.cache = bool(cache)
        self.paths: list[Path] = list_videos(folder)
        self.names: list[str] = [video_name(p) for p in self.paths]
        groups: dict[str, list[int]] = {}
        for i, name in enumerate(self.names):
            groups.setdefault(identity_of(name), []).append(i)
        self.ids: list[str] = sorted(groups)
        self._videos_of_id: dict[str, list[int]] = groups
        self._cache: dict[int, np.ndarray] = {}

    def __len__(self) -> int:
        return len(self.ids) if self.id_sampling else len(self.paths)

    def __repr__(self) -> str:
        return (
            f"VideoFolder({str(self.folder)!r}, {len(self.paths)} videos, {len(self.ids)} ids, "
            f"frame_shape={self.frame_shape}, id_sampling={self.id_sampling})"
        )

    @property
    def num_videos(self) -> int:
        return len(self.paths)

    def _frames(self, video_index: int) -> np.ndarray:
        """Video ``video_index`` decoded: ``[T, H, W, 3]`` uint8, or float32 for non-8-bit files."""
        if video_index in self._cache:
            return self._cache[video_index]
        frames = _load_video(self.paths[video_index], self.frame_shape)
        if self.cache:
            self._cache[video_index] = frames
        return frames

    def video(self, i: int) -> tuple[str, np.ndarray]:
        """Video ``i`` of ``self.paths`` (whatever ``id_sampling``): ``(name, frames [T, H, W, 3]
        float32 in [0, 1])``, for testing and keypoint extraction."""
        if not -len(self.paths) <= i < len(self.paths):
            raise IndexError(f"video {i} out of range: {self.folder} has {len(self.paths)} videos")
        i %= len(self.paths)  # one cache entry per video, whichever sign the index has
        return self.names[i], _to_float(self._frames(i))

    def sample_pair(
        self,
        index: int,
        rng: np.random.Generator,
        augment: Augmentation | None = None,
    ) -> dict[str, Any]:
        """One training pair, as FOMM's ``FramesDataset.__getitem__`` in train mode.

        Item ``index`` (an identity with ``id_sampling``, else a video): two distinct frames drawn
        uniformly without replacement, in time order (the same frame twice for a 1-frame video),
        then ``augment`` applied to the two frames jointly.

        Returns:
          ``{"source": [H, W, 3], "driving": [H, W, 3]}`` float32 in [0, 1], and ``"name"``, the
          video's clip name.
        """
        if not 0 <= index < len(self):
            raise IndexError(f"item {index} out of range: the dataset has {len(self)} items")
        if self.id_sampling:
            choices = self._videos_of_id[self.ids[index]]
            video_index = choices[int(rng.integers(len(choices)))]
        else:
            video_index = index
        frames = self._frames(video_index)
        count = len(frames)
        idx = np.sort(rng.choice(count, size=2, replace=count < 2))
        pair = _to_float(frames[idx])
        if augment is not None:
            pair = augment(pair, rng)
        return {"source": pair[0], "driving": pair[1], "name": self.names[video_index]}


class PairBatches:
    """Shuffled batches of training pairs, epoch by epoch (FOMM's ``DatasetRepeater`` + shuffled,
    ``drop_last`` ``DataLoader``).

    An epoch is ``num_repeats`` passes over the dataset: a permutation of ``num_repeats *
    len(dataset)`` item slots. Epoch ``e`` draws everything (order, frames, augmentation) from
    ``np.random.default_rng([seed, e])``, so a run resumed at epoch ``e`` sees the same batches.
    Iterating the object itself runs epochs 0, 1, 2, ... forever.

    Yields:
      ``{"source": [B, H, W, 3], "driving": [B, H, W, 3]}`` float32 in [0, 1] numpy arrays (the
      last batch is smaller when ``drop_last`` is False).
    """

    def __init__(
        self,
        dataset: VideoFolder,
        batch_size: int,
        num_repeats: int = 1,
        seed: int = 0,
        augment: Augmentation | None = None,
        drop_last: bool = True,
    ):
        if batch_size < 1 or num_repeats < 1:
            raise ValueError(
                f"batch_size and num_repeats must be >= 1, got {batch_size}, {num_repeats}"
            )
        self.dataset = dataset
        self.batch_size = int(batch_size)
        self.num_repeats = int(num_repeats)
        self.seed = int(seed)
        self.augment = augment
        self.drop_last = bool(drop_last)
        if self.steps_per_epoch == 0:
            raise ValueError(
                f"batch_size {batch_size} exceeds the {self.items_per_epoch} pairs of an epoch "
                f"({len(dataset)} items x {num_repeats} repeats); "
                "lower batch_size or raise num_repeats"
            )

    @property
    def items_per_epoch(self) -> int:
        return len(self.dataset) * self.num_repeats

    @property
    def steps_per_epoch(self) -> int:
        full, rest = divmod(self.items_per_epoch, self.batch_size)
        return full if self.drop_last or not rest else full + 1

    def epoch(self, e: int) -> Iterator[dict[str, np.ndarray]]:
        """The batches of epoch ``e`` (``steps_per_epoch`` of them), the same on every call."""
        rng = np.random.default_rng([self.seed, int(e)])
        order = rng.permutation(self.items_per_epoch) % len(self.dataset)
        for step in range(self.steps_per_epoch):
            items = order[step * self.batch_size: (step + 1) * self.batch_size]
            pairs = [self.dataset.sample_pair(int(i), rng, self.augment) for i in items]
            shapes = sorted({p["source"].shape for p in pairs})
            if len(shapes) > 1:
                raise ValueError(
                    f"videos in {self.dataset.folder} differ in frame size {shapes[:3]}; "
                    "give the dataset a frame_shape to resize them"
                )
            yield {
                "source": np.stack([p["source"] for p in pairs]),
                "driving": np.stack([p["driving"] for p in pairs]),
            }

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        e = 0
        while True:
            yield from self.epoch(e)
            e += 1
