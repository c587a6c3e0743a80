"""FOMM's dense motion network (Siarohin et al. 2019, Sec. 3.2, Eqs. 4 and 6), NHWC.

From source and driving keypoints it builds K+1 candidate backward flows (identity for the
background, and one first-order Taylor expansion per keypoint), warps the (downscaled) source with
each, and lets an hourglass predict a softmax mask that blends them into one dense flow, plus an
occlusion map.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from kpflow.fomm.blocks import Hourglass, conv
from kpflow.fomm.ops import (
    anti_alias_downsample,
    grid_sample,
    invert_2x2,
    kp2gaussian,
    make_coordinate_grid,
)
from kpflow.keypoints import Keypoints


def heatmap_representation(kp_driving: Keypoints, kp_source: Keypoints, height: int, width: int, variance: float):
    """Difference of Gaussian heatmaps, driving minus source, with a zero background map first:
    ``[B, h, w, K + 1]``."""
    heat = kp2gaussian(kp_driving.value, height, width, variance) - kp2gaussian(kp_source.value, height, width, variance)
    zeros = jnp.zeros(heat.shape[:-1] + (1,), heat.dtype)
    return jnp.concatenate([zeros, heat], axis=-1)


def sparse_motions(kp_driving: Keypoints, kp_source: Keypoints, height: int, width: int):
    """Backward flows ``[B, K + 1, h, w, 2]`` (driving frame -> source frame coordinates), Eq. 4:
    ``T(z) = kp_s + J_s J_d^-1 (z - kp_d)`` per keypoint, the identity first."""
    identity = make_coordinate_grid(height, width)  # [h, w, 2]
    offset = identity[None, None] - kp_driving.value[:, :, None, None, :]  # [B, K, h, w, 2]
    if kp_driving.jacobian is not None:
        jac = jnp.matmul(kp_source.jacobian, invert_2x2(kp_driving.jacobian))  # [B, K, 2, 2]
        offset = jnp.einsum("bkij,bkhwj->bkhwi", jac, offset)
    driving_to_source = offset + kp_source.value[:, :, None, None, :]
    batch = kp_driving.value.shape[0]
    identity = jnp.broadcast_to(identity[None, None], (batch, 1, height, width, 2))
    return jnp.concatenate([identity, driving_to_source], axis=1)


def deform_with_each(source, motions, align_corners: bool = False):
    """Warp ``source [B, h, w, C]`` by every flow of ``motions [B, M, h, w, 2]`` -> ``[B, M, h, w, C]``.

    The M flows are stacked along the height so one gather serves them all.
    """
    b, m, h, w, _ = motions.shape
    warped = grid_sample(source, motions.reshape(b, m * h, w, 2), align_corners=align_corners)
    return warped.reshape(b, m, h, w, source.shape[-1])


class DenseMotionNetwork(nn.Module):
    """``(source [B, H, W, C], kp_driving, kp_source)`` -> dict of

    - ``mask [B, h, w, K + 1]`` softmax weights of the K+1 motions,
    - ``sparse_deformed [B, K + 1, h, w, C]`` the source warped by each motion,
    - ``deformation [B, h, w, 2]`` the blended backward flow,
    - ``occlusion_map [B, h, w, 1]`` (only with ``estimate_occlusion_map``),

    at ``h, w = scale_factor * (H, W)``.
    """

    block_expansion: int
    num_blocks: int
    max_features: int
    num_kp: int
    num_channels: int
    estimate_occlusion_map: bool = False
    scale_factor: float = 1.0
    kp_variance: float = 0.01
    align_corners: bool = False
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, source, kp_driving: Keypoints, kp_source: Keypoints, train: bool = False) -> dict:
        if self.scale_factor != 1:
            source = anti_alias_downsample(source, self.scale_factor)
        b, h, w, c = source.shape
        heat = heatmap_representation(kp_driving, kp_source, h, w, self.kp_variance)  # [B, h, w, K+1]
        motions = sparse_motions(kp_driving, kp_source, h, w)  # [B, K+1, h, w, 2]
        deformed = deform_with_each(source, motions, self.align_corners)  # [B, K+1, h, w, C]

        # Channel order of the reference: for each motion k, its heatmap then its C warped channels.
        per_motion = jnp.concatenate([heat.transpose(0, 3, 1, 2)[..., None], deformed], axis=-1)
        inputs = per_motion.transpose(0, 2, 3, 1, 4).reshape(b, h, w, (self.num_kp + 1) * (c + 1))

        features = Hourglass(self.block_expansion, self.num_blocks, self.max_features, self.dtype, name="hourglass")(
            inputs, train
        )
        logits = conv(self.num_kp + 1, 7, 3, "mask", self.dtype)(features).astype(jnp.float32)
        mask = jax.nn.softmax(logits, axis=-1)
        deformation = jnp.einsum("bhwk,bkhwc->bhwc", mask, motions)
        out = {"mask": mask, "sparse_deformed": deformed, "deformation": deformation}
        if self.estimate_occlusion_map:
            occlusion = conv(1, 7, 3, "occlusion", self.dtype)(features).astype(jnp.float32)
            out["occlusion_map"] = jax.nn.sigmoid(occlusion)
        return out
