"""FOMM's keypoint detector (Siarohin et al. 2019, Sec. 3.1 and Eq. 5), NHWC.

frames -> anti-aliased downscaling -> hourglass -> one heatmap per keypoint (softmax with a
temperature over space) -> keypoint = spatial expectation of the coordinate grid under its heatmap.
Jacobians come from a second head: per-pixel 2x2 matrices averaged under each keypoint's heatmap,
initialised to the identity (zero kernel, bias ``[1, 0, 0, 1]``).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from kpflow.fomm.blocks import Hourglass, conv
from kpflow.fomm.ops import anti_alias_downsample, make_coordinate_grid
from kpflow.keypoints import Keypoints


def _identity_jacobian_bias(num_maps: int):
    def init(key, shape, dtype=jnp.float32):
        del key
        return jnp.asarray(np.tile(np.array([1.0, 0.0, 0.0, 1.0], np.float32), num_maps), dtype).reshape(shape)

    return init


def heatmap_weighted_patches(features, heatmap, size: int):
    """``G[b, c, y, x, k] = sum_hw heatmap[b, h, w, k] features[b, h + y, w + x, c]`` -> ``[B, C, s, s, K]``.

    The per-keypoint heatmap-weighted average of every ``size x size`` patch of ``features``: the
    heatmap acts as the kernel of a correlation over the features.
    """

    def one(f, h):  # f [H, W, C], h [h, w, K] -> [C, s, s, K]
        return jax.lax.conv_general_dilated(
            f.transpose(2, 0, 1)[..., None], h[:, :, None, :], (1, 1), "VALID",
            dimension_numbers=("NHWC", "HWIO", "NHWC"),
        )

    out = jax.vmap(one)(features, heatmap.astype(features.dtype))
    assert out.shape[2] == size, (out.shape, size)
    return out


class JacobianHead(nn.Module):
    """The reference's ``jacobian`` head: a 7x7 conv to ``4 * num_maps`` channels, averaged under each
    keypoint's heatmap, initialised to the identity (zero kernel, bias ``[1, 0, 0, 1]``).

    ``sum_hw heatmap * conv(features)`` is linear in the features, so it is computed in the other
    order: first the heatmap-weighted 7x7 patches of the features (a correlation with the heatmap as
    kernel, ``K`` outputs), then one contraction with the kernel. Same parameters and result as
    conv-then-average, in about a third of the multiply-adds. Used at inference; training keeps the
    reference's order (``weighted_patches=False``), whose backward pass is 5x cheaper on a CPU.
    """

    num_maps: int
    pad: int = 0
    dtype: Any = jnp.float32
    kernel_size: int = 7

    @nn.compact
    def __call__(self, features, heatmap, weighted_patches: bool = True):
        k = self.kernel_size
        channels = features.shape[-1]
        kernel = self.param("kernel", nn.initializers.zeros, (k, k, channels, 4 * self.num_maps))
        bias = self.param("bias", _identity_jacobian_bias(self.num_maps), (4 * self.num_maps,))
        b, h, w, num_kp = heatmap.shape
        if not weighted_patches:  # the reference's order: conv, then the heatmap-weighted sum
            jac_map = jax.lax.conv_general_dilated(
                features.astype(self.dtype), kernel.astype(self.dtype), (1, 1),
                ((self.pad, self.pad), (self.pad, self.pad)), dimension_numbers=("NHWC", "HWIO", "NHWC"),
            ).astype(jnp.float32) + bias
            jac_map = jac_map.reshape(b, h, w, self.num_maps, 4)
            return jnp.sum(heatmap[..., None] * jac_map, axis=(1, 2)).reshape(b, num_kp, 2, 2)
        if self.pad:
            features = jnp.pad(features, ((0, 0), (self.pad, self.pad), (self.pad, self.pad), (0, 0)))
        patches = heatmap_weighted_patches(features.astype(self.dtype), heatmap, k).astype(jnp.float32)
        kernel = kernel.reshape(k, k, channels, self.num_maps, 4)
        if self.num_maps == 1:
            jac = jnp.einsum("bcyxk,yxcf->bkf", patches, kernel[:, :, :, 0]) + bias[None, None, :]
        else:
            jac = jnp.einsum("bcyxk,yxckf->bkf", patches, kernel) + bias.reshape(self.num_maps, 4)[None]
        # The heatmap sums to one, so the bias passes through unweighted.
        return jac.reshape(b, num_kp, 2, 2)


class KPDetector(nn.Module):
    """``frames [B, H, W, C] in [0, 1]`` -> :class:`Keypoints` (``value [B, K, 2]``, ``jacobian [B, K, 2, 2]``).

    With ``estimate_jacobian=False`` the jacobian is ``None``. ``single_jacobian_map`` shares one
    Jacobian map among all keypoints (the mgif config). ``pad`` is the padding of the 7x7 heads
    (0 in the official configs, so heatmaps are 6 pixels smaller than the features).
    """

    block_expansion: int
    num_kp: int
    num_channels: int
    max_features: int
    num_blocks: int
    temperature: float
    estimate_jacobian: bool = False
    scale_factor: float = 1.0
    single_jacobian_map: bool = False
    pad: int = 0
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, frames, train: bool = False, return_heatmap: bool = False):
        x = anti_alias_downsample(frames, self.scale_factor) if self.scale_factor != 1 else frames
        features = Hourglass(
            self.block_expansion, self.num_blocks, self.max_features, self.dtype, name="predictor"
        )(x, train)
        logits = conv(self.num_kp, 7, self.pad, "kp", self.dtype)(features).astype(jnp.float32)
        b, h, w, k = logits.shape
        heatmap = jax.nn.softmax(logits.reshape(b, h * w, k) / self.temperature, axis=1).reshape(b, h, w, k)
        grid = make_coordinate_grid(h, w)  # [h, w, 2]
        value = jnp.einsum("bhwk,hwc->bkc", heatmap, grid)

        jacobian = None
        if self.estimate_jacobian:
            num_maps = 1 if self.single_jacobian_map else self.num_kp
            jacobian = JacobianHead(num_maps, self.pad, self.dtype, name="jacobian")(
                features, heatmap, weighted_patches=not train
            )
        kp = Keypoints(value=value, jacobian=jacobian)
        return (kp, heatmap) if return_heatmap else kp
