"""Shared image ops of FOMM, NHWC, with the reference PyTorch semantics.

Coordinates follow FOMM: a point is ``(x, y)`` in ``[-1, 1]``, ``x`` along the width. The
coordinate grid puts ``-1`` and ``+1`` on the centres of the first and last pixels (the
``align_corners=True`` convention), while the reference calls ``F.grid_sample`` and
``F.interpolate`` with PyTorch's defaults (``align_corners=False`` since PyTorch 1.3). Both
conventions are available here; the defaults reproduce the reference model's outputs.

All functions are pure and jit/vmap/grad friendly.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np


def make_coordinate_grid(height: int, width: int, dtype=jnp.float32) -> jnp.ndarray:
    """``[height, width, 2]`` grid of ``(x, y)`` in ``[-1, 1]``, ``-1``/``+1`` on the border pixels."""
    x = 2.0 * jnp.arange(width, dtype=dtype) / max(width - 1, 1) - 1.0
    y = 2.0 * jnp.arange(height, dtype=dtype) / max(height - 1, 1) - 1.0
    xx = jnp.broadcast_to(x[None, :], (height, width))
    yy = jnp.broadcast_to(y[:, None], (height, width))
    return jnp.stack([xx, yy], axis=-1)


def _unnormalize(coord: jnp.ndarray, size: int, align_corners: bool) -> jnp.ndarray:
    """Normalised coordinate in ``[-1, 1]`` -> pixel index (PyTorch's ``grid_sampler_unnormalize``)."""
    if align_corners:
        return (coord + 1.0) / 2.0 * (size - 1)
    return ((coord + 1.0) * size - 1.0) / 2.0


def _reflect(coord: jnp.ndarray, twice_low: float, twice_high: float) -> jnp.ndarray:
    """Reflect ``coord`` into ``[twice_low / 2, twice_high / 2]`` (PyTorch's ``reflect_coordinates``)."""
    if twice_low == twice_high:
        return jnp.zeros_like(coord)
    low = twice_low / 2.0
    span = (twice_high - twice_low) / 2.0
    coord = jnp.abs(coord - low)
    extra = jnp.mod(coord, span)
    flips = jnp.floor(coord / span)
    return jnp.where(jnp.mod(flips, 2.0) == 0.0, extra + low, span - extra + low)


def _source_index(coord, size: int, align_corners: bool, padding_mode: str):
    index = _unnormalize(coord, size, align_corners)
    if padding_mode == "border":
        index = jnp.clip(index, 0.0, size - 1)
    elif padding_mode == "reflection":
        if align_corners:
            index = _reflect(index, 0.0, 2.0 * (size - 1))
        else:
            index = _reflect(index, -1.0, 2.0 * size - 1.0)
        index = jnp.clip(index, 0.0, size - 1)
    elif padding_mode != "zeros":
        raise ValueError(f"padding_mode must be 'zeros', 'border' or 'reflection', not {padding_mode!r}")
    return index


def grid_sample(
    image: jnp.ndarray,
    grid: jnp.ndarray,
    *,
    padding_mode: str = "zeros",
    align_corners: bool = False,
) -> jnp.ndarray:
    """Bilinear sampling of ``image [B, H, W, C]`` at ``grid [B, h, w, 2]`` -> ``[B, h, w, C]``.

    The semantics of ``torch.nn.functional.grid_sample(mode="bilinear")``: ``grid[..., 0]`` is x
    (width), ``grid[..., 1]`` is y; with ``padding_mode="zeros"`` every out-of-range corner counts
    as zero, so points outside the image fade to zero over one pixel. Differentiable in both the
    image and the grid.
    """
    _, height, width, _ = image.shape
    ix = _source_index(grid[..., 0], width, align_corners, padding_mode)
    iy = _source_index(grid[..., 1], height, align_corners, padding_mode)
    x0 = jnp.floor(ix)
    y0 = jnp.floor(iy)
    x1, y1 = x0 + 1.0, y0 + 1.0
    wx1, wy1 = ix - x0, iy - y0
    wx0, wy0 = 1.0 - wx1, 1.0 - wy1

    batch = jnp.arange(image.shape[0])[:, None, None]

    def corner(xc, yc, weight):
        inside = (xc >= 0) & (xc <= width - 1) & (yc >= 0) & (yc <= height - 1)
        xi = jnp.clip(xc, 0, width - 1).astype(jnp.int32)
        yi = jnp.clip(yc, 0, height - 1).astype(jnp.int32)
        values = image[batch, yi, xi]  # [B, h, w, C]
        return values * jnp.where(inside, weight, 0.0)[..., None].astype(image.dtype)

    return (
        corner(x0, y0, wx0 * wy0)
        + corner(x1, y0, wx1 * wy0)
        + corner(x0, y1, wx0 * wy1)
        + corner(x1, y1, wx1 * wy1)
    )


def kp2gaussian(value: jnp.ndarray, height: int, width: int, variance: float) -> jnp.ndarray:
    """Gaussian-like heatmaps ``[B, h, w, K]`` of keypoints ``value [B, K, 2]`` (FOMM's ``kp2gaussian``)."""
    grid = make_coordinate_grid(height, width, value.dtype)  # [h, w, 2]
    diff = grid[None, :, :, None, :] - value[:, None, None, :, :]  # [B, h, w, K, 2]
    return jnp.exp(-0.5 * jnp.sum(diff**2, axis=-1) / variance)


def resize_bilinear(x: jnp.ndarray, height: int, width: int) -> jnp.ndarray:
    """``x [B, H, W, C]`` -> ``[B, height, width, C]``, as ``F.interpolate(mode="bilinear")``
    with ``align_corners=False`` (half-pixel centres, source index clamped at 0, no antialias)."""
    _, in_h, in_w, _ = x.shape
    if (in_h, in_w) == (height, width):
        return x

    def axis_weights(in_size, out_size):
        src = (jnp.arange(out_size, dtype=jnp.float32) + 0.5) * (in_size / out_size) - 0.5
        src = jnp.maximum(src, 0.0)
        i0 = jnp.minimum(jnp.floor(src).astype(jnp.int32), in_size - 1)
        i1 = jnp.minimum(i0 + 1, in_size - 1)
        lam = src - i0
        return i0, i1, lam

    y0, y1, ly = axis_weights(in_h, height)
    x0, x1, lx = axis_weights(in_w, width)
    ly = ly[None, :, None, None].astype(x.dtype)
    lx = lx[None, None, :, None].astype(x.dtype)
    rows = x[:, y0] * (1 - ly) + x[:, y1] * ly  # [B, height, W, C]
    return rows[:, :, x0] * (1 - lx) + rows[:, :, x1] * lx


def upsample_nearest2x(x: jnp.ndarray) -> jnp.ndarray:
    """``[B, H, W, C]`` -> ``[B, 2H, 2W, C]`` (``F.interpolate(scale_factor=2)``, nearest)."""
    return jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)


def avg_pool2x(x: jnp.ndarray) -> jnp.ndarray:
    """2x2 average pooling with stride 2; odd sizes are floored like ``nn.AvgPool2d``."""
    b, h, w, c = x.shape
    x = x[:, : h - h % 2, : w - w % 2]
    return x.reshape(b, h // 2, 2, w // 2, 2, c).mean(axis=(2, 4))


def anti_alias_kernel(scale: float) -> tuple[np.ndarray, int, int]:
    """The Gaussian of FOMM's ``AntiAliasInterpolation2d``: ``(kernel [k, k], pad_before, pad_after)``.

    ``sigma = (1 / scale - 1) / 2`` and ``k = 2 * round(4 sigma) + 1``, normalised to sum 1.
    """
    sigma = (1.0 / scale - 1.0) / 2.0
    size = 2 * round(sigma * 4) + 1
    ka = size // 2
    kb = ka - 1 if size % 2 == 0 else ka
    coords = np.arange(size, dtype=np.float32)
    mean = (size - 1) / 2.0
    g = np.exp(-((coords - mean) ** 2) / (2.0 * sigma**2)).astype(np.float32)
    kernel = g[:, None] * g[None, :]
    return (kernel / kernel.sum()).astype(np.float32), ka, kb


def anti_alias_downsample(x: jnp.ndarray, scale: float) -> jnp.ndarray:
    """Band-limited downscaling of ``x [B, H, W, C]`` by ``scale`` (FOMM's ``AntiAliasInterpolation2d``).

    Gaussian blur with zero padding, then nearest subsampling: output pixel ``i`` is blurred pixel
    ``floor(i / scale)``. When ``1 / scale`` is an integer the two fuse into one strided depthwise
    convolution, which computes only the kept pixels.
    """
    if scale == 1.0:
        return x
    kernel, ka, kb = anti_alias_kernel(scale)
    channels = x.shape[-1]
    weight = jnp.asarray(np.tile(kernel[:, :, None, None], (1, 1, 1, channels)), dtype=x.dtype)
    inv = 1.0 / scale
    stride = round(inv) if math.isclose(inv, round(inv)) else 1
    out_h, out_w = math.floor(x.shape[1] * scale), math.floor(x.shape[2] * scale)
    out = jax.lax.conv_general_dilated(
        x,
        weight,
        window_strides=(stride, stride),
        padding=((ka, kb), (ka, kb)),
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
        feature_group_count=channels,
    )
    if stride > 1:
        return out[:, :out_h, :out_w]
    rows = np.minimum(np.floor(np.arange(out_h) * inv).astype(np.int32), out.shape[1] - 1)
    cols = np.minimum(np.floor(np.arange(out_w) * inv).astype(np.int32), out.shape[2] - 1)
    return out[:, rows][:, :, cols]


def invert_2x2(matrix: jnp.ndarray) -> jnp.ndarray:
    """Inverse of ``[..., 2, 2]`` matrices in closed form (adjugate over determinant)."""
    a, b = matrix[..., 0, 0], matrix[..., 0, 1]
    c, d = matrix[..., 1, 0], matrix[..., 1, 1]
    det = a * d - b * c
    adj = jnp.stack([jnp.stack([d, -b], -1), jnp.stack([-c, a], -1)], -2)
    return adj / det[..., None, None]


def scale_key(scale) -> str:
    """``1``, ``1.0 -> "1"``; ``0.5 -> "0.5"``: the suffix of pyramid keys ``prediction_<scale>``,
    the same whether a config holds the scale as an int or a float."""
    return f"{float(scale):g}"
