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
            jac_map = nn.Conv(
                4 * num_maps,
                (7, 7),
                padding=((self.pad, self.pad), (self.pad, self.pad)),
                kernel_init=nn.initializers.zeros,
                bias_init=_identity_jacobian_bias(num_maps),
                dtype=self.dtype,
                name="jacobian",
            )(features).astype(jnp.float32)
            jac_map = jac_map.reshape(b, h, w, num_maps, 4)
            jacobian = jnp.sum(heatmap[..., None] * jac_map, axis=(1, 2)).reshape(b, k, 2, 2)
        kp = Keypoints(value=value, jacobian=jacobian)
        return (kp, heatmap) if return_heatmap else kp
