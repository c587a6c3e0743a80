"""V-JEPA's video encoder and attentive pooler in Flax, with parameter names that follow its
PyTorch state dict (``src/models/vision_transformer.py``, ``attentive_pooler.py``), and
:func:`vjepa_features`: ``videos [B, T, H, W, 3] float32 in [0, 1]`` -> ``features [B, D]``.

Loading the PyTorch weights: :mod:`kpflow.vjepa.convert`. The JEDi reference this follows:
:mod:`kpflow.vjepa`.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

Array = jnp.ndarray
Params = dict[str, Any]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# LayerNorm epsilons: V-JEPA builds its encoder with 1e-6; the attentive probes keep torch's default.
ENCODER_NORM_EPS = 1e-6
PROBE_NORM_EPS = 1e-5
# The pooler query's initial spread (V-JEPA's trunc_normal_ std); loaded weights replace it.
QUERY_INIT_STD = 0.02


# --------------------------------------------------------------------------------------------
# Configs
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class VJEPAConfig:
    """A V-JEPA ``VisionTransformer`` (``src/models/vision_transformer.py``) and its native clip.

    ``num_frames`` x ``img_size`` is the clip the stored ``pos_embed`` was made for; other clip
    shapes interpolate it. ``uniform_power`` splits the sin-cos width equally between t, h and w.
    """

    embed_dim: int
    depth: int
    num_heads: int
    patch_size: int = 16
    tubelet_size: int = 2
    num_frames: int = 16
    img_size: int = 224
    mlp_ratio: float = 4.0
    uniform_power: bool = True

    @property
    def grid(self) -> tuple[int, int, int]:
        """Native token grid ``(t, h, w)``."""
        side = self.img_size // self.patch_size
        return (self.num_frames // self.tubelet_size, side, side)


CONFIGS: dict[str, VJEPAConfig] = {
    # V-JEPA's vit_large / vit_huge; the released checkpoints were trained with uniform_power: true.
    "vit_large": VJEPAConfig(embed_dim=1024, depth=24, num_heads=16),
    "vit_huge": VJEPAConfig(embed_dim=1280, depth=32, num_heads=16),
    # For tests: 2 x 4 x 4 tokens.
    "tiny": VJEPAConfig(
        embed_dim=48, depth=2, num_heads=4, patch_size=8, num_frames=4, img_size=32
    ),
}


def get_vjepa_config(config: str | VJEPAConfig | Mapping[str, Any]) -> VJEPAConfig:
    """A preset name, a :class:`VJEPAConfig`, or a mapping of its fields (``name`` picks the preset
    the other fields override, e.g. ``{"name": "vit_huge", "img_size": 384}``)."""
    if isinstance(config, VJEPAConfig):
        return config
    if isinstance(config, str):
        config = {"name": config}
    fields = dict(config)
    name = fields.pop("name", None)
    if name is not None and name not in CONFIGS:
        raise ValueError(f"unknown V-JEPA config {name!r}; choose one of {sorted(CONFIGS)}")
    known = {f.name for f in dataclasses.fields(VJEPAConfig)}
    if unknown := sorted(set(fields) - known):
        raise ValueError(f"unknown V-JEPA config fields {unknown}; known: {sorted(known)}")
    if name is None:
        return VJEPAConfig(**fields)
    return dataclasses.replace(CONFIGS[name], **fields)


# --------------------------------------------------------------------------------------------
# Positional embedding
# --------------------------------------------------------------------------------------------


def sincos_1d(dim: int, positions: np.ndarray) -> np.ndarray:
    """``[M, dim]``: ``sin(p w_k)`` for ``k < dim/2``, then ``cos(p w_k)``, with
    ``w_k = 10000^(-2k/dim)``."""
    if dim % 2:
        raise ValueError(f"a sin-cos embedding needs an even width, got {dim}")
    freqs = 1.0 / 10000.0 ** (np.arange(dim // 2, dtype=np.float64) / (dim / 2))
    angles = np.outer(np.asarray(positions, np.float64).reshape(-1), freqs)
    return np.concatenate([np.sin(angles), np.cos(angles)], axis=1)


def sincos_pos_embed_3d(
    embed_dim: int, grid: tuple[int, int, int], uniform_power: bool
) -> np.ndarray:
    """V-JEPA's fixed ``pos_embed [t*h*w, embed_dim] float32`` for the token ``grid (t, h, w)``.

    Tokens run t-major (then h, then w), as the Conv3d patches are flattened. Each token is
    ``[emb(t), emb(h), emb(w)]`` cut to ``embed_dim``; the widths are ``(D/2, D/4, D/4)``, or
    ``2 ceil(D/6)`` each with ``uniform_power``.
    """
    t, h, w = np.meshgrid(*(np.arange(n) for n in grid), indexing="ij")
    if uniform_power:
        widths = (2 * math.ceil(embed_dim / 6),) * 3
    else:
        widths = (embed_dim // 2, embed_dim // 4, embed_dim // 4)
    if sum(widths) < embed_dim:
        raise ValueError(f"embed_dim {embed_dim} must be a multiple of 4 without uniform_power")
    table = np.concatenate([sincos_1d(n, p) for n, p in zip(widths, (t, h, w))], axis=1)
    return table[:, :embed_dim].astype(np.float32)


def _linear_taps(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Source indices and weights of torch's ``interpolate(align_corners=False)`` on one axis."""
    source = np.maximum((np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5, 0.0)
    lower = np.minimum(np.floor(source).astype(np.int32), n_in - 1)
    upper = np.minimum(lower + 1, n_in - 1)
    return lower, upper, (source - lower).astype(np.float32)


def resize_pos_embed(pos_embed: Array, grid: tuple[int, ...], new_grid: tuple[int, ...]) -> Array:
    """``pos_embed [t*h*w, D] -> [t'*h'*w', D]``, trilinear as in V-JEPA's
    ``interpolate_pos_encoding`` (``F.interpolate(..., mode="trilinear")``)."""
    table = pos_embed.reshape(*grid, -1)
    for axis, (n_in, n_out) in enumerate(zip(grid, new_grid)):
        if n_in == n_out:
            continue
        lower, upper, frac = _linear_taps(n_in, n_out)
        frac = frac.reshape([-1 if a == axis else 1 for a in range(table.ndim)])
        table = jnp.take(table, lower, axis) * (1 - frac) + jnp.take(table, upper, axis) * frac
    return table.reshape(-1, table.shape[-1])


# --------------------------------------------------------------------------------------------
# Modules (parameter names follow V-JEPA's state dict; see kpflow.vjepa.convert)
# --------------------------------------------------------------------------------------------


def _layer_norm(eps: float, name: str) -> nn.LayerNorm:
    # Two-pass variance, as torch computes it: ViT residual streams have large outliers.
    return nn.LayerNorm(epsilon=eps, use_fast_variance=False, name=name)


def _attend(q: Array, k: Array, v: Array) -> Array:
    """Softmax attention of ``q [B, heads, n, d]`` over ``k, v [B, heads, N, d]``."""
    logits = jnp.einsum("bhnd,bhmd->bhnm", q, k) * q.shape[-1] ** -0.5
    return jnp.einsum("bhnm,bhmd->bhnd", jax.nn.softmax(logits, axis=-1), v)


class Mlp(nn.Module):
    """``fc2(gelu(fc1(x)))`` with torch's exact (erf) GELU."""

    hidden: int

    @nn.compact
    def __call__(self, x: Array) -> Array:
        y = nn.gelu(nn.Dense(self.hidden, name="fc1")(x), approximate=False)
        return nn.Dense(x.shape[-1], name="fc2")(y)


class SelfAttention(nn.Module):
    """Multi-head self-attention with one ``qkv`` projection (bias on), ``x [B, N, C]``."""

    num_heads: int

    @nn.compact
    def __call__(self, x: Array) -> Array:
        b, n, c = x.shape
        qkv = nn.Dense(3 * c, name="qkv")(x).reshape(b, n, 3, self.num_heads, c // self.num_heads)
        q, k, v = qkv.transpose(2, 0, 3, 1, 4)
        out = _attend(q, k, v).transpose(0, 2, 1, 3).reshape(b, n, c)
        return nn.Dense(c, name="proj")(out)


class Block(nn.Module):
    """Pre-norm transformer block (LayerNorm eps 1e-6)."""

    num_heads: int
    mlp_ratio: float

    @nn.compact
    def __call__(self, x: Array) -> Array:
        x = x + SelfAttention(self.num_heads, name="attn")(_layer_norm(ENCODER_NORM_EPS, "norm1")(x))
        hidden = int(x.shape[-1] * self.mlp_ratio)
        return x + Mlp(hidden, name="mlp")(_layer_norm(ENCODER_NORM_EPS, "norm2")(x))


class PatchEmbed3D(nn.Module):
    """Non-overlapping ``tubelet x patch x patch`` tubes -> ``[B, t, h, w, D]``."""

    config: VJEPAConfig

    @nn.compact
    def __call__(self, videos: Array) -> Array:
        cfg = self.config
        tube = (cfg.tubelet_size, cfg.patch_size, cfg.patch_size)
        return nn.Conv(cfg.embed_dim, tube, strides=tube, padding="VALID", name="proj")(videos)


class VisionTransformer(nn.Module):
    """V-JEPA's video encoder: ``videos [B, T, H, W, 3]`` (normalised) -> ``tokens [B, t*h*w, D]``.

    ``t = T // tubelet``, ``h = H // patch``, ``w = W // patch`` (remainders are dropped, as by the
    strided Conv3d); ``pos_embed`` is interpolated when ``(t, h, w)`` is not the native grid.
    """

    config: VJEPAConfig

    @nn.compact
    def __call__(self, videos: Array) -> Array:
        cfg = self.config
        x = PatchEmbed3D(cfg, name="patch_embed")(videos)
        b, t, h, w, d = x.shape
        native = sincos_pos_embed_3d(cfg.embed_dim, cfg.grid, cfg.uniform_power)
        pos_embed = self.param("pos_embed", lambda _: jnp.asarray(native)[None])
        if (t, h, w) != cfg.grid:
            pos_embed = resize_pos_embed(pos_embed[0], cfg.grid, (t, h, w))[None]
        x = x.reshape(b, t * h * w, d) + pos_embed
        for i in range(cfg.depth):
            x = Block(cfg.num_heads, cfg.mlp_ratio, name=f"blocks_{i}")(x)
        return _layer_norm(ENCODER_NORM_EPS, "norm")(x)


class CrossAttention(nn.Module):
    """Multi-head attention of ``queries [B, n, C]`` over ``tokens [B, N, C]``."""

    num_heads: int

    @nn.compact
    def __call__(self, queries: Array, tokens: Array) -> Array:
        (b, n, c), m = queries.shape, tokens.shape[1]
        heads, d = self.num_heads, c // self.num_heads
        q = nn.Dense(c, name="q")(queries).reshape(b, n, heads, d).transpose(0, 2, 1, 3)
        kv = nn.Dense(2 * c, name="kv")(tokens).reshape(b, m, 2, heads, d).transpose(2, 0, 3, 1, 4)
        out = _attend(q, kv[0], kv[1]).transpose(0, 2, 1, 3).reshape(b, n, c)
        return nn.Dense(c, name="proj")(out)


class CrossAttentionBlock(nn.Module):
    """``q + xattn(q, norm1(tokens))``, then ``+ mlp(norm2(q))``; LayerNorm eps 1e-5 (torch's
    default: the probes are built without V-JEPA's eps 1e-6)."""

    num_heads: int
    mlp_ratio: float

    @nn.compact
    def __call__(self, queries: Array, tokens: Array) -> Array:
        tokens = _layer_norm(PROBE_NORM_EPS, "norm1")(tokens)
        q = queries + CrossAttention(self.num_heads, name="xattn")(queries, tokens)
        hidden = int(q.shape[-1] * self.mlp_ratio)
        return q + Mlp(hidden, name="mlp")(_layer_norm(PROBE_NORM_EPS, "norm2")(q))


class AttentivePooler(nn.Module):
    """V-JEPA's ``AttentivePooler`` as the probes use it (one query, depth 1):
    ``tokens [B, N, D] -> features [B, D]``."""

    config: VJEPAConfig

    @nn.compact
    def __call__(self, tokens: Array) -> Array:
        dim = self.config.embed_dim
        query = self.param("query_tokens", nn.initializers.truncated_normal(QUERY_INIT_STD), (1, 1, dim))
        queries = jnp.broadcast_to(query, (tokens.shape[0], 1, dim))
        block = CrossAttentionBlock(
            self.config.num_heads, self.config.mlp_ratio, name="cross_attention_block"
        )
        return block(queries, tokens)[:, 0]


def vjepa_features(
    encoder_params: Params,
    pooler_params: Params | None,
    videos: Array,
    config: VJEPAConfig,
) -> Array:
    """``videos [B, T, H, W, 3] in [0, 1] -> features [B, D]``: ImageNet normalisation, encoder,
    then the attentive pooler, or the token mean when ``pooler_params`` is None."""
    mean, std = jnp.asarray(IMAGENET_MEAN), jnp.asarray(IMAGENET_STD)
    tokens = VisionTransformer(config).apply({"params": encoder_params}, (videos - mean) / std)
    if pooler_params is None:
        return tokens.mean(axis=1)
    return AttentivePooler(config).apply({"params": pooler_params}, tokens)

