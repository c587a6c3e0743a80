"""FOMM losses: pyramid, VGG19 (torch parity), perceptual, equivariance/TPS, least-squares GAN."""

from __future__ import annotations

import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kpflow.fomm.losses import (
    VGG19_CONVS,
    Transform,
    Vgg19,
    discriminator_gan_loss,
    equivariance_losses,
    feature_matching_loss,
    generator_gan_loss,
    image_pyramid,
    load_vgg19,
    make_vgg_apply,
    perceptual_loss,
    pixel_pyramid_l1,
    vgg19_from_torchvision,
)
from kpflow.fomm.ops import anti_alias_downsample, make_coordinate_grid
from kpflow.keypoints import Keypoints

# torchvision's vgg19 configuration "E": channels, "M" = 2x2 max-pool.
VGG19_CFG = [64, 64, "M", 128, 128, "M"] + [256] * 4 + ["M"] + ([512] * 4 + ["M"]) * 2
RELU_OUTPUTS = (1, 6, 11, 20, 29)  # relu1_1 .. relu5_1 in torchvision's `features`


def random_state_dict(seed: int = 0) -> dict[str, np.ndarray]:
    """A torchvision-shaped vgg19 state dict of random NumPy arrays (He-scaled), plus extra keys."""
    rng = np.random.default_rng(seed)
    state = {}
    for index, (cin, cout) in VGG19_CONVS.items():
        scale = np.sqrt(2.0 / (9 * cin))
        state[f"features.{index}.weight"] = (rng.normal(size=(cout, cin, 3, 3)) * scale).astype(
            np.float32
        )
        state[f"features.{index}.bias"] = (0.01 * rng.normal(size=(cout,))).astype(np.float32)
    state["features.34.bias"] = np.zeros(512, np.float32)  # later layers: ignored
    state["classifier.6.bias"] = np.zeros(1000, np.float32)
    return state


def uniform(seed: int, shape, low: float = 0.0, high: float = 1.0) -> np.ndarray:
    """Test data from NumPy (eager jax.random would compile a sampler per shape)."""
    return np.random.default_rng(seed).uniform(low, high, size=shape).astype(np.float32)


def normal(seed: int, shape, scale: float = 1.0) -> np.ndarray:
    return (scale * np.random.default_rng(seed).normal(size=shape)).astype(np.float32)


@pytest.fixture(scope="module")
def vgg_state() -> dict[str, np.ndarray]:
    return random_state_dict()


# ------------------------------------------------------------------------------------------------
# Pyramid
# ------------------------------------------------------------------------------------------------


def test_image_pyramid_keys_and_levels():
    x = jnp.asarray(uniform(0, (2, 32, 32, 3)))
    assert list(image_pyramid(x, (1.0, 0.5))) == ["prediction_1", "prediction_0.5"]
    pyramid = image_pyramid(x)
    assert list(pyramid) == [
        "prediction_1",
        "prediction_0.5",
        "prediction_0.25",
        "prediction_0.125",
    ]
    np.testing.assert_array_equal(pyramid["prediction_1"], x)
    for scale, size in ((0.5, 16), (0.25, 8), (0.125, 4)):
        level = pyramid[f"prediction_{scale}"]
        assert level.shape == (2, size, size, 3)
        np.testing.assert_array_equal(level, anti_alias_downsample(x, scale))


# ------------------------------------------------------------------------------------------------
# VGG19
# ------------------------------------------------------------------------------------------------


def test_vgg19_matches_torch():
    torch = pytest.importorskip("torch", reason="torch parity test needs the torch extra")
    torch.manual_seed(0)
    layers, cin = [], 3
    for v in VGG19_CFG:
        if v == "M":
            layers.append(torch.nn.MaxPool2d(kernel_size=2, stride=2))
        else:
            layers += [torch.nn.Conv2d(cin, v, kernel_size=3, padding=1), torch.nn.ReLU()]
            cin = v
    features = torch.nn.Sequential(*layers)
    assert len(features) == 37  # same indices as torchvision's vgg19().features
    torch_state = {f"features.{k}": v for k, v in features.state_dict().items()}
    torch_state["classifier.0.weight"] = torch.zeros(4096, 25088)[:1]  # ignored

    x = np.random.default_rng(1).uniform(size=(2, 3, 32, 32)).astype(np.float32)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    expected, h = [], (torch.from_numpy(x) - mean) / std
    with torch.no_grad():
        for index, layer in enumerate(features[:30]):
            h = layer(h)
            if index in RELU_OUTPUTS:
                expected.append(h.permute(0, 2, 3, 1).numpy())

    params = vgg19_from_torchvision(torch_state)  # tensors are accepted directly
    outputs = Vgg19().apply({"params": params}, jnp.asarray(x.transpose(0, 2, 3, 1)))
    assert len(outputs) == 5
    for ours, theirs in zip(outputs, expected):
        assert ours.shape == theirs.shape
        np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-4 * np.abs(theirs).max())


def test_vgg19_param_tree_matches_init(vgg_state):
    params = vgg19_from_torchvision(vgg_state)
    init = jax.eval_shape(Vgg19().init, jax.random.PRNGKey(0), jnp.zeros((1, 16, 16, 3)))
    shapes = jax.tree_util.tree_map(lambda a: a.shape, params)
    assert shapes == jax.tree_util.tree_map(lambda a: a.shape, init["params"])
    assert sorted(params) == sorted(f"conv_{i}" for i in VGG19_CONVS)


def test_vgg19_conversion_errors(vgg_state):
    missing = dict(vgg_state)
    del missing["features.21.bias"]
    with pytest.raises(ValueError, match=r"features\.21\.bias.*\(512,\)"):
        vgg19_from_torchvision(missing)
    wrong = dict(vgg_state)
    wrong["features.5.weight"] = np.zeros((128, 64, 1, 1), np.float32)
    with pytest.raises(
        ValueError, match=r"features\.5\.weight.*\(128, 64, 1, 1\).*\(128, 64, 3, 3\)"
    ):
        vgg19_from_torchvision(wrong)


def test_vgg19_rejects_tiny_images(vgg_state):
    with pytest.raises(ValueError, match="at least 16x16"):
        make_vgg_apply(vgg19_from_torchvision(vgg_state))(jnp.zeros((1, 8, 8, 3)))


def test_load_vgg19_npz_and_missing_file(tmp_path, vgg_state):
    with pytest.raises(FileNotFoundError, match="vgg19-dcbb9e9d.pth"):
        load_vgg19(tmp_path / "vgg19.pth")
    path = tmp_path / "vgg19.npz"
    np.savez(path, **vgg_state)
    loaded = load_vgg19(path)
    expected = vgg19_from_torchvision(vgg_state)
    jax.tree_util.tree_map(np.testing.assert_array_equal, loaded, expected)
    (tmp_path / "vgg19.h5").write_bytes(b"")
    with pytest.raises(ValueError, match="unknown suffix"):
        load_vgg19(tmp_path / "vgg19.h5")


def test_load_vgg19_pth_without_torch(tmp_path, monkeypatch):
    path = tmp_path / "vgg19-dcbb9e9d.pth"
    path.write_bytes(b"")
    monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` raises ImportError
    with pytest.raises(ImportError, match=r"make torch \(pins torch==2.13.0 first\)"):
        load_vgg19(path)


def test_load_vgg19_pth(tmp_path, vgg_state):
    torch = pytest.importorskip("torch", reason="loading a .pth needs the torch extra")
    path = tmp_path / "vgg19-dcbb9e9d.pth"
    torch.save({k: torch.from_numpy(v) for k, v in vgg_state.items()}, path)
    jax.tree_util.tree_map(
        np.testing.assert_array_equal, load_vgg19(path), vgg19_from_torchvision(vgg_state)
    )


# ------------------------------------------------------------------------------------------------
# Perceptual and pixel losses
# ------------------------------------------------------------------------------------------------


def fake_vgg(x):
    return [x, 2.0 * x, x**2, jnp.tanh(x), x[:, ::2, ::2]]


def test_perceptual_loss_formula():
    scales = (1, 0.5)
    pred = {"prediction_1": uniform(2, (2, 8, 8, 3)), "prediction_0.5": uniform(3, (2, 4, 4, 3))}
    target = {"prediction_1": uniform(4, (2, 8, 8, 3)), "prediction_0.5": uniform(5, (2, 4, 4, 3))}
    weights = (1.0, 0.0, 3.0, 4.0, 5.0)
    expected = 0.0
    for key, value in pred.items():
        p, t = fake_vgg(value), fake_vgg(target[key])
        expected += sum(w * np.mean(np.abs(a - b)) for w, a, b in zip(weights, p, t))

    @jax.jit
    def run(pred, target):
        loss = perceptual_loss(fake_vgg, pred, target, scales, weights)
        same = perceptual_loss(fake_vgg, pred, pred, scales, weights)
        grad_target = jax.grad(lambda t: perceptual_loss(fake_vgg, pred, t, scales, weights))(
            target
        )
        return loss, same, grad_target

    loss, same, grad_target = run(pred, target)
    np.testing.assert_allclose(loss, expected, rtol=1e-5)
    assert float(same) == 0.0
    # The target branch is detached, as FOMM's y_vgg[i].detach().
    assert all(float(jnp.abs(g).max()) == 0.0 for g in jax.tree_util.tree_leaves(grad_target))


def test_perceptual_loss_with_vgg19(vgg_state):
    vgg_apply = make_vgg_apply(vgg19_from_torchvision(vgg_state))
    scales = (1,)
    target = {"prediction_1": jnp.asarray(uniform(6, (1, 16, 16, 3)))}

    def loss_fn(x):
        return perceptual_loss(vgg_apply, image_pyramid(x, scales), target, scales)

    loss, grad = jax.jit(jax.value_and_grad(loss_fn))(jnp.asarray(uniform(7, (1, 16, 16, 3))))
    assert float(loss) > 0.0
    assert bool(jnp.all(jnp.isfinite(grad))) and float(jnp.abs(grad).max()) > 0.0


def test_pixel_pyramid_l1():
    scales = (1, 0.5)
    pred = {"prediction_1": uniform(8, (2, 8, 8, 3)), "prediction_0.5": uniform(9, (2, 4, 4, 3))}
    target = {
        "prediction_1": uniform(10, (2, 8, 8, 3)),
        "prediction_0.5": uniform(11, (2, 4, 4, 3)),
    }
    expected = sum(2.5 * np.mean(np.abs(pred[k] - target[k])) for k in pred)
    np.testing.assert_allclose(pixel_pyramid_l1(pred, target, scales, 2.5), expected, rtol=1e-5)
    assert float(pixel_pyramid_l1(pred, pred, scales, 2.5)) == 0.0
    # Keys use ops.scale_key: a scale written 1.0 in a config finds "prediction_1".
    np.testing.assert_allclose(pixel_pyramid_l1(pred, target, (1.0, 0.5), 2.5), expected, rtol=1e-5)
    with pytest.raises(KeyError, match="prediction_0.25.*available"):
        pixel_pyramid_l1(pred, target, (0.25,), 1.0)


# ------------------------------------------------------------------------------------------------
# Equivariance
# ------------------------------------------------------------------------------------------------

# Away from the control-point grid lines (multiples of 0.5), where the L1 distance has kinks.
POINTS = np.array(
    [[[0.13, -0.37], [0.71, 0.29], [-0.62, 0.84], [-0.88, -0.11], [0.37, 0.62]]], np.float32
)


def random_keypoints(seed: int, batch: int = 2, num: int = 5) -> Keypoints:
    value = uniform(seed, (batch, num, 2), -0.9, 0.9)
    jacobian = np.eye(2, dtype=np.float32) + normal(seed + 1000, (batch, num, 2, 2), 0.2)
    return Keypoints(value=jnp.asarray(value), jacobian=jnp.asarray(jacobian))


def reference_warp(transform: Transform, coords: np.ndarray) -> np.ndarray:
    """FOMM's ``Transform.warp_coordinates``, re-derived in NumPy with its broadcasting."""
    theta = np.asarray(transform.theta)[:, None]  # [B, 1, 2, 3]
    coords = np.asarray(coords)
    out = (theta[..., :2] @ coords[..., None])[..., 0] + theta[..., 2]
    cp = np.asarray(transform.control_points)
    distances = np.abs(coords[:, :, None, :] - cp[None, None]).sum(-1)
    result = distances**2 * np.log(distances + 1e-6) * np.asarray(transform.control_params)
    return out + result.sum(2)[..., None]


transform_frame = jax.jit(Transform.transform_frame)
warp = jax.jit(Transform.warp_coordinates)
jacobian = jax.jit(Transform.jacobian)
equivariance = jax.jit(equivariance_losses)


def test_identity_transform():
    frames = jnp.asarray(uniform(12, (2, 12, 16, 3)))
    identity = Transform.identity(2)
    np.testing.assert_allclose(transform_frame(identity, frames), frames, atol=1e-5)
    kp = random_keypoints(13)
    value_loss, jacobian_loss = equivariance(kp, kp, identity)
    assert float(value_loss) < 1e-6 and float(jacobian_loss) < 1e-5


def test_random_transform_statistics_and_reference_warp():
    transform = Transform.random(jax.random.PRNGKey(7), 3, sigma_affine=0.05, sigma_tps=0.005)
    assert transform.theta.shape == (3, 2, 3)
    assert transform.control_points.shape == (25, 2)
    assert transform.control_params.shape == (3, 1, 25)
    np.testing.assert_array_equal(
        transform.control_points, make_coordinate_grid(5, 5).reshape(-1, 2)
    )
    assert 0.0 < float(jnp.abs(transform.theta - jnp.eye(2, 3)).max()) < 0.3
    assert 0.0 < float(jnp.abs(transform.control_params).max()) < 0.03

    big = Transform.random(jax.random.PRNGKey(8), 3, sigma_affine=0.1, sigma_tps=0.1)
    coords = uniform(14, (3, 7, 2), -1.0, 1.0)
    np.testing.assert_allclose(warp(big, coords), reference_warp(big, coords), atol=1e-5)
    # A coordinate batch of 1 broadcasts over the transforms, as FOMM's grid does.
    grid = np.asarray(make_coordinate_grid(4, 4)).reshape(1, 16, 2)
    warped = warp(big, grid)
    assert warped.shape == (3, 16, 2)
    expected = reference_warp(big, np.broadcast_to(grid, (3, 16, 2)))
    np.testing.assert_allclose(warped, expected, atol=1e-5)


def test_affine_jacobian_is_theta():
    theta = np.eye(2, 3, dtype=np.float32) + normal(15, (2, 2, 3), 0.3)
    transform = Transform.identity(2).replace(theta=jnp.asarray(theta))
    jac = jacobian(transform, uniform(16, (2, 6, 2), -1.0, 1.0))
    assert jac.shape == (2, 6, 2, 2)
    np.testing.assert_allclose(jac, np.broadcast_to(theta[:, None, :, :2], jac.shape), atol=1e-6)


def test_jacobian_matches_finite_differences():
    transform = Transform.random(jax.random.PRNGKey(12), 2, sigma_affine=0.1, sigma_tps=0.1)
    coords = np.broadcast_to(POINTS, (2,) + POINTS.shape[1:])
    jac = np.asarray(jacobian(transform, coords))
    eps = 1e-3
    for axis in range(2):
        step = np.zeros(2, np.float32)
        step[axis] = eps
        diff = np.asarray(warp(transform, coords + step) - warp(transform, coords - step))
        np.testing.assert_allclose(jac[..., axis], diff / (2 * eps), atol=2e-3)
    # The TPS part matters: the jacobian is not the affine one.
    assert np.abs(jac - np.asarray(transform.theta)[:, None, :, :2]).max() > 1e-2


def test_random_warp_moves_frame_and_losses_positive():
    transform = Transform.random(jax.random.PRNGKey(13), 2)
    # A smooth frame, so that a small warp changes it by more than interpolation noise.
    grid = np.asarray(make_coordinate_grid(16, 16))
    frames = np.stack(
        [np.sin(3 * grid[..., 0] + c) * np.cos(2 * grid[..., 1]) for c in range(3)], -1
    )
    frames = jnp.asarray(np.stack([frames, frames[::-1]]) * 0.5 + 0.5, jnp.float32)
    moved = transform_frame(transform, frames)
    assert moved.shape == frames.shape
    assert float(jnp.mean(jnp.abs(moved - frames))) > 1e-3

    kp_driving, kp_other = random_keypoints(17), random_keypoints(18)

    @jax.jit
    def run(kp_transformed):
        def total(kp):
            return sum(equivariance_losses(kp_driving, kp, transform))

        return equivariance_losses(kp_driving, kp_transformed, transform), jax.grad(total)(
            kp_transformed
        )

    (value_loss, jacobian_loss), grads = run(kp_other)
    assert float(value_loss) > 1e-2 and float(jacobian_loss) > 1e-2
    # Gradients reach both the keypoint locations (through warp and its jacobian) and jacobians.
    for leaf in jax.tree_util.tree_leaves(grads):
        assert bool(jnp.all(jnp.isfinite(leaf))) and float(jnp.abs(leaf).max()) > 0.0


def test_consistent_keypoints_satisfy_equivariance():
    transform = Transform.random(jax.random.PRNGKey(14), 1, sigma_affine=0.1, sigma_tps=0.05)
    jac = jnp.asarray(np.eye(2, dtype=np.float32) + normal(19, (1, 5, 2, 2), 0.2))
    kp_transformed = Keypoints(value=jnp.asarray(POINTS), jacobian=jac)
    # What a perfectly equivariant detector gives on the original frame.
    kp_driving = Keypoints(
        value=warp(transform, POINTS), jacobian=jacobian(transform, POINTS) @ jac
    )
    value_loss, jacobian_loss = equivariance(kp_driving, kp_transformed, transform)
    assert float(value_loss) < 1e-6 and float(jacobian_loss) < 1e-5


def test_transform_frame_matches_torch_grid_sample():
    torch = pytest.importorskip("torch", reason="grid_sample parity needs the torch extra")
    transform = Transform.random(jax.random.PRNGKey(16), 2, sigma_affine=0.2, sigma_tps=0.02)
    frames = uniform(20, (2, 10, 14, 3))
    grid = np.array(warp(transform, np.asarray(make_coordinate_grid(10, 14)).reshape(1, -1, 2)))
    expected = torch.nn.functional.grid_sample(
        torch.from_numpy(frames.transpose(0, 3, 1, 2).copy()),
        torch.from_numpy(grid.reshape(2, 10, 14, 2)),
        padding_mode="reflection",
        align_corners=True,
    )
    np.testing.assert_allclose(
        transform_frame(transform, frames), expected.numpy().transpose(0, 2, 3, 1), atol=1e-5
    )


# ------------------------------------------------------------------------------------------------
# GAN losses
# ------------------------------------------------------------------------------------------------


def disc_output(seed: int, scales=(1, 0.5), value: float | None = None) -> dict:
    """A fake multi-scale discriminator output, FOMM's keys."""
    out = {}
    for i, scale in enumerate(scales):
        out[f"feature_maps_{scale}"] = [
            normal(seed * 10 + i, (2, 8, 8, 4)),
            normal(seed * 10 + i + 5, (2, 4, 4, 8)),
        ]
        shape = (2, 4, 4, 1)
        pred = uniform(seed * 10 + i, shape) if value is None else np.full(shape, value, np.float32)
        out[f"prediction_map_{scale}"] = pred
    return out


def test_gan_losses_zero_when_perfect():
    scales = (1, 0.5)
    ones, zeros = disc_output(0, value=1.0), disc_output(0, value=0.0)
    assert "prediction_map_0.5" in ones and "feature_maps_1" in ones
    assert float(generator_gan_loss(ones, scales, 1.0)) == 0.0
    assert float(discriminator_gan_loss(ones, zeros, scales, 1.0)) == 0.0
    assert float(feature_matching_loss(ones, zeros, scales, (10.0, 10.0))) == 0.0  # same features


def test_gan_losses_values_and_gradients():
    scales = (1, 0.5)
    real, fake = disc_output(1, scales), disc_output(2, scales)
    gen = sum(2.0 * np.mean((1 - fake[f"prediction_map_{s}"]) ** 2) for s in scales)
    np.testing.assert_allclose(generator_gan_loss(fake, scales, 2.0), gen, rtol=1e-5)
    disc = sum(
        np.mean((1 - real[f"prediction_map_{s}"]) ** 2 + fake[f"prediction_map_{s}"] ** 2)
        for s in scales
    )
    np.testing.assert_allclose(discriminator_gan_loss(real, fake, scales, 1.0), disc, rtol=1e-5)
    fm = sum(
        w * np.mean(np.abs(a - b))
        for s in scales
        for w, a, b in zip((10.0, 5.0), real[f"feature_maps_{s}"], fake[f"feature_maps_{s}"])
    )
    np.testing.assert_allclose(
        feature_matching_loss(real, fake, scales, (10.0, 5.0)), fm, rtol=1e-5
    )
    assert gen > 0 and disc > 0 and fm > 0

    @jax.jit
    def grads(fake):
        return [
            jax.grad(lambda f: generator_gan_loss(f, scales, 1.0))(fake),
            jax.grad(lambda f: discriminator_gan_loss(real, f, scales, 1.0))(fake),
            jax.grad(lambda f: feature_matching_loss(real, f, scales, (10.0, 10.0)))(fake),
        ]

    for grad in grads(fake):
        leaves = jax.tree_util.tree_leaves(grad)
        assert all(bool(jnp.all(jnp.isfinite(g))) for g in leaves)
        assert max(float(jnp.abs(g).max()) for g in leaves) > 0.0


def test_feature_matching_skips_zero_weights():
    scales = (1,)
    real = disc_output(3, scales)
    fake = dict(real, feature_maps_1=[real["feature_maps_1"][0] + 1.0, real["feature_maps_1"][1]])
    assert float(feature_matching_loss(real, fake, scales, (0.0, 10.0))) == 0.0
    np.testing.assert_allclose(
        feature_matching_loss(real, fake, scales, (2.0, 0.0)), 2.0, rtol=1e-6
    )
    with pytest.raises(ValueError, match="feature-matching weights"):
        feature_matching_loss(real, fake, scales, (1.0,))
