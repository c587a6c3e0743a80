"""V-JEPA video features for the JEDi metric, in Flax, from user-supplied PyTorch weights.

JEDi (Luo et al. 2024, "Beyond FVD", arXiv:2410.05203) is 100 x the squared MMD, with the
polynomial kernel ``k(x, y) = (<x, y> / F)^2`` (scikit-learn's default ``gamma = 1 / F``,
``coef0 = 0``), between V-JEPA features of real and generated videos; the reference estimate is
the biased one (means over all pairs, diagonals included). What the reference code computes
(``oooolga/JEDi``: ``videojedi/V_JEPA.py``, ``JEDi.py``, ``utils.py``, ``mmd_polynomial.py``,
``configs/vith16_ssv2_16x2x3.yaml``; the same feature path in the ``videojedi`` 0.1.2 and 1.1.0
releases; its model code is the ``vjepa`` 0.1.2 package, a copy of ``facebookresearch/jepa/src``):

- **Model**: V-JEPA **ViT-H/16** (``vith16.pth.tar``: ``vit_huge``, 16 frames, tubelet 2,
  224 x 224, ``uniform_power: true``), its EMA ``target_encoder`` (falling back to ``encoder``),
  ``module.`` and ``backbone.`` prefixes stripped. The checkpoint stores ``pos_embed`` (a
  ``requires_grad=False`` parameter, so it is in the state dict) and that stored table is what
  runs; it equals the 3-D sin-cos table of :func:`sincos_pos_embed_3d`.
- **Features**: by default (``finetuned=True``) the **attentive pooler of the SSv2 attentive probe**
  (``ssv2-probe.pth.tar``, key ``classifier``, DDP ``module.`` prefix; one learned query, one
  cross-attention block with LayerNorm eps 1e-5, the classifier's linear head unused) applied to
  all encoder tokens: a 1280-d vector per video. ``finetuned=False`` gives the mean encoder token.
- **Preprocessing**: none besides per-channel ImageNet normalisation (mean 0.485, 0.456, 0.406; std
  0.229, 0.224, 0.225) of ``[B, T, 3, H, W]`` videos in [0, 1]. JEDi neither resizes nor samples
  frames: the clip goes in at its own length and size (its tests use 32 frames at 240 x 320), one
  clip, one view, and V-JEPA trilinearly interpolates ``pos_embed`` from the 8 x 14 x 14 grid to the
  input's token grid (``VisionTransformer.interpolate_pos_encoding``).

What is implemented here: :class:`VisionTransformer` (V-JEPA's encoder), :class:`AttentivePooler`,
:func:`load_vjepa` / :func:`load_attentive_pooler` for the two checkpoints, and
:class:`VJEPAFeatures`, whose default is the JEDi path above (``probe`` given: pooled features;
no ``probe``: token means). ``num_frames`` / ``size`` optionally resample clips to a fixed length
(uniform frame indices, last frame repeated when short) and a square size; JEDi does neither.
Normalisation is per channel over ``[..., 3]``, as JEDi documents it; its code hands
``[T, C, H, W]`` clips to vjepa's ``Normalize``, which broadcasts over the first axis (and fails
unless ``T == 3``), so per channel is the only reading that runs.

Nothing is downloaded: the weights must be supplied by the user (see :data:`WEIGHTS_HINT`).
Arrays are channels-last: ``videos [V, T, H, W, 3] float32 in [0, 1]``.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

Array = jnp.ndarray
Params = dict[str, Any]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

WEIGHTS_HINT = (
    "the V-JEPA weights must be supplied by the user (nothing is downloaded): get them from the "
    "facebookresearch/jepa README, e.g. ViT-H/16 vith16.pth.tar (what JEDi uses, "
    "https://dl.fbaipublicfiles.com/jepa/vith16/vith16.pth.tar) or ViT-L/16 vitl16.pth.tar "
    "(https://dl.fbaipublicfiles.com/jepa/vitl16/vitl16.pth.tar, config='vit_large')"
)
PROBE_HINT = (
    "the attentive probe must be supplied by the user (nothing is downloaded): JEDi uses the SSv2 "
    "probe of ViT-H/16, ssv2-probe.pth.tar from the facebookresearch/jepa README "
    "(https://dl.fbaipublicfiles.com/jepa/vith16/ssv2-probe.pth.tar)"
)
TORCH_HINT = (
    "reading a PyTorch checkpoint needs torch: pip install -e '.[torch]' "
    "(or pass an .npz of the state dict)"
)

# Prefixes of wrapped modules (DistributedDataParallel, V-JEPA's eval wrappers); JEDi strips them.
_WRAPPER_PREFIXES = ("module.", "backbone.")


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
# Modules (parameter names follow V-JEPA's state dict; see _torch_key)
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
        x = x + SelfAttention(self.num_heads, name="attn")(_layer_norm(1e-6, "norm1")(x))
        hidden = int(x.shape[-1] * self.mlp_ratio)
        return x + Mlp(hidden, name="mlp")(_layer_norm(1e-6, "norm2")(x))


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
        return _layer_norm(1e-6, "norm")(x)


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
        tokens = _layer_norm(1e-5, "norm1")(tokens)
        q = queries + CrossAttention(self.num_heads, name="xattn")(queries, tokens)
        hidden = int(q.shape[-1] * self.mlp_ratio)
        return q + Mlp(hidden, name="mlp")(_layer_norm(1e-5, "norm2")(q))


class AttentivePooler(nn.Module):
    """V-JEPA's ``AttentivePooler`` as the probes use it (one query, depth 1):
    ``tokens [B, N, D] -> features [B, D]``."""

    config: VJEPAConfig

    @nn.compact
    def __call__(self, tokens: Array) -> Array:
        dim = self.config.embed_dim
        query = self.param("query_tokens", nn.initializers.truncated_normal(0.02), (1, 1, dim))
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


# --------------------------------------------------------------------------------------------
# Checkpoints
# --------------------------------------------------------------------------------------------


def read_checkpoint(
    path: str | os.PathLike, trust: bool = False, hint: str = WEIGHTS_HINT
) -> Mapping[str, Any]:
    """The top-level dict of a ``.pth``/``.pth.tar`` (read by torch, ``weights_only`` unless
    ``trust``) or of an ``.npz``, whose ``"a/b"`` keys become ``{"a": {"b": ...}}``."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path!r} not found: {hint}")
    if path.endswith(".npz"):
        with np.load(path) as data:
            entries = {tuple(key.split("/", 1)): data[key] for key in data.files}
        return traverse_util.unflatten_dict(entries)
    try:
        import torch
    except ImportError as error:
        raise ImportError(TORCH_HINT) from error
    try:
        checkpoint = _torch_load(torch, path, trust)
    except Exception as error:  # noqa: BLE001 - torch raises many kinds; report them in one line
        retry = "" if trust else "; if you trust the file, retry with trust=True (allows pickles)"
        reason = str(error).splitlines()[0]
        raise ValueError(f"{path}: torch cannot read it: {reason}{retry}") from None
    if not isinstance(checkpoint, Mapping):
        kind = type(checkpoint).__name__
        raise TypeError(f"{path}: expected a dict (a state dict or V-JEPA checkpoint), got {kind}")
    return checkpoint


def _torch_load(torch: Any, path: str, trust: bool) -> Any:
    """``torch.load`` memory-mapped (V-JEPA checkpoints carry GBs of optimizer state we skip)."""
    try:
        return torch.load(path, map_location="cpu", weights_only=not trust, mmap=True)
    except RuntimeError as error:
        if "mmap" not in str(error):
            raise
        return torch.load(path, map_location="cpu", weights_only=not trust)  # legacy, non-zip


def _to_numpy(value: Any) -> np.ndarray:
    if hasattr(value, "detach"):  # a torch tensor; bfloat16 has no NumPy dtype
        value = value.detach().cpu()
        return (value.float() if value.is_floating_point() else value).numpy()
    return np.asarray(value)


def _strip_wrappers(key: str) -> str:
    while key.startswith(_WRAPPER_PREFIXES):
        key = key.split(".", 1)[1]
    return key


def select_state_dict(
    checkpoint: Mapping[str, Any], keys: tuple[str, ...], path: str
) -> dict[str, np.ndarray]:
    """The first ``checkpoint[key]`` for ``key in keys`` (or ``checkpoint`` itself if it is a bare
    state dict), wrapper prefixes (``module.``, ``backbone.``) stripped, values as NumPy."""
    for key in keys:
        if isinstance(checkpoint.get(key), Mapping):
            state = checkpoint[key]
            break
    else:
        if not checkpoint or not all(hasattr(v, "shape") for v in checkpoint.values()):
            found = sorted(checkpoint)[:10]
            raise ValueError(f"{path}: none of {list(keys)} in the checkpoint (top-level: {found})")
        state = checkpoint
    return {_strip_wrappers(k): _to_numpy(v) for k, v in state.items()}


def _torch_key(flax_path: tuple[str, ...]) -> str:
    """``("blocks_3", "attn", "qkv", "kernel")`` -> ``"blocks.3.attn.qkv.weight"``."""
    *modules, leaf = flax_path
    leaf = {"kernel": "weight", "scale": "weight"}.get(leaf, leaf)
    return re.sub(r"blocks_(\d+)", r"blocks.\1", ".".join([*modules, leaf]))


def _to_flax_layout(value: np.ndarray, leaf: str) -> np.ndarray:
    """Conv3d ``[O, I, t, h, w] -> [t, h, w, I, O]``; Linear ``[out, in] -> [in, out]``."""
    if leaf == "kernel":
        return value.transpose(2, 3, 4, 1, 0) if value.ndim == 5 else value.T
    return value


def _torch_shape(shape: tuple[int, ...], leaf: str) -> tuple[int, ...]:
    if leaf == "kernel":
        return (shape[4], shape[3], *shape[:3]) if len(shape) == 5 else shape[::-1]
    return shape


def convert_state_dict(
    state: Mapping[str, np.ndarray],
    template: Params,
    source: str,
    prefix: str = "",
    ignore: tuple[str, ...] = (),
) -> Params:
    """Flax params shaped like ``template`` from a V-JEPA state dict (keys ``prefix + torch key``).

    A missing, unexpected (not under an ``ignore`` prefix) or mis-shaped key is a one-line
    ValueError naming the PyTorch key; ``source`` names the file and config in it.
    """
    flat = traverse_util.flatten_dict(template)
    expected = {prefix + _torch_key(p): p for p in flat}
    for key in expected:
        if key not in state:
            raise ValueError(
                f"{source}: the state dict has no {key!r}; do the checkpoint and the config match?"
            )
    for key in state:
        if key not in expected and not key.startswith(ignore):
            raise ValueError(
                f"{source}: unexpected key {key!r} {tuple(state[key].shape)} in the state dict; "
                "do the checkpoint and the config match?"
            )
    params = {}
    for key, p in expected.items():
        value = _to_flax_layout(state[key], p[-1])
        if value.shape != flat[p].shape:
            raise ValueError(
                f"{source}: {key!r} has shape {tuple(state[key].shape)}, the config expects "
                f"{_torch_shape(flat[p].shape, p[-1])}"
            )
        params[p] = jnp.asarray(value, jnp.float32)
    return traverse_util.unflatten_dict(params)


def _param_shapes(module: nn.Module, input_shape: tuple[int, ...]) -> Params:
    """``module``'s params as shapes only (nothing is computed or allocated)."""
    example = jax.ShapeDtypeStruct(input_shape, jnp.float32)
    return jax.eval_shape(module.init, jax.random.key(0), example)["params"]


def _describe(path: str, cfg: VJEPAConfig) -> str:
    """``path`` and the config it is read with, for error messages."""
    clip = f"{cfg.num_frames}x{cfg.img_size}x{cfg.img_size}"
    model = f"embed_dim {cfg.embed_dim}, depth {cfg.depth}, patch {cfg.patch_size}"
    return f"{path} (config: {model}, clip {clip})"


def load_vjepa(
    path: str | os.PathLike,
    config: str | VJEPAConfig | Mapping[str, Any] = "vit_huge",
    checkpoint_key: str = "target_encoder",
    trust: bool = False,
) -> Params:
    """:class:`VisionTransformer` params from a V-JEPA checkpoint (``.pth``/``.pth.tar``) or an
    ``.npz`` of it (keys like ``"target_encoder/module.blocks.0.norm1.weight"``, or bare state-dict
    keys).

    Reads ``checkpoint[checkpoint_key]``, else ``checkpoint["encoder"]`` (as JEDi and V-JEPA's
    evals do), else a bare state dict; ``pos_embed`` comes from the checkpoint. Raises
    FileNotFoundError (one line, where to get the weights), ImportError (how to install torch) and
    ValueError (a missing, unexpected or mis-shaped key, named as in PyTorch).
    """
    config = get_vjepa_config(config)
    path = os.fspath(path)
    state = select_state_dict(read_checkpoint(path, trust), (checkpoint_key, "encoder"), path)
    clip = (1, config.num_frames, config.img_size, config.img_size, 3)
    template = _param_shapes(VisionTransformer(config), clip)
    return convert_state_dict(state, template, _describe(path, config))


def load_attentive_pooler(
    path: str | os.PathLike,
    config: str | VJEPAConfig | Mapping[str, Any] = "vit_huge",
    checkpoint_key: str = "classifier",
    trust: bool = False,
) -> Params:
    """:class:`AttentivePooler` params from a V-JEPA attentive-probe checkpoint (e.g. the SSv2
    ``ssv2-probe.pth.tar`` JEDi uses) or an ``.npz`` of it: the ``pooler.*`` entries of
    ``checkpoint[checkpoint_key]``; the classifier's ``linear.*`` head is ignored. Errors as
    :func:`load_vjepa`."""
    config = get_vjepa_config(config)
    path = os.fspath(path)
    state = select_state_dict(read_checkpoint(path, trust, PROBE_HINT), (checkpoint_key,), path)
    template = _param_shapes(AttentivePooler(config), (1, math.prod(config.grid), config.embed_dim))
    source = _describe(path, config)
    return convert_state_dict(state, template, source, prefix="pooler.", ignore=("linear.",))


# --------------------------------------------------------------------------------------------
# Feature extractor
# --------------------------------------------------------------------------------------------


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
        if low < -1e-3 or high > 1 + 1e-3:
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
