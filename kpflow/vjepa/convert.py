"""V-JEPA's PyTorch checkpoints to Flax params: the encoder (``vith16.pth.tar``) and the
attentive probe's pooler (``ssv2-probe.pth.tar``), read with torch (``weights_only`` unless
trusted) or from an ``.npz`` of the state dict.

Keys are matched to :mod:`kpflow.vjepa.model`'s parameter tree by name (``blocks_3/attn/qkv/kernel``
<-> ``blocks.3.attn.qkv.weight``); Linear and Conv3d weights are transposed to Flax's layout. A
missing, unexpected or mis-shaped key is a one-line ValueError naming the PyTorch key. Nothing is
downloaded: the weights are the user's (:data:`WEIGHTS_HINT`).
"""

from __future__ import annotations

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

from kpflow.vjepa.model import (
    AttentivePooler,
    Params,
    VisionTransformer,
    VJEPAConfig,
    get_vjepa_config,
)

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
