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
import jax
import jax.numpy as jnp
import numpy as np

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
    """conv -> batch norm -> relu, same resolution (then a 2x2 average pool when ``pool``)."""

    features: int
    kernel_size: int = 3
    padding: int = 1
    dtype: Dtype = jnp.float32
    pool: bool = False

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = conv(self.features, self.kernel_size, self.padding, "conv", self.dtype)(x)
        x = nn.relu(batch_norm(train, "norm", self.dtype)(x))
        return avg_pool2x(x) if self.pool else x


class DownBlock(SameBlock):
    """conv -> batch norm -> relu -> 2x2 average pool."""

    pool: bool = True


def _phase_taps() -> np.ndarray:
    """``[2, 2, 4, 3, 3]``: which 3x3 taps fall on each 2x2 tap of each output phase ``2a + b``."""
    rows = np.array([[[1, 0, 0], [0, 1, 1]], [[1, 1, 0], [0, 0, 1]]], np.float32)  # [a, p, u]
    taps = np.einsum("apu,bqv->pqabuv", rows, rows)  # [p, q, a, b, u, v]
    return taps.reshape(2, 2, 4, 3, 3)


_PHASE_TAPS = _phase_taps()
# Below this many input pixels, building the phase kernels (a pass over the weights) costs more than
# the 2.25x fewer multiply-adds save (measured on a 2-core CPU: break-even near 16x16 inputs).
PHASE_MIN_PIXELS = 256


def upsample2x_conv3x3(x, kernel, bias, dtype: Dtype = jnp.float32):
    """``conv3x3(pad 1)(nearest_upsample_2x(x))`` computed without the upsampled tensor.

    Each of the four output phases ``(a, b)`` (row parity, column parity) sees a 2x2 neighbourhood
    of ``x`` whose taps sum rows/columns of the 3x3 kernel: rows ``(W0, W1 + W2)`` for even output
    rows and ``(W0 + W1, W2)`` for odd ones, likewise for columns. One 2x2 convolution over ``x``
    (padded by 1) with the four phase kernels as output groups gives every phase, so the block
    costs 16 instead of 36 multiply-adds per input pixel and channel pair. Same result as the
    reference up to float rounding. ``x [B, H, W, Ci]``, ``kernel [3, 3, Ci, Co]`` -> ``[B, 2H, 2W, Co]``.
    """
    b, h, w, ci = x.shape
    co = kernel.shape[-1]
    # k[p, q, ci, phase, co] = sum_uv _PHASE_TAPS[p, q, phase, u, v] kernel[u, v, ci, co]: one small
    # matmul over the 9 taps (cheap even for 1024-channel kernels, unlike slicing and stacking).
    k = jnp.einsum("pqfuv,uvio->pqifo", _PHASE_TAPS, kernel).reshape(2, 2, ci, 4 * co).astype(dtype)
    y = jax.lax.conv_general_dilated(
        x.astype(dtype), k, (1, 1), ((1, 1), (1, 1)), dimension_numbers=("NHWC", "HWIO", "NHWC")
    )  # [B, H + 1, W + 1, 4 Co]
    y = y.reshape(b, h + 1, w + 1, 2, 2, co)
    out = jnp.stack(
        [jnp.stack([y[:, a : a + h, c : c + w, a, c] for c in (0, 1)], axis=3) for a in (0, 1)], axis=2
    )  # [B, H, 2, W, 2, Co]
    return out.reshape(b, 2 * h, 2 * w, co) + bias.astype(dtype)


class UpsampleConv(nn.Module):
    """Nearest 2x upsampling then a 3x3 convolution (padding 1); parameters as ``nn.Conv``.

    ``phases=True`` uses :func:`upsample2x_conv3x3` on inputs of at least ``PHASE_MIN_PIXELS``.
    """

    features: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x, phases: bool = True):
        kernel = self.param("kernel", nn.initializers.lecun_normal(), (3, 3, x.shape[-1], self.features))
        bias = self.param("bias", nn.initializers.zeros, (self.features,))
        if phases and x.shape[1] * x.shape[2] >= PHASE_MIN_PIXELS:
            return upsample2x_conv3x3(x, kernel, bias, self.dtype)
        y = jax.lax.conv_general_dilated(
            upsample_nearest2x(x).astype(self.dtype), kernel.astype(self.dtype), (1, 1), ((1, 1), (1, 1)),
            dimension_numbers=("NHWC", "HWIO", "NHWC"),
        )
        return y + bias.astype(self.dtype)


class UpBlock(nn.Module):
    """nearest 2x upsampling -> conv -> batch norm -> relu."""

    features: int
    kernel_size: int = 3
    padding: int = 1
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool = False):
        if (self.kernel_size, self.padding) == (3, 1):
            # Phase decomposition at inference only: in training its backward pass (through the
            # kernel rearrangement) cost more than it saved on a CPU (0.87 s vs 0.74 s per tiny step).
            x = UpsampleConv(self.features, self.dtype, name="conv")(x, phases=not train)
        else:
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


class _HourglassWidths(nn.Module):
    """Widths shared by the hourglass and its halves: block ``i`` has
    ``min(max_features, block_expansion * 2 ** (i + 1))`` channels."""

    block_expansion: int
    num_blocks: int = 3
    max_features: int = 256
    dtype: Dtype = jnp.float32


class Encoder(_HourglassWidths):
    """Hourglass encoder: ``num_blocks`` down blocks; returns the input and every block's output."""

    @nn.compact
    def __call__(self, x, train: bool = False) -> list:
        outs = [x]
        for i in range(self.num_blocks):
            features = min(self.max_features, self.block_expansion * 2 ** (i + 1))
            outs.append(DownBlock(features, dtype=self.dtype, name=f"down_blocks_{i}")(outs[-1], train))
        return outs


class Decoder(_HourglassWidths):
    """Hourglass decoder: up blocks, each followed by concatenation with the encoder's skip."""

    @nn.compact
    def __call__(self, skips: list, train: bool = False):
        skips = list(skips)
        out = skips.pop()
        for j, i in enumerate(reversed(range(self.num_blocks))):
            features = min(self.max_features, self.block_expansion * 2**i)
            out = UpBlock(features, dtype=self.dtype, name=f"up_blocks_{j}")(out, train)
            out = jnp.concatenate([out, skips.pop()], axis=-1)
        return out


class Hourglass(_HourglassWidths):
    """U-Net style hourglass; output has ``block_expansion + in_features`` channels."""

    @nn.compact
    def __call__(self, x, train: bool = False):
        skips = Encoder(self.block_expansion, self.num_blocks, self.max_features, self.dtype, name="encoder")(x, train)
        return Decoder(self.block_expansion, self.num_blocks, self.max_features, self.dtype, name="decoder")(skips, train)
