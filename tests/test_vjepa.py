"""kpflow.vjepa: parity with a PyTorch V-JEPA reference, the sin-cos table, checkpoint errors.

The reference is a tiny random model built here with V-JEPA's state-dict names and forward
(``src/models/vision_transformer.py``, ``utils/modules.py``, ``attentive_pooler.py``), saved as
V-JEPA checkpoints are wrapped: ``{"target_encoder": {"module.<key>": ...}, ...}`` and
``{"classifier": {"module.pooler.<key>": ..., "module.linear.<key>": ...}, ...}``.
"""

import math
import sys

import jax
import numpy as np
import pytest

from kpflow import vjepa

CFG = vjepa.CONFIGS["tiny"]
TORCH_REASON = (
    "torch is not installed (pip install -e '.[torch]'): "
    "the parity tests need the PyTorch reference"
)


# --------------------------------------------------------------------------------------------
# PyTorch reference: V-JEPA's modules as plain containers with its state-dict names
# --------------------------------------------------------------------------------------------


def _mlp(nn, dim, ratio):
    mlp = nn.Module()
    mlp.fc1, mlp.fc2 = nn.Linear(dim, int(dim * ratio)), nn.Linear(int(dim * ratio), dim)
    return mlp


def reference_encoder(torch, cfg):
    nn, dim = torch.nn, cfg.embed_dim
    model = nn.Module()
    model.patch_embed = nn.Module()
    tube = (cfg.tubelet_size, cfg.patch_size, cfg.patch_size)
    model.patch_embed.proj = nn.Conv3d(3, dim, kernel_size=tube, stride=tube)
    model.pos_embed = nn.Parameter(torch.zeros(1, math.prod(cfg.grid), dim), requires_grad=False)
    model.blocks = nn.ModuleList()
    for _ in range(cfg.depth):
        block = nn.Module()
        block.norm1, block.norm2 = nn.LayerNorm(dim, eps=1e-6), nn.LayerNorm(dim, eps=1e-6)
        block.attn = nn.Module()
        block.attn.qkv, block.attn.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        block.mlp = _mlp(nn, dim, cfg.mlp_ratio)
        model.blocks.append(block)
    model.norm = nn.LayerNorm(dim, eps=1e-6)
    return model


def reference_classifier(torch, cfg, num_classes=5):
    nn, dim = torch.nn, cfg.embed_dim
    classifier = nn.Module()
    classifier.pooler = pooler = nn.Module()
    pooler.query_tokens = nn.Parameter(torch.zeros(1, 1, dim))
    pooler.cross_attention_block = block = nn.Module()
    block.norm1, block.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)  # torch's default eps 1e-5
    block.xattn = nn.Module()
    block.xattn.q, block.xattn.kv = nn.Linear(dim, dim), nn.Linear(dim, 2 * dim)
    block.xattn.proj = nn.Linear(dim, dim)
    block.mlp = _mlp(nn, dim, cfg.mlp_ratio)
    classifier.linear = nn.Linear(dim, num_classes)
    return classifier


def randomize(torch, module, seed):
    """Random weights everywhere, LayerNorm scales near 1, so every tensor's mapping is tested."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            noise = torch.randn(p.shape, generator=generator)
            is_norm_scale = "norm" in name and name.endswith("weight")
            p.copy_(1 + 0.1 * noise if is_norm_scale else 0.2 * noise)


def torch_mlp(torch, mlp, x):
    return mlp.fc2(torch.nn.functional.gelu(mlp.fc1(x)))


def torch_encoder(torch, model, cfg, video):
    """V-JEPA ``VisionTransformer.forward`` on ``video [B, 3, T, H, W]`` (normalised)."""
    F, heads = torch.nn.functional, cfg.num_heads
    _, _, frames, height, width = video.shape
    pos_embed = model.pos_embed
    if (frames, height, width) != (cfg.num_frames, cfg.img_size, cfg.img_size):
        grid = cfg.grid
        new_grid = (frames // cfg.tubelet_size, height // cfg.patch_size, width // cfg.patch_size)
        scale = tuple(new / old for new, old in zip(new_grid, grid))
        table = pos_embed.reshape(1, *grid, cfg.embed_dim).permute(0, 4, 1, 2, 3)
        table = F.interpolate(table, scale_factor=scale, mode="trilinear")
        pos_embed = table.permute(0, 2, 3, 4, 1).reshape(1, -1, cfg.embed_dim)
    x = model.patch_embed.proj(video).flatten(2).transpose(1, 2) + pos_embed
    for block in model.blocks:
        b, n, c = x.shape
        qkv = block.attn.qkv(block.norm1(x)).reshape(b, n, 3, heads, c // heads)
        qkv = qkv.permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])
        x = x + block.attn.proj(y.transpose(1, 2).reshape(b, n, c))
        x = x + torch_mlp(torch, block.mlp, block.norm2(x))
    return model.norm(x)


def torch_pooler(torch, classifier, cfg, tokens):
    """V-JEPA ``AttentivePooler.forward(tokens).squeeze(1)``."""
    pooler, heads = classifier.pooler, cfg.num_heads
    block = pooler.cross_attention_block
    q = pooler.query_tokens.repeat(len(tokens), 1, 1)
    x = block.norm1(tokens)
    (b, n, c), m = q.shape, x.shape[1]
    qh = block.xattn.q(q).reshape(b, n, heads, c // heads).permute(0, 2, 1, 3)
    kv = block.xattn.kv(x).reshape(b, m, 2, heads, c // heads).permute(2, 0, 3, 1, 4)
    y = torch.nn.functional.scaled_dot_product_attention(qh, kv[0], kv[1])
    q = q + block.xattn.proj(y.transpose(1, 2).reshape(b, n, c))
    q = q + torch_mlp(torch, block.mlp, block.norm2(q))
    return q.squeeze(1)


def to_torch_video(torch, videos):
    """``[V, T, H, W, 3]`` NumPy -> ``[V, 3, T, H, W]`` torch."""
    return torch.from_numpy(videos).permute(0, 4, 1, 2, 3)


def torch_jedi_features(torch, reference, videos):
    """JEDi's ``get_feats`` on ``videos [V, T, H, W, 3]``: per-channel ImageNet normalisation,
    encoder, pooler. Returns the tokens (torch) and the pooled features (NumPy)."""
    mean = torch.tensor(vjepa.IMAGENET_MEAN)[:, None, None, None]
    std = torch.tensor(vjepa.IMAGENET_STD)[:, None, None, None]
    with torch.no_grad():
        video = (to_torch_video(torch, videos) - mean) / std
        tokens = torch_encoder(torch, reference["encoder"], CFG, video)
        return tokens, torch_pooler(torch, reference["classifier"], CFG, tokens).numpy()


def wrap(state, prefix="module."):
    return {prefix + key: value for key, value in state.items()}


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """Tiny random V-JEPA encoder + SSv2-style probe, saved as V-JEPA checkpoints."""
    torch = pytest.importorskip("torch", reason=TORCH_REASON)
    torch.manual_seed(0)
    encoder, online = reference_encoder(torch, CFG), reference_encoder(torch, CFG)
    randomize(torch, encoder, seed=1)
    randomize(torch, online, seed=2)  # the online "encoder": must not be the one read
    with torch.no_grad():  # the stored table is sin-cos; a little noise proves it is the one used
        table = torch.from_numpy(numpy_sincos_3d(CFG.embed_dim, CFG.grid, CFG.uniform_power))
        encoder.pos_embed.copy_(table[None] + 0.05 * torch.randn(encoder.pos_embed.shape))
    classifier = reference_classifier(torch, CFG)
    randomize(torch, classifier, seed=3)
    folder = tmp_path_factory.mktemp("vjepa")
    weights, probe = folder / "vjepa_tiny.pth.tar", folder / "ssv2-probe_tiny.pth.tar"
    target, online = wrap(encoder.state_dict()), wrap(online.state_dict())
    torch.save({"encoder": online, "target_encoder": target, "epoch": 3}, weights)
    torch.save({"classifier": wrap(classifier.state_dict()), "epoch": 20}, probe)
    state = {key: value.numpy() for key, value in encoder.state_dict().items()}
    return {
        "torch": torch, "encoder": encoder.eval(), "classifier": classifier.eval(),
        "weights": weights, "probe": probe, "state": state, "folder": folder,
    }


def random_videos(shape, seed=0):
    return np.random.default_rng(seed).uniform(0, 1, shape).astype(np.float32)


# --------------------------------------------------------------------------------------------
# Positional embedding and configs
# --------------------------------------------------------------------------------------------


def numpy_sincos_3d(dim, grid, uniform_power):
    """Independent, per-token reading of V-JEPA's ``get_3d_sincos_pos_embed``."""
    widths = [2 * math.ceil(dim / 6)] * 3 if uniform_power else [dim // 2, dim // 4, dim // 4]
    rows = []
    for t in range(grid[0]):
        for h in range(grid[1]):
            for w in range(grid[2]):
                row = []
                for width, pos in zip(widths, (t, h, w)):
                    angle = pos / 10000.0 ** (2.0 * np.arange(width // 2) / width)
                    row += [np.sin(angle), np.cos(angle)]
                rows.append(np.concatenate(row)[:dim])
    return np.stack(rows).astype(np.float32)


@pytest.mark.parametrize("uniform_power", [True, False])
@pytest.mark.parametrize("dim, grid", [(1024, (8, 14, 14)), (1280, (2, 3, 5)), (48, (2, 4, 4))])
def test_pos_embed_matches_numpy_formula(dim, grid, uniform_power):
    table = vjepa.sincos_pos_embed_3d(dim, grid, uniform_power)
    assert table.shape == (math.prod(grid), dim) and table.dtype == np.float32
    np.testing.assert_allclose(table, numpy_sincos_3d(dim, grid, uniform_power), atol=1e-6)


def test_configs_match_vjepa_presets():
    large, huge = vjepa.get_vjepa_config("vit_large"), vjepa.get_vjepa_config("vit_huge")
    assert (large.embed_dim, large.depth, large.num_heads, large.patch_size) == (1024, 24, 16, 16)
    assert (huge.embed_dim, huge.depth, huge.num_heads, huge.grid) == (1280, 32, 16, (8, 14, 14))
    assert vjepa.get_vjepa_config({"name": "vit_huge", "img_size": 384}).grid == (8, 24, 24)
    with pytest.raises(ValueError, match="vit_giant"):
        vjepa.get_vjepa_config("vit_giant")


# --------------------------------------------------------------------------------------------
# Parity with the PyTorch reference
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "shape", [(2, 4, 32, 32, 3), (2, 6, 48, 40, 3)], ids=["native", "interpolated"]
)
def test_encoder_matches_torch(reference, shape):
    torch = reference["torch"]
    params = vjepa.load_vjepa(reference["weights"], CFG)
    np.testing.assert_array_equal(params["pos_embed"], reference["state"]["pos_embed"])
    videos = random_videos(shape) - 0.5
    tokens = vjepa.VisionTransformer(CFG).apply({"params": params}, videos)
    with torch.no_grad():
        expected = torch_encoder(torch, reference["encoder"], CFG, to_torch_video(torch, videos))
    assert tokens.shape == expected.shape
    np.testing.assert_allclose(np.asarray(tokens), expected.numpy(), atol=1e-4, rtol=1e-4)


def test_pooler_matches_torch(reference):
    torch = reference["torch"]
    params = vjepa.load_attentive_pooler(reference["probe"], CFG)
    # Small tokens (variance ~1e-5) make the pooler's LayerNorm eps (torch's default 1e-5) matter.
    tokens = np.random.default_rng(2).normal(0, 3e-3, (3, 11, CFG.embed_dim)).astype(np.float32)
    pooled = vjepa.AttentivePooler(CFG).apply({"params": params}, tokens)
    with torch.no_grad():
        expected = torch_pooler(torch, reference["classifier"], CFG, torch.from_numpy(tokens))
    np.testing.assert_allclose(np.asarray(pooled), expected.numpy(), atol=1e-4, rtol=1e-4)


def test_features_match_jedi_path(reference):
    weights, probe = reference["weights"], reference["probe"]
    videos = random_videos((5, 6, 48, 40, 3), seed=1)  # 5 videos in batches of 2: one is padded
    extractor = vjepa.VJEPAFeatures(weights, config="tiny", probe=probe, batch_size=2)
    features = extractor(videos)
    tokens, expected = torch_jedi_features(reference["torch"], reference, videos)
    assert extractor.name == "vjepa" and extractor.pooling == "attentive"
    assert features.shape == (5, CFG.embed_dim) and features.dtype == np.float32
    np.testing.assert_allclose(features, expected, atol=1e-4, rtol=1e-4)
    mean_features = vjepa.VJEPAFeatures(weights, config="tiny", batch_size=4)(videos)
    np.testing.assert_allclose(mean_features, tokens.mean(1).numpy(), atol=1e-4, rtol=1e-4)


def test_features_resample_to_native_clip(reference):
    extractor = vjepa.VJEPAFeatures(
        reference["weights"], config="tiny", num_frames=4, size=32, batch_size=3
    )
    assert extractor(random_videos((2, 9, 40, 40, 3))).shape == (2, CFG.embed_dim)
    assert vjepa.resample_frames(np.arange(3)[None], 5).tolist() == [[0, 1, 2, 2, 2]]
    assert vjepa.resample_frames(np.arange(9)[None], 3).tolist() == [[0, 4, 8]]
    with pytest.raises(ValueError, match=r"in \[0, 1\]"):
        extractor(random_videos((1, 4, 32, 32, 3)) * 255)


def test_npz_loads_like_pth(reference):
    path = reference["folder"] / "vjepa_tiny.npz"
    np.savez(path, **{f"target_encoder/module.{k}": v for k, v in reference["state"].items()})
    from_npz, from_pth = vjepa.load_vjepa(path, CFG), vjepa.load_vjepa(reference["weights"], CFG)
    for a, b in zip(jax.tree.leaves(from_npz), jax.tree.leaves(from_pth)):
        np.testing.assert_array_equal(a, b)


# --------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------


def save_npz(folder, name, state):
    path = folder / name
    np.savez(path, **{f"target_encoder/{k}": v for k, v in state.items()})
    return path


def assert_one_line_error(error_type, match, fn, *args, **kwargs):
    with pytest.raises(error_type, match=match) as info:
        fn(*args, **kwargs)
    assert "\n" not in str(info.value)


def test_missing_unexpected_and_misshaped_keys(reference):
    state, folder, load = reference["state"], reference["folder"], vjepa.load_vjepa
    missing = {k: v for k, v in state.items() if k != "blocks.1.mlp.fc2.bias"}
    path = save_npz(folder, "missing.npz", missing)
    assert_one_line_error(ValueError, "no 'blocks.1.mlp.fc2.bias'", load, path, CFG)
    extra = {**state, "blocks.2.attn.qkv.weight": state["blocks.0.attn.qkv.weight"]}
    path = save_npz(folder, "unexpected.npz", extra)
    assert_one_line_error(ValueError, "unexpected key 'blocks.2.attn.qkv.weight'", load, path, CFG)
    path = save_npz(folder, "misshaped.npz", {**state, "norm.weight": np.ones(7, np.float32)})
    expected = r"'norm.weight' has shape \(7,\), the config expects \(48,\)"
    assert_one_line_error(ValueError, expected, load, path, CFG)
    # A ViT-L config on the tiny checkpoint names the first tensor it cannot place.
    assert_one_line_error(ValueError, "blocks", load, reference["weights"], "vit_large")


def test_missing_files_say_where_to_get_weights(tmp_path):
    absent = str(tmp_path / "vith16.pth.tar")
    where = r"vith16\.pth\.tar.*supplied by the user.*facebookresearch/jepa"
    assert_one_line_error(FileNotFoundError, where, vjepa.load_vjepa, absent)
    assert_one_line_error(FileNotFoundError, "vitl16.pth.tar", vjepa.VJEPAFeatures, absent, "tiny")
    probe = tmp_path / "probe.pth.tar"
    assert_one_line_error(FileNotFoundError, "ssv2-probe", vjepa.load_attentive_pooler, probe)


def test_rejects_bad_video_shapes(reference):
    extractor = vjepa.VJEPAFeatures(reference["weights"], config="tiny")
    assert_one_line_error(ValueError, "H, W, 3", extractor, np.zeros((2, 4, 32, 32)))
    assert_one_line_error(ValueError, "no tokens", extractor, np.zeros((1, 1, 32, 32, 3)))


def test_pth_without_torch_says_how_to_install(tmp_path, monkeypatch):
    path = tmp_path / "vith16.pth.tar"
    path.write_bytes(b"not read")
    monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` now fails
    assert_one_line_error(ImportError, r"pip install -e '\.\[torch\]'", vjepa.load_vjepa, path)
