"""FOMM's multi-scale patch discriminator (least-squares GAN with feature matching), NHWC.

Spectral normalisation follows ``torch.nn.utils.spectral_norm``: the kernel is divided by its
largest singular value, estimated with one power iteration per training call from persistent
vectors ``u`` and ``v`` kept in the ``batch_stats`` collection (frozen in evaluation).
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from kpflow.fomm.ops import avg_pool2x, kp2gaussian, scale_key
from kpflow.keypoints import Keypoints


def _l2_normalize(x, eps: float = 1e-12):
    return x / jnp.maximum(jnp.linalg.norm(x), eps)


class SNConv(nn.Module):
    """``Conv2d(kernel_size, padding=0)``, spectrally normalised when ``spectral_norm``."""

    features: int
    kernel_size: int
    spectral_norm: bool = False

    @nn.compact
    def __call__(self, x, train: bool = False):
        k = self.kernel_size
        kernel = self.param("kernel", nn.initializers.lecun_normal(), (k, k, x.shape[-1], self.features))
        bias = self.param("bias", nn.initializers.zeros, (self.features,))
        if self.spectral_norm:
            # PyTorch flattens the OIHW weight to [O, I*k*k]; keep that order so u, v convert as-is.
            matrix = kernel.transpose(3, 2, 0, 1).reshape(self.features, -1)
            u = self.variable(
                "batch_stats", "u", lambda: _l2_normalize(jax.random.normal(self.make_rng("params"), (matrix.shape[0],)))
            )
            v = self.variable(
                "batch_stats", "v", lambda: _l2_normalize(jax.random.normal(self.make_rng("params"), (matrix.shape[1],)))
            )
            u_vec, v_vec = u.value, v.value
            if train and not self.is_initializing():
                w = jax.lax.stop_gradient(matrix)
                v_vec = _l2_normalize(w.T @ u_vec)
                u_vec = _l2_normalize(w @ v_vec)
                u.value, v.value = u_vec, v_vec
            sigma = u_vec @ (matrix @ v_vec)
            kernel = kernel / sigma
        y = jax.lax.conv_general_dilated(x, kernel, (1, 1), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC"))
        return y + bias


class DiscriminatorDownBlock(nn.Module):
    """conv (4x4, no padding) -> [instance norm] -> leaky relu 0.2 -> [2x2 average pool]."""

    features: int
    norm: bool = False
    pool: bool = False
    spectral_norm: bool = False
    kernel_size: int = 4

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = SNConv(self.features, self.kernel_size, self.spectral_norm, name="conv")(x, train)
        if self.norm:
            x = nn.InstanceNorm(epsilon=1e-5, name="norm")(x)
        x = nn.leaky_relu(x, 0.2)
        return avg_pool2x(x) if self.pool else x


class Discriminator(nn.Module):
    """``x [B, H, W, C]`` -> (feature maps of each block, prediction map ``[B, h, w, 1]``)."""

    num_channels: int = 3
    block_expansion: int = 64
    num_blocks: int = 4
    max_features: int = 512
    sn: bool = False
    use_kp: bool = False
    num_kp: int = 10
    kp_variance: float = 0.01

    @nn.compact
    def __call__(self, x, kp: Keypoints | None = None, train: bool = False):
        if self.use_kp:
            x = jnp.concatenate([x, kp2gaussian(kp.value, x.shape[1], x.shape[2], self.kp_variance)], axis=-1)
        feature_maps = []
        for i in range(self.num_blocks):
            x = DiscriminatorDownBlock(
                min(self.max_features, self.block_expansion * 2 ** (i + 1)),
                norm=i != 0,
                pool=i != self.num_blocks - 1,
                spectral_norm=self.sn,
                name=f"down_blocks_{i}",
            )(x, train)
            feature_maps.append(x)
        prediction = SNConv(1, 1, self.sn, name="conv")(x, train)
        return feature_maps, prediction


class MultiScaleDiscriminator(nn.Module):
    """One :class:`Discriminator` per scale, applied to ``pyramid["prediction_<scale>"]``; returns
    ``{"feature_maps_<scale>": [...], "prediction_map_<scale>": [B, h, w, 1]}``."""

    scales: Sequence[float] = (1,)
    kwargs: dict | None = None

    @nn.compact
    def __call__(self, pyramid: dict, kp: Keypoints | None = None, train: bool = False) -> dict:
        out = {}
        for scale in self.scales:
            key = scale_key(scale)
            disc = Discriminator(**dict(self.kwargs or {}), name="discs_" + key.replace(".", "-"))
            feature_maps, prediction = disc(pyramid["prediction_" + key], kp, train)
            out["feature_maps_" + key] = feature_maps
            out["prediction_map_" + key] = prediction
        return out
