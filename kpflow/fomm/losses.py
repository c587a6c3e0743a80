"""FOMM's training losses, NHWC: perceptual (VGG19), equivariance, least-squares GAN.

Follows ``GeneratorFullModel`` / ``DiscriminatorFullModel`` of the reference First Order Motion
Model (Siarohin et al. 2019, ``modules/model.py``):

- :func:`image_pyramid` downsamples frames with FOMM's anti-aliased ``ImagePyramide``.
- :class:`Vgg19` is torchvision's ``vgg19().features`` up to ``relu5_1``; :func:`load_vgg19` reads
  the ImageNet weights (a torchvision ``.pth`` state dict, or an ``.npz`` with the same keys) and
  :func:`perceptual_loss` is the paper's multi-scale L1 on its five feature maps.
  :func:`pixel_pyramid_l1` is a labelled *substitute* for runs without the VGG weights.
- :class:`Transform` is the random thin-plate-spline warp of the equivariance constraints, and
  :func:`equivariance_losses` the value and jacobian terms.
- :func:`generator_gan_loss`, :func:`discriminator_gan_loss`, :func:`feature_matching_loss` are
  the least-squares GAN terms on the multi-scale discriminator's outputs.

Every loss here is unweighted by the config unless it takes a ``weight``/``weights`` argument, and
all of them are pure and jit/grad friendly. Dictionary keys are FOMM's ``prediction_<s>``,
``prediction_map_<s>`` and ``feature_maps_<s>`` with ``s = ops.scale_key(scale)`` (``1`` and
``1.0`` -> ``"1"``, ``0.5`` -> ``"0.5"``), the spelling the discriminator uses.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from kpflow.fomm.ops import (
    anti_alias_downsample,
    grid_sample,
    invert_2x2,
    make_coordinate_grid,
    scale_key,
)
from kpflow.keypoints import Keypoints

Array = jnp.ndarray
FeatureMaps = Mapping[str, Any]

DEFAULT_PYRAMID_SCALES = (1, 0.5, 0.25, 0.125)
DEFAULT_PERCEPTUAL_WEIGHTS = (10.0, 10.0, 10.0, 10.0, 10.0)


def _lookup(maps: FeatureMaps, prefix: str, scale: float) -> Any:
    """``maps[prefix + scale_key(scale)]``, with a KeyError that lists the keys present."""
    key = prefix + scale_key(scale)
    try:
        return maps[key]
    except KeyError:
        raise KeyError(f"{key!r} not found (scale {scale!r}); available: {sorted(maps)}") from None


# --------------------------------------------------------------------------------------------
# Image pyramid
# --------------------------------------------------------------------------------------------


def image_pyramid(x: Array, scales: Sequence[float] = DEFAULT_PYRAMID_SCALES) -> dict[str, Array]:
    """``x [B, H, W, C]`` -> ``{"prediction_<scale>": [B, floor(H*scale), floor(W*scale), C]}``.

    FOMM's ``ImagePyramide``: each level is the anti-aliased (Gaussian blur, then subsample)
    downscaling of the full-resolution frame, not of the previous level.
    """
    return {f"prediction_{scale_key(scale)}": anti_alias_downsample(x, scale) for scale in scales}


# --------------------------------------------------------------------------------------------
# VGG19 perceptual network
# --------------------------------------------------------------------------------------------

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# torchvision ``vgg19().features``: conv index -> (in, out) channels, for the layers up to relu5_1.
VGG19_CONVS: dict[int, tuple[int, int]] = {
    0: (3, 64),
    2: (64, 64),
    5: (64, 128),
    7: (128, 128),
    10: (128, 256),
    12: (256, 256),
    14: (256, 256),
    16: (256, 256),
    19: (256, 512),
    21: (512, 512),
    23: (512, 512),
    25: (512, 512),
    28: (512, 512),
}
# The five slices of FOMM's Vgg19 (features[0:2], [2:7], [7:12], [12:21], [21:30]) by their convs;
# each slice outputs the relu after its last conv: relu1_1, relu2_1, relu3_1, relu4_1, relu5_1.
_VGG19_SLICES: tuple[tuple[int, ...], ...] = (
    (0,),
    (2, 5),  # conv 2, relu 3, maxpool 4, conv 5, relu 6
    (7, 10),  # conv 7, relu 8, maxpool 9, conv 10, relu 11
    (12, 14, 16, 19),  # conv 12 ... relu 17, maxpool 18, conv 19, relu 20
    (21, 23, 25, 28),  # conv 21 ... relu 26, maxpool 27, conv 28, relu 29
)
# The 2x2 max-pools (indices 4, 9, 18, 27) come right before these convs.
_VGG19_POOL_BEFORE = frozenset({5, 10, 19, 28})
VGG19_MIN_SIZE = 16  # relu5_1 follows four 2x2 max-pools

VGG19_FILE = "vgg19-dcbb9e9d.pth"
VGG19_HINT = (
    f"expected torchvision's ImageNet VGG19 state dict ({VGG19_FILE}, or an .npz with the same "
    "'features.N.weight'/'features.N.bias' keys); get it with "
    'torch.save(torchvision.models.vgg19(weights="IMAGENET1K_V1").state_dict(), PATH)'
)
TORCH_HINT = (
    "the VGG19 weights are a PyTorch file; install the torch extra: make torch "
    "(pins torch==2.13.0 first)"
)


class Vgg19(nn.Module):
    """torchvision's VGG19 ``features`` up to ``relu5_1``, NHWC; the frozen perceptual network.

    ``x [B, H, W, 3]`` in ``[0, 1]`` (``H, W >= 16``) -> the five maps after relu1_1, relu2_1,
    relu3_1, relu4_1, relu5_1: ``[B, H, W, 64]``, ``[B, H/2, W/2, 128]``, ``[B, H/4, W/4, 256]``,
    ``[B, H/8, W/8, 512]``, ``[B, H/16, W/16, 512]`` (floored). Convs are named ``conv_N`` after
    their index ``N`` in torchvision's ``features``; see :func:`vgg19_from_torchvision`.
    """

    @nn.compact
    def __call__(self, x: Array) -> list[Array]:
        if x.shape[-1] != 3:
            raise ValueError(f"Vgg19 expects RGB images [B, H, W, 3], got shape {x.shape}")
        if min(x.shape[1], x.shape[2]) < VGG19_MIN_SIZE:
            raise ValueError(
                f"Vgg19 needs images of at least {VGG19_MIN_SIZE}x{VGG19_MIN_SIZE} (relu5_1 is "
                f"after four 2x2 max-pools), got shape {x.shape}; drop the small pyramid scales"
            )
        # FOMM normalises with the ImageNet statistics inside its Vgg19.
        mean = jnp.asarray(IMAGENET_MEAN, x.dtype)
        std = jnp.asarray(IMAGENET_STD, x.dtype)
        x = (x - mean) / std
        outputs = []
        for convs in _VGG19_SLICES:
            for index in convs:
                if index in _VGG19_POOL_BEFORE:
                    x = nn.max_pool(x, (2, 2), strides=(2, 2))
                features = VGG19_CONVS[index][1]
                x = nn.Conv(features, (3, 3), padding=((1, 1), (1, 1)), name=f"conv_{index}")(x)
                x = nn.relu(x)
            outputs.append(x)
        return outputs


def _to_numpy(value: Any) -> np.ndarray:
    """A NumPy copy of a NumPy/JAX array or a torch tensor (duck-typed: no torch import)."""
    if hasattr(value, "detach"):
        value = value.detach().cpu().float().numpy()
    return np.asarray(value, dtype=np.float32)


def vgg19_from_torchvision(state: Mapping[str, Any]) -> dict[str, dict[str, Array]]:
    """A torchvision ``vgg19`` state dict -> :class:`Vgg19` params ``{"conv_N": {kernel, bias}}``.

    Reads ``features.N.weight [O, I, 3, 3]`` (OIHW) and ``features.N.bias [O]`` for the 13 convs
    up to relu5_1 and transposes kernels to HWIO; other keys (later convs, ``classifier.*``) are
    ignored. Use as ``Vgg19().apply({"params": params}, x)`` or :func:`make_vgg_apply`.

    Raises ValueError naming the key for a missing entry or a wrong shape.
    """
    params: dict[str, dict[str, Array]] = {}
    for index, (cin, cout) in VGG19_CONVS.items():
        entries = {}
        for name, shape in (("weight", (cout, cin, 3, 3)), ("bias", (cout,))):
            key = f"features.{index}.{name}"
            if key not in state:
                raise ValueError(
                    f"VGG19 state dict has no {key!r} (expected shape {shape}); {VGG19_HINT}"
                )
            value = _to_numpy(state[key])
            if value.shape != shape:
                raise ValueError(
                    f"VGG19 state dict entry {key!r} has shape {tuple(value.shape)}, expected "
                    f"{shape}; is this torchvision's vgg19 (not vgg16/vgg19_bn)?"
                )
            entries[name] = value
        params[f"conv_{index}"] = {
            "kernel": jnp.asarray(entries["weight"].transpose(2, 3, 1, 0)),  # OIHW -> HWIO
            "bias": jnp.asarray(entries["bias"]),
        }
    return params


def load_vgg19(path: str | os.PathLike) -> dict[str, dict[str, Array]]:
    """:class:`Vgg19` params from a torchvision ``.pth`` state dict or an ``.npz`` with its keys.

    ``.npz`` files need no torch. Raises FileNotFoundError (one line) if ``path`` does not exist,
    ImportError saying how to install torch for a ``.pth`` without torch, and ValueError for an
    unknown suffix or a state dict of the wrong network.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"VGG19 weights {path!r} not found: {VGG19_HINT}")
    suffix = os.path.splitext(path)[1].lower()
    if suffix == ".npz":
        with np.load(path) as data:
            state = {key: data[key] for key in data.files}
    elif suffix in (".pth", ".pt"):
        try:
            import torch
        except ImportError as error:
            raise ImportError(TORCH_HINT) from error
        state = torch.load(path, map_location="cpu", weights_only=True)
    else:
        raise ValueError(f"VGG19 weights {path!r}: unknown suffix {suffix!r}; {VGG19_HINT}")
    return vgg19_from_torchvision(state)


def make_vgg_apply(params: Mapping[str, Any]) -> Callable[[Array], list[Array]]:
    """``x [B, H, W, 3] -> five feature maps`` with frozen ``params`` (no gradient to them)."""
    frozen = jax.lax.stop_gradient(params)
    model = Vgg19()
    return lambda x: model.apply({"params": frozen}, x)


# --------------------------------------------------------------------------------------------
# Reconstruction losses
# --------------------------------------------------------------------------------------------


def perceptual_loss(
    vgg_apply: Callable[[Array], Sequence[Array]],
    prediction_pyramid: FeatureMaps,
    target_pyramid: FeatureMaps,
    scales: Sequence[float],
    weights: Sequence[float] = DEFAULT_PERCEPTUAL_WEIGHTS,
) -> Array:
    """The paper's multi-scale perceptual loss (FOMM ``GeneratorFullModel``), a scalar.

    ``sum_scale sum_i weights[i] * mean |vgg(pred)_i - vgg(target)_i|`` over the pyramid levels
    ``prediction_<scale> [B, h, w, 3]``; ``vgg_apply`` maps an image batch to the feature maps
    (e.g. :func:`make_vgg_apply`), and ``weights`` has one entry per map. Gradients flow to the
    prediction only: the target branch is detached, as in FOMM.
    """
    total = jnp.zeros((), jnp.float32)
    for scale in scales:
        pred_features = vgg_apply(_lookup(prediction_pyramid, "prediction_", scale))
        # stop_gradient on the input too, so JAX does not even linearise the target branch.
        target = jax.lax.stop_gradient(_lookup(target_pyramid, "prediction_", scale))
        target_features = vgg_apply(target)
        if len(weights) > len(pred_features):
            raise ValueError(
                f"{len(weights)} perceptual weights for {len(pred_features)} feature maps"
            )
        for weight, pred, target in zip(weights, pred_features, target_features):
            if weight == 0:
                continue
            total = total + weight * jnp.mean(jnp.abs(pred - jax.lax.stop_gradient(target)))
    return total


def pixel_pyramid_l1(
    prediction_pyramid: FeatureMaps,
    target_pyramid: FeatureMaps,
    scales: Sequence[float],
    weight: float,
) -> Array:
    """SUBSTITUTE reconstruction loss, NOT the paper's: ``sum_scale weight * mean |pred - target|``.

    For runs without the VGG19 weights only (no download possible, smoke tests); results trained
    with it are not comparable with FOMM's. Same pyramids and keys as :func:`perceptual_loss`; the
    target is detached.
    """
    total = jnp.zeros((), jnp.float32)
    for scale in scales:
        target = jax.lax.stop_gradient(_lookup(target_pyramid, "prediction_", scale))
        prediction = _lookup(prediction_pyramid, "prediction_", scale)
        total = total + weight * jnp.mean(jnp.abs(prediction - target))
    return total


# --------------------------------------------------------------------------------------------
# Equivariance: random thin-plate-spline transforms
# --------------------------------------------------------------------------------------------


def _warp_point(theta: Array, control_points: Array, control_params: Array, c: Array) -> Array:
    """One point: ``theta [2, 3]``, ``control_points [Q, 2]``, ``control_params [Q]``, ``c [2]``."""
    affine = theta[:, :2] @ c + theta[:, 2]
    # FOMM measures TPS distances in L1, and adds the same scalar to x and y.
    distance = jnp.sum(jnp.abs(c[None, :] - control_points), axis=-1)  # [Q]
    radial = distance**2 * jnp.log(distance + 1e-6)
    return affine + jnp.sum(radial * control_params)


@flax.struct.dataclass
class Transform:
    """A batch of random affine + thin-plate-spline warps (FOMM's ``Transform``); a pytree.

    ``theta [B, 2, 3]`` (affine part), ``control_points [P*P, 2]`` (a ``P x P`` coordinate grid)
    and ``control_params [B, 1, P*P]`` (TPS weights). Coordinates are ``(x, y)`` in ``[-1, 1]``.
    """

    theta: Array
    control_points: Array
    control_params: Array

    @property
    def batch(self) -> int:
        return self.theta.shape[0]

    @classmethod
    def random(
        cls,
        key: jax.Array,
        batch: int,
        sigma_affine: float = 0.05,
        sigma_tps: float = 0.005,
        points_tps: int = 5,
    ) -> Transform:
        """``theta = eye(2, 3) + N(0, sigma_affine)``, TPS weights ``N(0, sigma_tps)`` (FOMM)."""
        key_affine, key_tps = jax.random.split(key)
        theta = jnp.eye(2, 3)[None] + sigma_affine * jax.random.normal(key_affine, (batch, 2, 3))
        params = sigma_tps * jax.random.normal(key_tps, (batch, 1, points_tps**2))
        return cls(theta, make_coordinate_grid(points_tps, points_tps).reshape(-1, 2), params)

    @classmethod
    def identity(cls, batch: int, points_tps: int = 5) -> Transform:
        """The identity warp: ``theta = eye(2, 3)``, zero TPS weights."""
        theta = jnp.broadcast_to(jnp.eye(2, 3), (batch, 2, 3))
        params = jnp.zeros((batch, 1, points_tps**2))
        return cls(theta, make_coordinate_grid(points_tps, points_tps).reshape(-1, 2), params)

    def _per_point(self, fn: Callable, coords: Array) -> Array:
        """Map ``fn(theta, control_points, params, c)`` over ``coords [B or 1, N, 2]``."""
        coords = jnp.broadcast_to(coords, (self.batch,) + coords.shape[1:])
        over_points = jax.vmap(fn, in_axes=(None, None, None, 0))
        over_batch = jax.vmap(over_points, in_axes=(0, None, 0, 0))
        return over_batch(
            self.theta, self.control_points, self.control_params[:, 0].astype(coords.dtype), coords
        )

    def warp_coordinates(self, coords: Array) -> Array:
        """``coords [B or 1, N, 2]`` -> ``[B, N, 2]``: affine, plus one TPS scalar on x and y."""
        return self._per_point(_warp_point, coords)

    def jacobian(self, coords: Array) -> Array:
        """``d warp / d coords`` at ``coords [B or 1, N, 2]`` -> ``[B, N, 2, 2]``.

        Row ``i`` is the gradient of output coordinate ``i`` (FOMM stacks ``grad_x``, ``grad_y``).
        Differentiable in ``coords`` (FOMM's ``create_graph=True``).
        """
        return self._per_point(jax.jacfwd(_warp_point, argnums=3), coords)

    def transform_frame(self, frames: Array) -> Array:
        """Warp ``frames [B, H, W, C]``: output pixel ``p`` samples the frame at ``warp(p)``.

        Reflection padding as FOMM. ``align_corners=True`` although FOMM calls ``grid_sample`` with
        the default: it was written for PyTorch 1.0, whose default was the ``align_corners=True``
        behaviour, and with it the identity transform reproduces the frame exactly.
        """
        _, height, width, _ = frames.shape
        grid = make_coordinate_grid(height, width, frames.dtype).reshape(1, height * width, 2)
        grid = self.warp_coordinates(grid).reshape(self.batch, height, width, 2)
        return grid_sample(frames, grid, padding_mode="reflection", align_corners=True)


def equivariance_losses(
    kp_driving: Keypoints, kp_transformed: Keypoints, transform: Transform
) -> tuple[Array, Array]:
    """FOMM's equivariance constraints (paper Sec. 3.4), unweighted: ``(value, jacobian)`` losses.

    ``kp_driving`` are the keypoints of frames ``X`` and ``kp_transformed`` those of
    ``transform.transform_frame(X)`` (``value [B, K, 2]``, ``jacobian [B, K, 2, 2]``). Since
    ``transformed(p) = X(warp(p))``, a keypoint ``q`` of the warped frame is ``warp(q)`` in ``X``:

    - value: ``mean |kp_driving.value - warp(kp_transformed.value)|``;
    - jacobian: ``mean |I - inv(J_driving) @ (d warp(q) @ J_transformed)|``.

    The caller multiplies each by its config weight.
    """
    value_loss = jnp.mean(
        jnp.abs(kp_driving.value - transform.warp_coordinates(kp_transformed.value))
    )
    jacobian_transformed = transform.jacobian(kp_transformed.value) @ kp_transformed.jacobian
    normed = invert_2x2(kp_driving.jacobian) @ jacobian_transformed
    jacobian_loss = jnp.mean(jnp.abs(jnp.eye(2, dtype=normed.dtype) - normed))
    return value_loss, jacobian_loss


# --------------------------------------------------------------------------------------------
# Least-squares GAN (FOMM's multi-scale discriminator outputs)
# --------------------------------------------------------------------------------------------


def generator_gan_loss(
    disc_maps_generated: FeatureMaps, scales: Sequence[float], weight: float
) -> Array:
    """``sum_scale weight * mean((1 - D(generated))^2)`` over ``prediction_map_<scale>``."""
    total = jnp.zeros((), jnp.float32)
    for scale in scales:
        prediction = _lookup(disc_maps_generated, "prediction_map_", scale)
        total = total + weight * jnp.mean((1.0 - prediction) ** 2)
    return total


def discriminator_gan_loss(
    real_maps: FeatureMaps, generated_maps: FeatureMaps, scales: Sequence[float], weight: float
) -> Array:
    """``sum_scale weight * mean((1 - D(real))^2 + D(generated)^2)``, a scalar.

    FOMM's ``DiscriminatorFullModel``, over ``prediction_map_<scale>``. Detaching the
    generated frames before the discriminator is the caller's business.
    """
    total = jnp.zeros((), jnp.float32)
    for scale in scales:
        real = _lookup(real_maps, "prediction_map_", scale)
        generated = _lookup(generated_maps, "prediction_map_", scale)
        total = total + weight * jnp.mean((1.0 - real) ** 2 + generated**2)
    return total


def feature_matching_loss(
    real_maps: FeatureMaps,
    generated_maps: FeatureMaps,
    scales: Sequence[float],
    weights: Sequence[float],
) -> Array:
    """``sum_scale sum_{i: weights[i] != 0} weights[i] * mean |D_i(real) - D_i(generated)|``.

    Over the discriminator's intermediate maps ``feature_maps_<scale>`` (a list per scale). As
    in FOMM the real maps are not detached: they do not depend on the generator.
    """
    total = jnp.zeros((), jnp.float32)
    for scale in scales:
        real = _lookup(real_maps, "feature_maps_", scale)
        generated = _lookup(generated_maps, "feature_maps_", scale)
        if len(real) != len(generated) or len(weights) < len(real):
            raise ValueError(
                f"feature_maps_{scale_key(scale)}: {len(real)} real and {len(generated)} "
                f"generated feature maps with {len(weights)} feature-matching weights"
            )
        for weight, a, b in zip(weights, real, generated):
            if weight == 0:
                continue
            total = total + weight * jnp.mean(jnp.abs(a - b))
    return total
