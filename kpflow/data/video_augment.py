"""FOMM's training augmentation (``augmentation_params``) in numpy: flips, random resize and crop,
colour jitter as torchvision's ``ColorJitter``. One random draw per call, shared by every frame of
the clip, so a (source, driving) pair is augmented alike. No jax, no torch.

``frames [T, H, W, 3] float32 in [0, 1]`` in and out.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

# FOMM's RandomFlip flips a clip with probability one half.
FLIP_PROBABILITY = 0.5
# ITU-R 601 luma weights of R, G, B: the grey level torchvision's rgb_to_grayscale uses.
LUMA_WEIGHTS = (0.299, 0.587, 0.114)
# torchvision's ColorJitter shifts the hue by at most half a turn either way.
MAX_HUE_SHIFT = 0.5


def rgb_to_hsv(rgb: np.ndarray) -> np.ndarray:
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


def hsv_to_rgb(hsv: np.ndarray) -> np.ndarray:
    """``[..., 3]`` HSV in [0, 1] -> RGB in [0, 1]: the inverse of :func:`rgb_to_hsv`."""
    h, s, v = hsv[..., :1], hsv[..., 1:2], hsv[..., 2:]
    # The piecewise-linear form of HSV -> RGB: channel n (5, 3, 1 for R, G, B) is
    # v - v s clip(min(k, 4 - k), 0, 1) with k = (n + 6 h) mod 6; no per-sector branching.
    k = (np.array([5.0, 3.0, 1.0], hsv.dtype) + 6.0 * h) % 6.0
    return v - v * s * np.clip(np.minimum(k, 4.0 - k), 0.0, 1.0)


def _grayscale(frames: np.ndarray) -> np.ndarray:
    """``[..., 3]`` -> ``[..., 1]``: ITU-R 601 luma, as torchvision's ``rgb_to_grayscale``."""
    return (frames @ np.array(LUMA_WEIGHTS, frames.dtype))[..., None]


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
            self.jitter["hue"] = _factor_range("hue", jitter["hue"], 0.0, MAX_HUE_SHIFT)

    def __repr__(self) -> str:
        return (
            f"Augmentation(horizontal_flip={self.horizontal_flip}, time_flip={self.time_flip}, "
            f"resize_ratio={self.resize_ratio}, crop_size={self.crop_size}, jitter={self.jitter})"
        )

    def __call__(self, frames: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """``frames [T, H, W, 3]`` float in [0, 1] -> augmented ``[T, H', W', 3]`` float32 in [0, 1]
        (``H', W'`` = the crop size when cropping, else ``H, W``): :meth:`draw` then :meth:`apply`."""
        frames = self._check(frames)
        return self.apply(frames, self.draw(rng, frames.shape[1:3]))

    @staticmethod
    def _check(frames: np.ndarray) -> np.ndarray:
        frames = np.asarray(frames, np.float32)
        if frames.ndim != 4 or frames.shape[-1] != 3:
            raise ValueError(f"Augmentation expects frames [T, H, W, 3], got {frames.shape}")
        return frames

    def draw(self, rng: np.random.Generator, frame_hw: Sequence[int]) -> dict[str, Any]:
        """Every random choice for clips of ``frame_hw = (H, W)``, drawn from ``rng`` in FOMM's order
        (the same numbers :meth:`__call__` draws), as a small picklable dict for :meth:`apply`.

        Drawing apart from applying lets an input pipeline plan an epoch in one process (cheap, in
        a fixed order) and decode and augment its batches in worker processes.
        """
        hw = (int(frame_hw[0]), int(frame_hw[1]))
        out_size = self.crop_size or hw
        params: dict[str, Any] = {
            "time_flip": bool(self.time_flip and rng.random() < FLIP_PROBABILITY),
            "horizontal_flip": bool(self.horizontal_flip and rng.random() < FLIP_PROBABILITY),
        }
        if self.resize_ratio is not None:
            scale = rng.uniform(*self.resize_ratio)
            hw = tuple(max(1, int(scale * s)) for s in hw)
            params["resize"] = hw
        if self.crop_size is not None or hw != tuple(out_size):
            height, width = out_size
            padded = (max(hw[0], height), max(hw[1], width))
            top = int(rng.integers(0, padded[0] - height + 1))
            left = int(rng.integers(0, padded[1] - width + 1))
            params["crop"] = (tuple(out_size), top, left)
        if self.jitter:
            factors = {name: float(rng.uniform(lo, hi)) for name, (lo, hi) in self.jitter.items()}
            params["jitter"] = [(str(name), factors[name]) for name in rng.permutation(sorted(factors))]
        return params

    def apply(self, frames: np.ndarray, params: Mapping[str, Any]) -> np.ndarray:
        """``frames [T, H, W, 3]`` augmented by the choices ``params`` of :meth:`draw`."""
        frames = self._check(frames)
        if params["time_flip"]:
            frames = frames[::-1]
        if params["horizontal_flip"]:
            frames = frames[:, :, ::-1]
        if "resize" in params:
            frames = _bilinear_resize(frames, params["resize"])
        if "crop" in params:
            size, top, left = params["crop"]
            frames = self._crop(frames, size, top, left)
        if "jitter" in params:
            frames = self._color_jitter(frames, params["jitter"])
        return np.ascontiguousarray(frames, dtype=np.float32)

    @staticmethod
    def _crop(frames: np.ndarray, size: Sequence[int], top: int, left: int) -> np.ndarray:
        """Zero pad (centred) up to ``size`` where smaller, then crop ``size`` at ``(top, left)``."""
        height, width = size
        pad_h, pad_w = max(0, height - frames.shape[1]), max(0, width - frames.shape[2])
        if pad_h or pad_w:
            pads = ((0, 0), (pad_h // 2, pad_h - pad_h // 2), (pad_w // 2, pad_w - pad_w // 2),
                    (0, 0))
            frames = np.pad(frames, pads)
        return frames[:, top: top + height, left: left + width]

    @staticmethod
    def _color_jitter(frames: np.ndarray, factors: Sequence[tuple[str, float]]) -> np.ndarray:
        # One factor per adjustment for the whole clip, so source and driving get the same colours;
        # applied in the drawn order.
        for name, factor in factors:
            f = np.float32(factor)
            if name == "brightness":
                frames = frames * f
            elif name == "contrast":
                mean = _grayscale(frames).mean(axis=(1, 2, 3), keepdims=True)
                frames = f * frames + (1 - f) * mean
            elif name == "saturation":
                frames = f * frames + (1 - f) * _grayscale(frames)
            else:  # hue
                hsv = rgb_to_hsv(frames)
                hsv[..., 0] = (hsv[..., 0] + f) % 1.0
                frames = hsv_to_rgb(hsv)
            frames = np.clip(frames, 0.0, 1.0).astype(np.float32)
        return frames
