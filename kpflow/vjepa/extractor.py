"""V-JEPA features of whole videos for JEDi: :class:`VJEPAFeatures`, ``videos [V, T, H, W, 3]
float32 in [0, 1] -> features [V, D]``, jitted and batched, from the user's checkpoints.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np

from kpflow.vjepa.convert import load_attentive_pooler, load_vjepa
from kpflow.vjepa.model import Array, Params, VJEPAConfig, get_vjepa_config, vjepa_features

# Values this far outside [0, 1] still pass as [0, 1] frames (rounding); beyond, they are not.
RANGE_TOLERANCE = 1e-3


def resample_frames(videos: np.ndarray, num_frames: int) -> np.ndarray:
    """``videos [V, T, ...] -> [V, num_frames, ...]``: uniformly spaced frames, or all frames
    followed by copies of the last when ``T < num_frames``."""
    length = videos.shape[1]
    if length >= num_frames:
        index = np.round(np.linspace(0, length - 1, num_frames)).astype(int)
    else:
        index = np.concatenate([np.arange(length), np.full(num_frames - length, length - 1)])
    return videos[:, index]


class VJEPAFeatures:
    """V-JEPA features of videos for JEDi: ``extractor(videos [V, T, H, W, 3]) -> [V, D]``.

    ``weights`` is the encoder checkpoint (JEDi: ViT-H/16 ``vith16.pth.tar``) and ``probe`` the
    attentive probe whose pooler gives the features (JEDi: ``ssv2-probe.pth.tar``); without a
    probe the features are the mean encoder token (JEDi's ``finetuned=False``), see
    :attr:`pooling`. Clips keep their length and size unless ``num_frames`` / ``size`` are given
    (JEDi gives neither). Runs jitted in batches of ``batch_size`` (the last one zero-padded), one
    compilation per clip shape, with float32 matmuls at ``matmul_precision``. Raises the one-line
    FileNotFoundError of :func:`load_vjepa` when the weights are absent.
    """

    name = "vjepa"

    def __init__(
        self,
        weights: str | os.PathLike,
        config: str | VJEPAConfig | Mapping[str, Any] = "vit_huge",
        probe: str | os.PathLike | None = None,
        batch_size: int = 8,
        num_frames: int | None = None,
        size: int | None = None,
        trust: bool = False,
        matmul_precision: str = "highest",
    ):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.config = get_vjepa_config(config)
        self.encoder_params = load_vjepa(weights, self.config, trust=trust)
        self.pooler_params = (
            None if probe is None else load_attentive_pooler(probe, self.config, trust=trust)
        )
        self.pooling = "mean" if probe is None else "attentive"
        self.batch_size = batch_size
        self.num_frames = num_frames
        self.size = size
        self.matmul_precision = matmul_precision
        self._forward = jax.jit(self._features)

    @property
    def dim(self) -> int:
        """Feature width ``D``."""
        return self.config.embed_dim

    def _features(self, encoder_params: Params, pooler_params: Params | None, videos: Array):
        if self.size is not None:
            b, t, _, _, c = videos.shape
            videos = jax.image.resize(videos, (b, t, self.size, self.size, c), "linear")
        return vjepa_features(encoder_params, pooler_params, videos, self.config)

    def _validate(self, videos: Any) -> np.ndarray:
        videos = np.asarray(videos, np.float32)
        if videos.ndim != 5 or videos.shape[-1] != 3 or videos.shape[1] == 0:
            raise ValueError(f"videos must be [V, T >= 1, H, W, 3], got shape {videos.shape}")
        if self.num_frames is not None:
            videos = resample_frames(videos, self.num_frames)
        cfg = self.config
        _, frames, height, width, _ = videos.shape
        side = min(height, width) if self.size is None else self.size
        if frames < cfg.tubelet_size or side < cfg.patch_size:
            raise ValueError(
                f"clips of {frames} frames at {height}x{width} give no tokens: V-JEPA needs at "
                f"least {cfg.tubelet_size} frames and {cfg.patch_size}x{cfg.patch_size} pixels"
            )
        low, high = (videos.min(), videos.max()) if videos.size else (0.0, 1.0)
        if low < -RANGE_TOLERANCE or high > 1 + RANGE_TOLERANCE:
            raise ValueError(
                f"videos must be in [0, 1], got values in [{low:.3g}, {high:.3g}]; "
                "divide uint8 frames by 255"
            )
        return videos

    def __call__(self, videos: Any) -> np.ndarray:
        """``videos [V, T, H, W, 3] float32 in [0, 1] -> features [V, D] float32``."""
        videos = self._validate(videos)
        count, batch = len(videos), self.batch_size
        features = []
        with jax.default_matmul_precision(self.matmul_precision):
            for start in range(0, count, batch):
                chunk = videos[start : start + batch]
                padding = np.zeros((batch - len(chunk), *chunk.shape[1:]), np.float32)
                padded = np.concatenate([chunk, padding])
                out = self._forward(self.encoder_params, self.pooler_params, padded)
                features.append(np.asarray(out)[: len(chunk)])
        return np.concatenate(features) if features else np.zeros((0, self.dim), np.float32)
