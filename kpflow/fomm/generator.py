"""FOMM's occlusion-aware generator (Siarohin et al. 2019, Sec. 3.3, Eq. 8), NHWC.

Encode the source image, warp its features by the dense backward flow of the dense motion network,
multiply by the occlusion map, run residual bottleneck blocks and decode to the driving frame.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from kpflow.fomm.blocks import DownBlock, ResBlock, SameBlock, UpBlock, conv
from kpflow.fomm.dense_motion import DenseMotionNetwork
from kpflow.fomm.ops import grid_sample, resize_bilinear
from kpflow.keypoints import Keypoints


def deform_input(x, deformation, align_corners: bool = False):
    """Warp ``x [B, H, W, C]`` by ``deformation [B, h, w, 2]``, resizing the flow (bilinear) to ``H, W``."""
    _, height, width, _ = x.shape
    deformation = resize_bilinear(deformation, height, width)
    return grid_sample(x, deformation, align_corners=align_corners)


class Bottleneck(nn.Module):
    """The reference's ``nn.Sequential`` of residual blocks named ``r0, r1, ...``."""

    num_blocks: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool = False):
        for i in range(self.num_blocks):
            x = ResBlock(dtype=self.dtype, name=f"r{i}")(x, train)
        return x


class OcclusionAwareGenerator(nn.Module):
    """``(source [B, H, W, C] in [0, 1], kp_source, kp_driving)`` -> dict with ``prediction
    [B, H, W, C]`` in [0, 1], and (with dense motion) ``mask``, ``sparse_deformed``,
    ``occlusion_map`` and ``deformed`` (the source warped by the dense flow, full resolution)."""

    num_channels: int
    num_kp: int
    block_expansion: int
    max_features: int
    num_down_blocks: int
    num_bottleneck_blocks: int
    estimate_occlusion_map: bool = False
    dense_motion_params: dict | None = None
    estimate_jacobian: bool = False
    align_corners: bool = False
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, source, kp_source: Keypoints | None = None, kp_driving: Keypoints | None = None,
                 train: bool = False, source_features=None, encode_only: bool = False) -> dict:
        """The whole generator; or, for a receiver that animates one source many times, its halves.

        ``encode_only=True`` returns ``{"source_features": ...}``, the encoder's output for
        ``source`` (which depends on the source alone); passing those back as ``source_features``
        skips the encoder and gives the same result as the whole generator. Parameters are shared:
        one set of variables serves all three calls.
        """
        if source_features is None:
            out = SameBlock(self.block_expansion, kernel_size=7, padding=3, dtype=self.dtype, name="first")(source, train)
            for i in range(self.num_down_blocks):
                features = min(self.max_features, self.block_expansion * 2 ** (i + 1))
                out = DownBlock(features, dtype=self.dtype, name=f"down_blocks_{i}")(out, train)
            if encode_only:
                return {"source_features": out}
        else:
            out = source_features

        result = {}
        if self.dense_motion_params is not None:
            motion = DenseMotionNetwork(
                num_kp=self.num_kp,
                num_channels=self.num_channels,
                estimate_occlusion_map=self.estimate_occlusion_map,
                align_corners=self.align_corners,
                dtype=self.dtype,
                name="dense_motion_network",
                **dict(self.dense_motion_params),
            )(source, kp_driving=kp_driving, kp_source=kp_source, train=train)
            result["mask"] = motion["mask"]
            result["sparse_deformed"] = motion["sparse_deformed"]
            deformation = motion["deformation"]
            out = deform_input(out, deformation, self.align_corners)
            if "occlusion_map" in motion:
                occlusion = motion["occlusion_map"]
                result["occlusion_map"] = occlusion
                out = out * resize_bilinear(occlusion, out.shape[1], out.shape[2]).astype(out.dtype)
            result["deformed"] = deform_input(source, deformation, self.align_corners)

        out = Bottleneck(self.num_bottleneck_blocks, self.dtype, name="bottleneck")(out, train)
        for i in range(self.num_down_blocks):
            features = min(self.max_features, self.block_expansion * 2 ** (self.num_down_blocks - i - 1))
            out = UpBlock(features, dtype=self.dtype, name=f"up_blocks_{i}")(out, train)
        out = conv(self.num_channels, 7, 3, "final", self.dtype)(out)
        result["prediction"] = jax.nn.sigmoid(out.astype(jnp.float32))
        return result
