"""FOMM in Flax: image ops against NumPy/PyTorch, the keypoint detector's geometry, parity with the
original PyTorch FOMM (shared fixtures), and the checkpoint converter (always-on round trips).

The round trips write random weights in the *official PyTorch naming and layouts*, derived here by
inverting the Flax variable tree by hand (not with the converter's own key map), so a converter that
mislabels, mis-transposes or drops a tensor fails.
"""

from __future__ import annotations

import math
import pathlib
import re
import shutil
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs.fomm_common import fomm_config
from kpflow.fomm import KPDetector, build_networks, init_variables, load, save_model
from kpflow.fomm.convert import ConversionError, convert_checkpoint, read_checkpoint
from kpflow.fomm.model import check_same_structure, frame_shape_of
from kpflow.fomm.ops import anti_alias_downsample, grid_sample, resize_bilinear
from kpflow.keypoints import Keypoints

REPO = pathlib.Path(__file__).resolve().parent.parent
_INDEXED = re.compile(r"(down_blocks|up_blocks|discs)_(.+)")


# -- references written from the definitions ------------------------------------------------------


def np_grid_sample(image, grid, align_corners: bool) -> np.ndarray:
    """Bilinear ``F.grid_sample(padding_mode="zeros")`` in NumPy (float64, NHWC): every corner
    outside the image contributes zero."""
    image = np.asarray(image, np.float64)
    grid = np.asarray(grid, np.float64)
    b, h, w, _ = image.shape

    def pixel(coord, size):
        return (coord + 1) / 2 * (size - 1) if align_corners else ((coord + 1) * size - 1) / 2

    ix, iy = pixel(grid[..., 0], w), pixel(grid[..., 1], h)
    x0, y0 = np.floor(ix), np.floor(iy)
    batch = np.arange(b)[:, None, None]
    out = np.zeros(grid.shape[:-1] + image.shape[-1:])
    for xc, wx in ((x0, x0 + 1 - ix), (x0 + 1, ix - x0)):
        for yc, wy in ((y0, y0 + 1 - iy), (y0 + 1, iy - y0)):
            inside = (xc >= 0) & (xc <= w - 1) & (yc >= 0) & (yc <= h - 1)
            xi = np.clip(xc, 0, w - 1).astype(np.int64)
            yi = np.clip(yc, 0, h - 1).astype(np.int64)
            out += image[batch, yi, xi] * np.where(inside, wx * wy, 0.0)[..., None]
    return out


def fomm_gaussian(scale: float):
    """FOMM's ``AntiAliasInterpolation2d`` kernel: ``sigma = (1/scale - 1)/2``, size ``2 round(4 sigma) + 1``,
    product of 1-D Gaussians, normalised; -> (kernel [k, k] float32, pad before, pad after)."""
    sigma = (1 / scale - 1) / 2
    size = 2 * round(sigma * 4) + 1
    ka = size // 2
    kb = ka - 1 if size % 2 == 0 else ka
    grid = np.arange(size, dtype=np.float32)
    g = np.exp(-((grid - (size - 1) / 2) ** 2) / (2 * sigma**2)).astype(np.float32)
    kernel = g[:, None] * g[None, :]
    return (kernel / kernel.sum()).astype(np.float32), ka, kb


def torch_anti_alias(torch, x_nhwc: np.ndarray, scale: float) -> np.ndarray:
    """The reference's AntiAliasInterpolation2d.forward in torch: depthwise Gaussian conv after
    zero padding (ka, kb), then ``F.interpolate(scale_factor=scale)`` (nearest)."""
    import torch.nn.functional as F

    sigma = (1 / scale - 1) / 2
    size = 2 * round(sigma * 4) + 1
    ka = size // 2
    kb = ka - 1 if size % 2 == 0 else ka
    kernel = 1
    meshgrids = torch.meshgrid([torch.arange(size, dtype=torch.float32)] * 2, indexing="ij")
    for mgrid in meshgrids:
        kernel = kernel * torch.exp(-((mgrid - (size - 1) / 2) ** 2) / (2 * sigma**2))
    kernel = kernel / torch.sum(kernel)
    channels = x_nhwc.shape[-1]
    weight = kernel.view(1, 1, size, size).repeat(channels, 1, 1, 1)
    x = torch.from_numpy(np.ascontiguousarray(x_nhwc.transpose(0, 3, 1, 2)))
    out = F.conv2d(F.pad(x, (ka, kb, ka, kb)), weight=weight, groups=channels)
    out = F.interpolate(out, scale_factor=(scale, scale))
    return out.numpy().transpose(0, 2, 3, 1)


# -- 1. grid_sample -------------------------------------------------------------------------------


def _sample_points(align_corners: bool, w: int, h: int, seed: int = 0):
    """x and y coordinates: far outside, half a pixel outside, exactly on the borders, pixel
    centres, and random ones in [-1.6, 1.6]."""
    rng = np.random.default_rng(seed)

    def special(size):
        centre = 1.0 - (0.0 if align_corners else 1.0 / size)  # last pixel centre
        return [-3.0, -1.0 - 1.0 / size, -1.0 - 0.5 / size, -1.0, -centre, 0.0, centre, 1.0, 1.0 + 0.5 / size,
                1.0 + 1.0 / size, 2.5]

    xs = np.array(special(w) + list(rng.uniform(-1.6, 1.6, 7)), np.float32)
    ys = np.array(special(h) + list(rng.uniform(-1.6, 1.6, 5)), np.float32)
    gx, gy = np.meshgrid(xs, ys)
    grid = np.stack([gx, gy], -1)[None]
    return np.concatenate([grid, grid[:, ::-1]], 0)  # batch of 2, different points per image


@pytest.mark.parametrize("align_corners", [False, True])
def test_grid_sample_zeros_matches_numpy_reference(align_corners):
    rng = np.random.default_rng(1)
    image = rng.uniform(0.5, 1.5, (2, 5, 7, 3)).astype(np.float32)
    grid = _sample_points(align_corners, w=7, h=5)
    got = np.asarray(grid_sample(jnp.asarray(image), jnp.asarray(grid), align_corners=align_corners))
    want = np_grid_sample(image, grid, align_corners)
    np.testing.assert_allclose(got, want, atol=1e-5)

    # A few values by hand: x is the width, y the height.
    w, h = 7, 5
    if align_corners:
        pts = {(-1.0, -1.0): image[:, 0, 0], (1.0, 1.0): image[:, h - 1, w - 1], (1.0, -1.0): image[:, 0, w - 1]}
        outside = [(-1.0 - 2.0 / (w - 1), 0.0)]  # one whole pixel to the left: every corner outside
    else:
        pts = {(-1.0, -1.0): 0.25 * image[:, 0, 0],  # the image corner: one of four corners inside
               (1 / w - 1, 1 / h - 1): image[:, 0, 0],  # centre of the first pixel
               (1 - 1 / w, 1 / h - 1): image[:, 0, w - 1]}
        outside = [(-1.0 - 1.0 / w, 0.0)]
    for (x, y), want_value in pts.items():
        g = jnp.broadcast_to(jnp.array([x, y], jnp.float32), (2, 1, 1, 2))
        np.testing.assert_allclose(np.asarray(grid_sample(image, g, align_corners=align_corners))[:, 0, 0],
                                   want_value, atol=1e-5, err_msg=f"at {(x, y)}")
    for x, y in outside:
        g = jnp.broadcast_to(jnp.array([x, y], jnp.float32), (2, 1, 1, 2))
        assert np.abs(np.asarray(grid_sample(image, g, align_corners=align_corners))).max() < 1e-5


@pytest.mark.parametrize("padding_mode", ["zeros", "border", "reflection"])
@pytest.mark.parametrize("align_corners", [False, True])
def test_grid_sample_matches_torch(padding_mode, align_corners):
    torch = pytest.importorskip("torch")
    import torch.nn.functional as F

    rng = np.random.default_rng(2)
    image = rng.uniform(0.5, 1.5, (2, 5, 7, 3)).astype(np.float32)
    grid = _sample_points(align_corners, w=7, h=5, seed=3)
    grid[0, 0, :3] = [[-5.3, 0.2], [4.7, -0.4], [0.1, 6.2]]  # several reflections
    got = grid_sample(jnp.asarray(image), jnp.asarray(grid), padding_mode=padding_mode, align_corners=align_corners)
    want = F.grid_sample(torch.from_numpy(image.transpose(0, 3, 1, 2).copy()), torch.from_numpy(grid),
                         mode="bilinear", padding_mode=padding_mode, align_corners=align_corners)
    np.testing.assert_allclose(np.asarray(got), want.numpy().transpose(0, 2, 3, 1), atol=1e-5)

    # The gradient with respect to the grid is finite everywhere (borders, integer points, outside).
    def loss(g):
        return jnp.sum(grid_sample(jnp.asarray(image), g, padding_mode=padding_mode, align_corners=align_corners) ** 2)

    grad = np.asarray(jax.grad(loss)(jnp.asarray(grid)))
    assert np.all(np.isfinite(grad))

    # ... and equals torch's at random (non-integer, non-fold) points, inside and outside.
    pts = rng.uniform(-1.4, 1.4, (2, 4, 6, 2)).astype(np.float32)
    tg = torch.from_numpy(pts).requires_grad_(True)
    tout = F.grid_sample(torch.from_numpy(image.transpose(0, 3, 1, 2).copy()), tg, mode="bilinear",
                         padding_mode=padding_mode, align_corners=align_corners)
    (tout**2).sum().backward()
    np.testing.assert_allclose(np.asarray(jax.grad(loss)(jnp.asarray(pts))), tg.grad.numpy(), atol=1e-4, rtol=1e-4)


def test_grid_sample_rejects_unknown_padding_mode():
    with pytest.raises(ValueError, match="padding_mode"):
        grid_sample(jnp.zeros((1, 4, 4, 1)), jnp.zeros((1, 2, 2, 2)), padding_mode="wrap")


# -- 2. resizing ----------------------------------------------------------------------------------


@pytest.mark.parametrize("in_hw,out_hw", [((8, 8), (16, 16)), ((13, 17), (5, 9)), ((32, 24), (8, 6)), ((6, 10), (15, 7))])
def test_resize_bilinear_matches_torch(in_hw, out_hw):
    torch = pytest.importorskip("torch")
    import torch.nn.functional as F

    x = np.random.default_rng(4).normal(size=(2, *in_hw, 3)).astype(np.float32)
    got = np.asarray(jax.jit(resize_bilinear, static_argnums=(1, 2))(jnp.asarray(x), *out_hw))
    want = F.interpolate(torch.from_numpy(x.transpose(0, 3, 1, 2).copy()), size=out_hw, mode="bilinear",
                         align_corners=False).numpy().transpose(0, 2, 3, 1)
    assert got.shape == (2, *out_hw, 3)
    np.testing.assert_allclose(got, want, atol=1e-5)


@pytest.mark.parametrize("scale", [0.5, 0.25, 0.3])
@pytest.mark.parametrize("hw", [(32, 32), (30, 22), (17, 23)])
def test_anti_alias_downsample_matches_torch_reference(scale, hw):
    torch = pytest.importorskip("torch")
    x = np.random.default_rng(5).uniform(size=(2, *hw, 3)).astype(np.float32)
    got = np.asarray(jax.jit(anti_alias_downsample, static_argnums=1)(jnp.asarray(x), scale))
    want = torch_anti_alias(torch, x, scale)
    assert got.shape == want.shape == (2, math.floor(hw[0] * scale), math.floor(hw[1] * scale), 3)
    np.testing.assert_allclose(got, want, atol=1e-5)


# -- 3. keypoint detector geometry -----------------------------------------------------------------


def _tiny_detector(num_kp=2, single_jacobian_map=False, num_blocks=2):
    return KPDetector(block_expansion=8, num_kp=num_kp, num_channels=3, max_features=32, num_blocks=num_blocks,
                      temperature=0.1, estimate_jacobian=True, scale_factor=1.0,
                      single_jacobian_map=single_jacobian_map, pad=3)


def _blob(h, w, cx, cy, sigma=1.0):
    yy, xx = np.mgrid[:h, :w]
    return np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * sigma**2)).astype(np.float32)


def test_keypoints_are_where_the_heatmap_peaks_and_follow_a_shift():
    """Logits = 2 x an input channel (the hourglass's last skip is the input itself; FOMM's decoder
    ends with ``cat([out, x])``): keypoint k sits on the blob of channel k, in (x = width, y = height)
    normalised coordinates, and moves by 2 d / (size - 1) when the image is rolled by d pixels."""
    h, w = 32, 40
    det = _tiny_detector()
    frames = np.zeros((1, h, w, 3), np.float32)
    shapes = jax.eval_shape(det.init, jax.random.key(0), jnp.asarray(frames))
    variables = random_variables(shapes, seed=0)  # any hourglass weights: the kp head ignores them
    kernel = variables["params"]["kp"]["kernel"]
    assert kernel.shape == (7, 7, 8 + 3, 2)  # decoder features (8) then the input (3)
    kernel[:] = 0.0
    variables["params"]["kp"]["bias"][:] = 0.0
    for k in range(2):
        kernel[3, 3, 8 + k, k] = 2.0

    blobs = {0: (9, 20), 1: (29, 6)}  # channel -> (x, y) in pixels
    frames[0, :, :, 0] = _blob(h, w, *blobs[0])
    frames[0, :, :, 1] = _blob(h, w, *blobs[1])
    frames[0, :, :, 2] = np.random.default_rng(0).uniform(size=(h, w))  # ignored by the head
    dx, dy = 3, -2
    shifted = np.roll(frames, (dy, dx), axis=(1, 2))
    kp = jax.jit(det.apply)(variables, jnp.asarray(np.concatenate([frames, shifted])))
    value = np.asarray(kp.value)
    assert value.shape == (2, 2, 2)
    for k, (x, y) in blobs.items():
        np.testing.assert_allclose(value[0, k], [2 * x / (w - 1) - 1, 2 * y / (h - 1) - 1], atol=1e-3)
        np.testing.assert_allclose(value[1, k] - value[0, k], [2 * dx / (w - 1), 2 * dy / (h - 1)], atol=1e-3)


@pytest.mark.parametrize("single_jacobian_map", [False, True])
def test_jacobian_is_identity_at_init_and_reads_row_major(single_jacobian_map):
    det = _tiny_detector(num_kp=3, single_jacobian_map=single_jacobian_map, num_blocks=1)
    frames = jnp.asarray(np.random.default_rng(0).uniform(size=(2, 16, 16, 3)).astype(np.float32))
    variables = det.init(jax.random.key(1), frames)
    maps = 1 if single_jacobian_map else 3
    jac_params = variables["params"]["jacobian"]
    assert np.all(np.asarray(jac_params["kernel"]) == 0)
    np.testing.assert_array_equal(np.asarray(jac_params["bias"]), np.tile([1.0, 0.0, 0.0, 1.0], maps))
    apply = jax.jit(det.apply)
    kp = apply(variables, frames)
    assert kp.jacobian.shape == (2, 3, 2, 2)
    np.testing.assert_allclose(np.asarray(kp.jacobian), np.broadcast_to(np.eye(2), (2, 3, 2, 2)), atol=1e-5)

    # With a constant map [a, b, c, d] per keypoint the jacobian is [[a, b], [c, d]] (torch's view(.., 2, 2)).
    bias = np.arange(1, 4 * maps + 1, dtype=np.float32)
    params = jax.tree.map(np.array, variables["params"])
    params["jacobian"]["bias"] = bias
    kp = apply({**variables, "params": params}, frames)
    want = np.broadcast_to(bias.reshape(maps, 2, 2), (2, 3, 2, 2))
    np.testing.assert_allclose(np.asarray(kp.jacobian), want, rtol=1e-5)


# -- 4. parity with the PyTorch FOMM (shared fixtures) --------------------------------------------


def _fixture_config(name: str, path: pathlib.Path):
    yaml = pytest.importorskip("yaml")
    with open(path / "model_params.yaml") as f:
        mp = yaml.safe_load(f)["model_params"]
    cfg = fomm_config(name)
    m = cfg.model
    m.common.update(mp["common_params"])
    m.kp_detector.update(mp["kp_detector_params"])
    gen = dict(mp["generator_params"])
    dense = gen.pop("dense_motion_params")
    m.generator.update(gen)
    m.generator.dense_motion_params.update(dense)
    return cfg


@pytest.mark.shared_data
@pytest.mark.parametrize("name", ["vox", "mgif"])
def test_npz_checkpoint_reproduces_pytorch_fomm(name, fomm_fixture, tmp_path):
    path = fomm_fixture(name)
    cfg = _fixture_config(name, path)
    variables = convert_checkpoint(read_checkpoint(str(path / "state.npz")), cfg)
    assert sorted(variables) == ["generator", "kp_detector"]
    save_model(str(tmp_path / "fomm"), cfg, variables)
    fomm = load(str(tmp_path / "fomm"))
    with np.load(path / "reference.npz") as f:
        ref = dict(f)
    for which in ("source", "driving"):
        kp = fomm.detect(ref[which])
        np.testing.assert_allclose(np.asarray(kp.value), ref[f"kp_{which}_value"], atol=1e-4, err_msg=which)
        np.testing.assert_allclose(np.asarray(kp.jacobian), ref[f"kp_{which}_jacobian"], atol=1e-4, err_msg=which)
    kp_s = Keypoints(ref["kp_source_value"], ref["kp_source_jacobian"])
    kp_d = Keypoints(ref["kp_driving_value"], ref["kp_driving_jacobian"])
    out = fomm.generate_all(ref["source"], kp_s, kp_d)
    for key in ("prediction", "occlusion_map", "mask", "deformed"):
        assert out[key].shape == ref[key].shape, key
        np.testing.assert_allclose(np.asarray(out[key]), ref[key], atol=1e-3, err_msg=key)


@pytest.mark.shared_data
@pytest.mark.parametrize("name", ["vox", "mgif"])
def test_pth_checkpoint_converts_like_the_npz(name, fomm_fixture, tmp_path):
    """The official ``.pth.tar`` gives exactly the variables of the ``.npz`` (whose outputs match the
    reference above), also after a save/load round trip."""
    pytest.importorskip("torch")
    path = fomm_fixture(name)
    cfg = _fixture_config(name, path)
    from_pth = convert_checkpoint(read_checkpoint(str(path / "cpk.pth.tar")), cfg)
    from_npz = convert_checkpoint(read_checkpoint(str(path / "state.npz")), cfg)
    _assert_trees_equal(from_pth, from_npz)
    save_model(str(tmp_path / "fomm"), cfg, from_pth)
    _assert_trees_equal(load(str(tmp_path / "fomm")).variables, from_npz)


# -- 5. always-on round trips: Flax variables -> official PyTorch state dicts -> converter ---------


def _flat(tree, prefix=()):
    for k, v in tree.items():
        if isinstance(v, dict) or hasattr(v, "items"):
            yield from _flat(v, prefix + (k,))
        else:
            yield prefix + (k,), v


def _assert_trees_equal(a, b):
    fa, fb = dict(_flat(a)), dict(_flat(b))
    assert sorted(fa) == sorted(fb)
    for path, value in fa.items():
        np.testing.assert_array_equal(np.asarray(value), np.asarray(fb[path]), err_msg="/".join(path))


def _torch_module(path: tuple[str, ...]) -> str:
    """Flax module path -> PyTorch attribute path: ``down_blocks_3`` -> ``down_blocks.3``, ``discs_0-5`` -> ``discs.0-5``."""
    parts = []
    for p in path:
        m = _INDEXED.fullmatch(p)
        parts += [m.group(1), m.group(2)] if m else [p]
    return ".".join(parts)


def random_variables(shapes, seed: int) -> dict:
    """Random values for a Flax variable tree of ShapeDtypeStructs, by the role of each leaf."""
    rng = np.random.default_rng(seed)
    out: dict = {}
    for path, leaf in _flat(shapes):
        shape, name = tuple(leaf.shape), path[-1]
        if name == "kernel":
            scale = 0.05 if "jacobian" in path else 1 / math.sqrt(np.prod(shape[:3]))
            value = rng.standard_normal(shape, np.float32) * np.float32(scale)
        elif name in ("bias", "mean"):
            value = rng.standard_normal(shape, np.float32) * np.float32(0.2)
        elif name in ("scale", "var"):
            value = rng.uniform(0.5, 1.5, shape).astype(np.float32)
        elif name in ("u", "v"):
            value = rng.standard_normal(shape, np.float32)
            value /= np.linalg.norm(value)
        else:
            raise AssertionError(f"unexpected variable {'/'.join(path)}")
        node = out
        for p in path[:-1]:
            node = node.setdefault(p, {})
        node[name] = value
    if "kp_detector" in out:  # jacobian bias near the identity, so the generator inverts well-conditioned maps
        bias = out["kp_detector"]["params"]["jacobian"]["bias"]
        bias += np.tile(np.array([1, 0, 0, 1], np.float32), bias.size // 4)
    return out


def torch_state_dict(variables: dict, anti_alias: dict[str, float], channels: int) -> dict[str, np.ndarray]:
    """One network's Flax variables in the official PyTorch naming and layouts (OIHW, BatchNorm
    running stats with ``num_batches_tracked``, spectral norm ``weight_orig/weight_u/weight_v``), plus
    the anti-aliasing buffers ``<module>.down.weight [C, 1, k, k]`` of ``anti_alias`` {module: scale}."""
    stats = dict(_flat(variables.get("batch_stats", {})))
    sn_modules = {path[:-1] for path in stats if path[-1] == "u"}
    state: dict[str, np.ndarray] = {}
    for path, value in _flat(variables["params"]):
        module, name = path[:-1], path[-1]
        prefix = _torch_module(module)
        if name == "kernel":
            key = "weight_orig" if module in sn_modules else "weight"
            state[f"{prefix}.{key}"] = np.ascontiguousarray(np.asarray(value).transpose(3, 2, 0, 1))
        elif name == "scale":
            state[f"{prefix}.weight"] = np.asarray(value)
        else:
            assert name == "bias", path
            state[f"{prefix}.bias"] = np.asarray(value)
    for path, value in stats.items():
        prefix = _torch_module(path[:-1])
        key = {"mean": "running_mean", "var": "running_var", "u": "weight_u", "v": "weight_v"}[path[-1]]
        state[f"{prefix}.{key}"] = np.asarray(value)
        if path[-1] == "mean":
            state[f"{prefix}.num_batches_tracked"] = np.array(1234, np.int64)
    for module, scale in anti_alias.items():
        kernel, _, _ = fomm_gaussian(scale)
        state[(module + "." if module else "") + "down.weight"] = np.tile(kernel[None, None], (channels, 1, 1, 1))
    return state


def official_state(cfg, variables: dict) -> dict[str, dict[str, np.ndarray]]:
    m = cfg.model
    channels = m.common.num_channels
    aa = {"kp_detector": {}, "generator": {}, "discriminator": {}}
    if m.kp_detector.scale_factor != 1:
        aa["kp_detector"][""] = m.kp_detector.scale_factor
    if m.generator.dense_motion_params.scale_factor != 1:
        aa["generator"]["dense_motion_network"] = m.generator.dense_motion_params.scale_factor
    return {net: torch_state_dict(v, aa[net], channels) for net, v in variables.items()}


def expected_shapes(cfg):
    nets = build_networks(cfg.model)
    return nets, jax.eval_shape(lambda k: init_variables(nets, k, frame_shape_of(cfg)), jax.random.key(0))


def _save_npz(path, state):
    np.savez(path, **{f"{net}/{k}": v for net, sd in state.items() for k, v in sd.items()})


def _save_pth(torch, path, state):
    torch.save({**{net: {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in sd.items()} for net, sd in state.items()},
                "epoch": 7}, path)


def _run_convert(*args, timeout=180):
    return subprocess.run([sys.executable, "-m", "kpflow.fomm.convert", *map(str, args)], check=False, cwd=REPO,
                          capture_output=True, text=True, timeout=timeout)


def _make_roundtrip(name: str, tmp: pathlib.Path) -> dict:
    """Random tiny weights -> official state dicts (.npz, and .pth.tar with torch) -> converter ->
    FOMM directory -> ``load``. vox goes through the CLI; mgif in-process, without its discriminator."""
    cfg = fomm_config(name, "tiny")
    nets, shapes = expected_shapes(cfg)
    variables = random_variables(shapes, seed=len(name))
    state = official_state(cfg, variables)
    npz = tmp / "state.npz"
    _save_npz(npz, state)
    try:
        import torch
    except ImportError:
        torch = None
    pth = None
    if torch is not None:
        pth = tmp / "cpk.pth.tar"
        _save_pth(torch, pth, state)
    out = tmp / "fomm"
    if name == "vox":
        proc = _run_convert("--checkpoint", pth or npz, "--config", "configs/fomm_vox.py:tiny", "--out", out)
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert "wrote" in proc.stdout
    else:
        state_read = read_checkpoint(str(npz))
        state_read.pop("discriminator")
        variables.pop("discriminator")
        save_model(str(out), cfg, convert_checkpoint(state_read, cfg))
    # Direct application, variables as arguments (not baked-in constants, which XLA would fold
    # differently): the same programs as FOMM's.
    return {"cfg": cfg, "nets": nets, "variables": variables, "state": state, "npz": npz, "pth": pth,
            "out": out, "fomm": load(str(out)), "detect": jax.jit(nets.kp_detector.apply),
            "generate": jax.jit(nets.generator.apply)}


@pytest.fixture(scope="module")
def roundtrip(tmp_path_factory):
    cache: dict = {}

    def get(name):
        if name not in cache:
            cache[name] = _make_roundtrip(name, tmp_path_factory.mktemp(f"fomm_{name}"))
        return cache[name]

    return get


def _frames(seed, n=2, size=64):
    return np.random.default_rng(seed).uniform(size=(n, size, size, 3)).astype(np.float32)


@pytest.mark.parametrize("name", ["vox", "mgif"])
def test_converted_model_equals_direct_apply_of_the_same_weights(name, roundtrip):
    rt = roundtrip(name)
    fomm, variables = rt["fomm"], rt["variables"]
    # The converter put every tensor where it came from (OIHW -> HWIO, names, batch stats, SN vectors).
    _assert_trees_equal(fomm.variables, variables)
    if rt["pth"] is not None:  # .pth.tar and .npz read alike
        a, b = read_checkpoint(str(rt["pth"])), read_checkpoint(str(rt["npz"]))
        assert sorted(a) == sorted(b) == ["discriminator", "generator", "kp_detector"]
        _assert_trees_equal(a, b)

    source, driving = _frames(10), _frames(11)
    detect, generate = rt["detect"], rt["generate"]
    kp_s, kp_d = fomm.detect(source), fomm.detect(driving)
    ref_s, ref_d = detect(variables["kp_detector"], source), detect(variables["kp_detector"], driving)
    for got, want in ((kp_s, ref_s), (kp_d, ref_d)):
        np.testing.assert_allclose(np.asarray(got.value), np.asarray(want.value), atol=1e-6)
        np.testing.assert_allclose(np.asarray(got.jacobian), np.asarray(want.jacobian), atol=1e-6)
    assert not np.allclose(np.asarray(kp_s.value), np.asarray(kp_d.value), atol=1e-3)  # the input matters
    out = fomm.generate_all(source, kp_s, kp_d)
    ref = generate(variables["generator"], source, ref_s, ref_d)
    for key in ("prediction", "occlusion_map", "mask", "deformed"):
        np.testing.assert_allclose(np.asarray(out[key]), np.asarray(ref[key]), atol=1e-6, err_msg=key)
    np.testing.assert_allclose(np.asarray(fomm.generate(source, kp_s, kp_d)), np.asarray(ref["prediction"]), atol=1e-6)


def test_eval_uses_the_converted_running_statistics(roundtrip):
    rt = roundtrip("vox")
    fomm, variables = rt["fomm"], rt["variables"]
    frames = _frames(10)
    # Per-frame results do not depend on the rest of the batch (no batch statistics at inference).
    other = frames.copy()
    other[1] = _frames(14, n=1)[0]
    kp, kp_other = fomm.detect(frames), fomm.detect(other)
    np.testing.assert_allclose(np.asarray(kp_other.value[0]), np.asarray(kp.value[0]), atol=1e-6)
    assert not np.allclose(np.asarray(kp_other.value[1]), np.asarray(kp.value[1]), atol=1e-4)

    # Moving the running means moves the outputs (same jitted programs as the test above).
    def shifted(net):
        stats = jax.tree_util.tree_map_with_path(
            lambda p, x: x + 0.5 if getattr(p[-1], "key", None) == "mean" else x, variables[net]["batch_stats"])
        return {**variables[net], "batch_stats": stats}

    detect, generate = rt["detect"], rt["generate"]
    base = detect(variables["kp_detector"], frames)
    moved = detect(shifted("kp_detector"), frames)
    assert np.abs(np.asarray(moved.value) - np.asarray(base.value)).max() > 1e-3
    pred = np.asarray(generate(variables["generator"], frames, base, base)["prediction"])
    pred_moved = np.asarray(generate(shifted("generator"), frames, base, base)["prediction"])
    assert np.abs(pred_moved - pred).max() > 1e-3


def test_full_size_bair_checkpoint_converts_with_the_right_structure():
    cfg = fomm_config("bair")
    _, shapes = expected_shapes(cfg)
    variables = random_variables(shapes, seed=3)
    state = official_state(cfg, variables)
    # A few official names and layouts, as in vox-cpk.pth.tar.
    kp, gen, disc = state["kp_detector"], state["generator"], state["discriminator"]
    assert kp["predictor.encoder.down_blocks.4.conv.weight"].shape == (1024, 512, 3, 3)
    assert kp["kp.weight"].shape == (10, 35, 7, 7) and kp["jacobian.weight"].shape == (40, 35, 7, 7)
    assert kp["down.weight"].shape == (3, 1, 13, 13)
    assert gen["dense_motion_network.down.weight"].shape == (3, 1, 13, 13)
    assert gen["bottleneck.r5.conv2.weight"].shape == (256, 256, 3, 3)
    assert gen["first.norm.num_batches_tracked"].dtype == np.int64
    assert disc["discs.1.down_blocks.0.conv.weight_orig"].shape == (64, 3, 4, 4)
    assert disc["discs.1.down_blocks.1.norm.weight"].shape == (128,)
    assert disc["discs.1.conv.weight_u"].shape == (1,)
    converted = convert_checkpoint(state, cfg)
    check_same_structure(shapes, converted, where="bair")
    _assert_trees_equal(converted, variables)


def test_discriminator_scales_map_to_module_dict_keys():
    """A multi-scale discriminator: torch's ``discs`` ModuleDict keys ``1`` and ``0-5``."""
    cfg = fomm_config("mgif", "tiny")
    cfg.model.discriminator.scales = [1, 0.5]
    _, shapes = expected_shapes(cfg)
    variables = random_variables(shapes, seed=4)
    state = official_state(cfg, variables)
    assert "discs.0-5.conv.weight_orig" in state["discriminator"] and "discs.1.conv.weight_v" in state["discriminator"]
    _assert_trees_equal(convert_checkpoint(state, cfg), variables)


# -- 6. conversion errors name the offending PyTorch key -----------------------------------------


def _copy_state(state):
    return {net: dict(sd) for net, sd in state.items()}


def _conversion_error(state, cfg) -> str:
    with pytest.raises(ConversionError) as info:
        convert_checkpoint(state, cfg)
    return str(info.value)


def test_missing_key_is_named(roundtrip):
    rt = roundtrip("vox")
    for net, key in [("kp_detector", "predictor.encoder.down_blocks.1.norm.running_var"),
                     ("generator", "first.conv.weight")]:
        state = _copy_state(rt["state"])
        del state[net][key]
        msg = _conversion_error(state, rt["cfg"])
        assert key in msg, msg


def test_unexpected_key_is_named(roundtrip):
    rt = roundtrip("vox")
    for key, value in [("predictor.encoder.down_blocks.7.conv.weight", np.zeros((8, 8, 3, 3), np.float32)),
                       ("kp.weight_bogus", np.zeros(3, np.float32))]:
        state = _copy_state(rt["state"])
        state["kp_detector"][key] = value
        msg = _conversion_error(state, rt["cfg"])
        assert key in msg, msg


def test_shape_mismatch_is_named(roundtrip):
    rt = roundtrip("vox")
    state = _copy_state(rt["state"])
    state["kp_detector"]["kp.bias"] = np.zeros(11, np.float32)
    msg = _conversion_error(state, rt["cfg"])
    assert "kp.bias" in msg and "(11,)" in msg, msg

    # Tiny weights with the full-size config: the first mis-shaped tensor is named by its torch key.
    msg = _conversion_error(rt["state"], fomm_config("vox"))
    found = re.search(r"(kp_detector|generator|discriminator)\.(\S+) has shape", msg)
    assert found and found.group(2) in rt["state"][found.group(1)], msg


def test_wrong_anti_alias_buffer_is_named(roundtrip):
    state = _copy_state(roundtrip("vox")["state"])
    state["kp_detector"]["down.weight"] = state["kp_detector"]["down.weight"] * 2
    assert "down.weight" in _conversion_error(state, roundtrip("vox")["cfg"])


def test_anti_alias_buffer_of_another_scale_is_rejected(roundtrip):
    """The buffer's size reveals the scale the checkpoint was trained with (k = 5 at 0.5, 13 at
    0.25); the convolutions' shapes do not, so a config with another ``scale_factor`` would convert
    silently and produce different keypoints."""
    rt = roundtrip("vox")
    assert rt["cfg"].model.kp_detector.scale_factor == 0.5
    state = _copy_state(rt["state"])
    kernel, _, _ = fomm_gaussian(0.25)
    state["kp_detector"]["down.weight"] = np.tile(kernel[None, None], (3, 1, 1, 1))
    assert "down.weight" in _conversion_error(state, rt["cfg"])


def test_checkpoint_without_kp_detector(roundtrip, tmp_path):
    rt = roundtrip("vox")
    state = {"generator": rt["state"]["generator"]}
    assert "kp_detector" in _conversion_error(state, rt["cfg"])
    _save_npz(tmp_path / "gen_only.npz", state)
    assert "kp_detector" in _conversion_error(read_checkpoint(str(tmp_path / "gen_only.npz")), rt["cfg"])


def test_missing_files_raise_file_not_found(tmp_path):
    for name in ("nope.pth.tar", "nope.npz"):
        with pytest.raises(FileNotFoundError, match="nope"):
            read_checkpoint(str(tmp_path / name))
    with pytest.raises(FileNotFoundError, match="kpflow.fomm.convert"):
        load(str(tmp_path / "no_such_fomm"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="kpflow.fomm.convert"):
        load(str(tmp_path / "empty"))


def _assert_one_line_error(proc, *needles):
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-3000:])
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, proc.stderr[-3000:]
    for needle in needles:
        assert needle in errors[0], errors[0]


def test_cli_reports_a_bad_checkpoint_in_one_line(tmp_path, roundtrip):
    bad = tmp_path / "bad.pth.tar"
    bad.write_bytes(b"this is not a checkpoint")
    proc = _run_convert("--checkpoint", bad, "--config", "configs/fomm_vox.py:tiny", "--out", tmp_path / "out")
    _assert_one_line_error(proc, "bad.pth.tar")
    assert not (tmp_path / "out").exists()


def test_cli_into_an_existing_fomm_directory_fails_cleanly_or_overwrites(tmp_path, roundtrip):
    """Converting again into a directory that already holds a converted model either replaces it
    (exit 0) or refuses in one line (exit 2); never a traceback."""
    rt = roundtrip("vox")
    out = tmp_path / "fomm"
    shutil.copytree(rt["out"], out)
    proc = _run_convert("--checkpoint", rt["npz"], "--config", "configs/fomm_vox.py:tiny", "--out", out)
    if proc.returncode != 0:
        _assert_one_line_error(proc, str(out))


# -- 7. public API validation ---------------------------------------------------------------------


def test_detect_and_generate_validate_their_inputs(roundtrip):
    fomm = roundtrip("vox")["fomm"]
    with pytest.raises(ValueError, match=r"\[B, H, W, 3\].*\(64, 64, 3\)"):
        fomm.detect(np.zeros((64, 64, 3), np.float32))
    with pytest.raises(ValueError, match="255"):
        fomm.detect(np.zeros((1, 64, 64, 3), np.uint8))
    with pytest.raises(ValueError, match="NHWC"):
        fomm.detect(np.zeros((1, 3, 64, 64), np.float32))
    frames = _frames(13, n=1)
    kp = Keypoints(np.zeros((1, 5, 2), np.float32), np.zeros((1, 5, 2, 2), np.float32))
    with pytest.raises(ValueError, match="K=10"):
        fomm.generate(frames, kp, kp)
    with pytest.raises(ValueError, match="source"):
        fomm.generate(frames[0], kp, kp)


# -- inference-only reorderings compute what the reference order computes --------------------------


@pytest.mark.parametrize("num_maps", [1, 10])
def test_jacobian_head_orders_agree(num_maps):
    from kpflow.fomm.keypoint_detector import JacobianHead

    rng = np.random.default_rng(0)
    features = jnp.asarray(rng.normal(size=(2, 20, 18, 5)).astype(np.float32))
    heatmap = jax.nn.softmax(jnp.asarray(rng.normal(size=(2, 14 * 12, 10)).astype(np.float32)), axis=1)
    heatmap = heatmap.reshape(2, 14, 12, 10)
    head = JacobianHead(num_maps)
    variables = head.init(jax.random.key(0), features, heatmap)
    variables = jax.tree.map(lambda x: jnp.asarray(rng.normal(size=x.shape).astype(np.float32)), variables)
    fast = head.apply(variables, features, heatmap, weighted_patches=True)
    reference = head.apply(variables, features, heatmap, weighted_patches=False)
    assert fast.shape == (2, 10, 2, 2)
    np.testing.assert_allclose(fast, reference, atol=2e-4, rtol=1e-5)


def test_phase_decomposed_upsample_conv_matches_upsample_then_conv():
    from kpflow.fomm.blocks import UpsampleConv

    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.normal(size=(2, 16, 20, 6)).astype(np.float32))  # 320 pixels: the phase path
    layer = UpsampleConv(7)
    variables = layer.init(jax.random.key(0), x)
    fast = layer.apply(variables, x, phases=True)
    reference = layer.apply(variables, x, phases=False)
    assert fast.shape == (2, 32, 40, 7)
    np.testing.assert_allclose(fast, reference, atol=1e-5)


def test_generator_from_cached_source_features_equals_the_whole_generator():
    """A receiver encodes its source once: decoding from those features is the same generator."""
    from kpflow.fomm.model import random_fomm

    fomm = random_fomm(fomm_config("vox", "tiny"), seed=3)
    gen, variables = fomm.networks.generator, fomm.variables["generator"]
    source, driving = _frames(20, n=1), _frames(21, n=3)
    kp_s, kp_d = fomm.detect(source), fomm.detect(driving)
    kp_s3 = jax.tree.map(lambda x: jnp.repeat(x, 3, axis=0), kp_s)
    whole = gen.apply(variables, jnp.repeat(source, 3, axis=0), kp_s3, kp_d)
    features = gen.apply(variables, source, encode_only=True)["source_features"]
    assert set(gen.apply(variables, source, encode_only=True)) == {"source_features"}
    cached = gen.apply(variables, jnp.repeat(source, 3, axis=0), kp_s3, kp_d,
                       source_features=jnp.repeat(features, 3, axis=0))
    for key in ("prediction", "occlusion_map", "mask", "deformed"):
        np.testing.assert_allclose(np.asarray(cached[key]), np.asarray(whole[key]), atol=1e-6, err_msg=key)
    # the cached features are used, not recomputed: other features give another frame
    other = gen.apply(variables, jnp.repeat(source, 3, axis=0), kp_s3, kp_d,
                      source_features=jnp.repeat(features, 3, axis=0) * 0.5)
    assert not np.allclose(np.asarray(other["prediction"]), np.asarray(whole["prediction"]), atol=1e-4)
