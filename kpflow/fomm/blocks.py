"""FOMM's shared blocks (the reference's ``modules/util.py``) as Flax linen modules, NHWC.

Every block takes ``train``: batch norm uses batch statistics (and updates ``batch_stats``) when
training and the running averages otherwise, as ``model.train()`` / ``model.eval()`` do in the
reference. Module names mirror the PyTorch attribute names (``conv``, ``norm``, ``down_blocks_0``
for ``down_blocks.0``), so official checkpoints convert by a mechanical key map
(:mod:`kpflow.fomm.convert`).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from kpflow.fomm.ops import avg_pool2x, upsample_nearest2x

Dtype = Any


def conv(features: int, kernel_size: int, padding: int, name: str, dtype: Dtype = jnp.float32) -> nn.Conv:
    """A PyTorch-style ``Conv2d(kernel_size, padding)``: symmetric explicit zero padding."""
    return nn.Conv(
        features,
        (kernel_size, kernel_size),
        padding=((padding, padding), (padding, padding)),
        dtype=dtype,
        name=name,
    )


def batch_norm(train: bool, name: str, dtype: Dtype = jnp.float32) -> nn.BatchNorm:
    """``nn.BatchNorm2d(affine=True)`` defaults: eps 1e-5, running-average momentum 0.1."""
    return nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5, dtype=dtype, name=name)


class SameBlock(nn.Module):
    """conv -> batch norm -> relu, same resolution."""

    features: int
    kernel_size: int = 3
    padding: int = 1
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = conv(self.features, self.kernel_size, self.padding, "conv", self.dtype)(x)
        return nn.relu(batch_norm(train, "norm", self.dtype)(x))


class DownBlock(nn.Module):
    """conv -> batch norm -> relu -> 2x2 average pool."""

    features: int
    kernel_size: int = 3
    padding: int = 1
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = conv(self.features, self.kernel_size, self.padding, "conv", self.dtype)(x)
        return avg_pool2x(nn.relu(batch_norm(train, "norm", self.dtype)(x)))


class UpBlock(nn.Module):
    """nearest 2x upsampling -> conv -> batch norm -> relu."""

    features: int
    kernel_size: int = 3
    padding: int = 1
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = conv(self.features, self.kernel_size, self.padding, "conv", self.dtype)(upsample_nearest2x(x))
        return nn.relu(batch_norm(train, "norm", self.dtype)(x))


class ResBlock(nn.Module):
    """Pre-activation residual block: x + conv2(relu(bn2(conv1(relu(bn1(x))))))."""

    kernel_size: int = 3
    padding: int = 1
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool = False):
        features = x.shape[-1]
        out = nn.relu(batch_norm(train, "norm1", self.dtype)(x))
        out = conv(features, self.kernel_size, self.padding, "conv1", self.dtype)(out)
        out = nn.relu(batch_norm(train, "norm2", self.dtype)(out))
        out = conv(features, self.kernel_size, self.padding, "conv2", self.dtype)(out)
        return out + x


class Encoder(nn.Module):
    """Hourglass encoder: ``num_blocks`` down blocks; returns the input and every block's output."""

    block_expansion: int
    num_blocks: int = 3
    max_features: int = 256
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool = False) -> list:
        outs = [x]
        for i in range(self.num_blocks):
            features = min(self.max_features, self.block_expansion * 2 ** (i + 1))
            outs.append(DownBlock(features, dtype=self.dtype, name=f"down_blocks_{i}")(outs[-1], train))
        return outs


class Decoder(nn.Module):
    """Hourglass decoder: up blocks, each followed by concatenation with the encoder's skip."""

    block_expansion: int
    num_blocks: int = 3
    max_features: int = 256
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, skips: list, train: bool = False):
        skips = list(skips)
        out = skips.pop()
        for j, i in enumerate(reversed(range(self.num_blocks))):
            features = min(self.max_features, self.block_expansion * 2**i)
            out = UpBlock(features, dtype=self.dtype, name=f"up_blocks_{j}")(out, train)
            out = jnp.concatenate([out, skips.pop()], axis=-1)
        return out


class Hourglass(nn.Module):
    """U-Net style hourglass; output has ``block_expansion + in_features`` channels."""

    block_expansion: int
    num_blocks: int = 3
    max_features: int = 256
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool = False):
        skips = Encoder(self.block_expansion, self.num_blocks, self.max_features, self.dtype, name="encoder")(x, train)
        return Decoder(self.block_expansion, self.num_blocks, self.max_features, self.dtype, name="decoder")(skips, train)
