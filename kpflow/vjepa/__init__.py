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

What is implemented here, by module:

- :mod:`kpflow.vjepa.model`: :class:`VisionTransformer` (V-JEPA's encoder), :class:`AttentivePooler`,
  the sin-cos position table, and :func:`vjepa_features` (normalise, encode, pool).
- :mod:`kpflow.vjepa.convert`: :func:`load_vjepa` / :func:`load_attentive_pooler`, the two
  PyTorch checkpoints converted to Flax params, with one-line errors for missing or mismatched keys.
- :mod:`kpflow.vjepa.extractor`: :class:`VJEPAFeatures`, whose default is the JEDi path above
  (``probe`` given: pooled features; no ``probe``: token means). ``num_frames`` / ``size``
  optionally resample clips to a fixed length (uniform frame indices, last frame repeated when
  short) and a square size; JEDi does neither.

Normalisation is per channel over ``[..., 3]``, as JEDi documents it; its code hands
``[T, C, H, W]`` clips to vjepa's ``Normalize``, which broadcasts over the first axis (and fails
unless ``T == 3``), so per channel is the only reading that runs.

Nothing is downloaded: the weights must be supplied by the user (see :data:`WEIGHTS_HINT`).
Arrays are channels-last: ``videos [V, T, H, W, 3] float32 in [0, 1]``.
"""

from kpflow.vjepa.convert import (
    PROBE_HINT,
    TORCH_HINT,
    WEIGHTS_HINT,
    convert_state_dict,
    load_attentive_pooler,
    load_vjepa,
    read_checkpoint,
    select_state_dict,
)
from kpflow.vjepa.extractor import VJEPAFeatures, resample_frames
from kpflow.vjepa.model import (
    CONFIGS,
    IMAGENET_MEAN,
    IMAGENET_STD,
    AttentivePooler,
    Block,
    CrossAttention,
    CrossAttentionBlock,
    Mlp,
    PatchEmbed3D,
    SelfAttention,
    VisionTransformer,
    VJEPAConfig,
    get_vjepa_config,
    resize_pos_embed,
    sincos_1d,
    sincos_pos_embed_3d,
    vjepa_features,
)

__all__ = [
    "CONFIGS",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "PROBE_HINT",
    "TORCH_HINT",
    "WEIGHTS_HINT",
    "AttentivePooler",
    "Block",
    "CrossAttention",
    "CrossAttentionBlock",
    "Mlp",
    "PatchEmbed3D",
    "SelfAttention",
    "VJEPAConfig",
    "VJEPAFeatures",
    "VisionTransformer",
    "convert_state_dict",
    "get_vjepa_config",
    "load_attentive_pooler",
    "load_vjepa",
    "read_checkpoint",
    "resample_frames",
    "resize_pos_embed",
    "select_state_dict",
    "sincos_1d",
    "sincos_pos_embed_3d",
    "vjepa_features",
]
