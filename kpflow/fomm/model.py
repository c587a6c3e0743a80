"""Building FOMM from a config, and the inference object returned by :func:`load`.

A FOMM directory (written by ``python -m kpflow.fomm.convert`` or ``python -m train.fomm``)::

    DIR/config.json     the config (``config.model`` mirrors the reference's ``model_params``)
    DIR/checkpoints/    orbax steps; item ``variables`` = {"kp_detector", "generator"[, "discriminator"]}

Usage::

    fomm = kpflow.fomm.load("runs/fomm_vox")
    kp = fomm.detect(frames)                      # frames [B, H, W, 3] in [0, 1] -> Keypoints
    frames = fomm.generate(source, kp_source, kp_driving)
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from kpflow import run_store
from kpflow.fomm.discriminator import MultiScaleDiscriminator
from kpflow.fomm.generator import OcclusionAwareGenerator
from kpflow.fomm.keypoint_detector import KPDetector
from kpflow.keypoints import Keypoints
from kpflow.run_store import CheckpointStore

CONFIG_FILE = "config.json"
LOAD_HINT = (
    "convert an official checkpoint with `python -m kpflow.fomm.convert --checkpoint vox-cpk.pth.tar "
    "--config configs/fomm_vox.py --out DIR` or train one with `python -m train.fomm`"
)


@dataclasses.dataclass(frozen=True)
class Networks:
    """The three FOMM networks of one config (Flax modules: stateless, hashable)."""

    kp_detector: KPDetector
    generator: OcclusionAwareGenerator
    discriminator: MultiScaleDiscriminator


def build_networks(model_config, dtype: Any = jnp.float32) -> Networks:
    """Networks of ``config.model`` (``common``, ``kp_detector``, ``generator``, ``discriminator``)."""
    m = ml_collections.ConfigDict(model_config).to_dict() if not isinstance(model_config, dict) else model_config
    common = dict(m["common"])
    gen = dict(m["generator"])
    if gen.get("dense_motion_params") is not None:
        gen["dense_motion_params"] = dict(gen["dense_motion_params"])
    disc = dict(m.get("discriminator", {}))
    scales = tuple(disc.pop("scales", (1,)))
    disc_kwargs = {
        "num_channels": common["num_channels"],
        "num_kp": common["num_kp"],
        **{k: v for k, v in disc.items() if k in ("block_expansion", "num_blocks", "max_features", "sn", "use_kp", "kp_variance")},
    }
    return Networks(
        kp_detector=KPDetector(**dict(m["kp_detector"]), **common, dtype=dtype),
        generator=OcclusionAwareGenerator(**gen, **common, dtype=dtype),
        discriminator=MultiScaleDiscriminator(scales=scales, kwargs=disc_kwargs),
    )


def init_variables(nets: Networks, rng: jax.Array, frame_shape, with_discriminator: bool = True) -> dict:
    """Fresh variables ``{"kp_detector", "generator"[, "discriminator"]}`` for frames ``frame_shape``
    (H, W[, C]); each entry holds ``params`` and ``batch_stats``."""
    h, w = int(frame_shape[0]), int(frame_shape[1])
    c = nets.kp_detector.num_channels

    # One compiled program: run op by op, initialising the networks dispatches hundreds of small
    # computations (minutes for the tiny FOMM on a CPU). Inside a caller's jit it is simply inlined.
    # Compiled once per architecture and frame shape (networks equal in repr are the same networks).
    key = (repr(nets), h, w, c, bool(with_discriminator))
    if key not in _COMPILED_INITS:
        _COMPILED_INITS[key] = _compile_init(nets, h, w, c, with_discriminator)
    return jax.tree.map(jnp.asarray, _COMPILED_INITS[key](rng))


_COMPILED_INITS: dict = {}


def _compile_init(nets: Networks, h: int, w: int, c: int, with_discriminator: bool):
    @jax.jit
    def init(rng):
        frames = jnp.zeros((1, h, w, c), jnp.float32)
        k_det, k_gen, k_disc = jax.random.split(rng, 3)
        det_vars = nets.kp_detector.init(k_det, frames)
        kp = nets.kp_detector.apply(det_vars, frames)
        variables = {"kp_detector": det_vars, "generator": nets.generator.init(k_gen, frames, kp, kp)}
        if with_discriminator:
            pyramid = {f"prediction_{_key(s)}": frames for s in nets.discriminator.scales}
            variables["discriminator"] = nets.discriminator.init(k_disc, pyramid, kp)
        return jax.tree.map(lambda x: x, variables)

    return init


def _key(scale) -> str:
    from kpflow.fomm.ops import scale_key

    return scale_key(scale)


def check_frames(frames, what: str = "frames") -> np.ndarray | jax.Array:
    """Validate ``[B, H, W, 3]`` float frames in [0, 1] at the public boundary (one-line errors)."""
    shape = np.shape(frames)
    if len(shape) != 4 or shape[-1] != 3:
        raise ValueError(f"{what} must be [B, H, W, 3] (NHWC, RGB); got shape {tuple(shape)}")
    dtype = getattr(frames, "dtype", None)
    if dtype is not None and np.issubdtype(np.dtype(dtype), np.integer):
        raise ValueError(f"{what} must be float in [0, 1]; got {np.dtype(dtype)} (divide uint8 frames by 255)")
    return frames


class FOMM:
    """A loaded FOMM: jitted keypoint detection and frame generation (inference, eval-mode batch norm).

    ``detect(frames [B, H, W, 3] in [0, 1]) -> Keypoints`` (``value [B, K, 2]``, ``jacobian [B, K, 2, 2]``);
    ``generate(source [B, H, W, 3], kp_source, kp_driving) -> frames [B, H, W, 3]``;
    ``generate_all`` also returns the mask, occlusion map and deformed source.
    """

    def __init__(self, config: ml_collections.ConfigDict, variables: dict, dtype: Any = jnp.float32):
        self.config = config
        self.variables = variables
        self.networks = build_networks(config.model, dtype=dtype)
        nets = self.networks
        self._detect = jax.jit(lambda v, x: nets.kp_detector.apply(v, x))
        self._generate = jax.jit(lambda v, s, ks, kd: nets.generator.apply(v, s, ks, kd))

    @property
    def num_kp(self) -> int:
        return int(self.config.model.common.num_kp)

    def detect(self, frames) -> Keypoints:
        check_frames(frames)
        return self._detect(self.variables["kp_detector"], jnp.asarray(frames, jnp.float32))

    def generate_all(self, source, kp_source: Keypoints, kp_driving: Keypoints) -> dict:
        check_frames(source, "source")
        b = np.shape(source)[0]
        for name, kp in (("kp_source", kp_source), ("kp_driving", kp_driving)):
            if np.shape(kp.value) != (b, self.num_kp, 2):
                raise ValueError(f"{name}.value must be [B={b}, K={self.num_kp}, 2]; got {tuple(np.shape(kp.value))}")
        return self._generate(self.variables["generator"], jnp.asarray(source, jnp.float32), kp_source, kp_driving)

    def generate(self, source, kp_source: Keypoints, kp_driving: Keypoints) -> jax.Array:
        return self.generate_all(source, kp_source, kp_driving)["prediction"]


# -- FOMM directories ------------------------------------------------------------------------------


def save_config(directory: str, config: ml_collections.ConfigDict) -> None:
    run_store.save_config(directory, config, CONFIG_FILE)


def load_config(directory: str) -> ml_collections.ConfigDict:
    """``DIR/config.json`` of a FOMM directory; one-line errors if it is missing or not a FOMM config."""
    config = run_store.read_config(directory, CONFIG_FILE, "FOMM model", LOAD_HINT)
    path = os.path.join(directory, CONFIG_FILE)
    if "model" not in config or "kp_detector" not in config.model:
        raise ValueError(f"{path} is not a FOMM config (no model.kp_detector); is {directory!r} a forecaster run?")
    return config


def save_model(directory: str, config: ml_collections.ConfigDict, variables: dict, meta: dict | None = None, step: int = 0) -> None:
    """Write a FOMM directory holding ``variables`` at ``step`` (used by the converter)."""
    save_config(directory, config)
    with CheckpointStore(directory, keep=1, hint=LOAD_HINT) as store:
        store.save(step, variables, None, dict(meta or {}), is_best=False)


def restore_variables(directory: str, config: ml_collections.ConfigDict, which: str = "latest") -> tuple[dict, dict]:
    """-> ``(variables, meta)`` of the newest checkpoint in ``directory``, checked against the
    networks of ``config`` (a converted checkpoint may hold no discriminator)."""
    with CheckpointStore(directory, read_only=True, hint=LOAD_HINT) as store:
        variables, _, meta = store.restore(which, None)
    nets = build_networks(config.model)
    expected = jax.eval_shape(lambda k: init_variables(nets, k, frame_shape_of(config)), jax.random.key(0))
    for name in ("kp_detector", "generator"):
        if name not in variables:
            raise ValueError(f"{directory!r}: the checkpoint holds no {name} variables; {LOAD_HINT}")
    expected = {k: v for k, v in expected.items() if k in variables}
    check_same_structure(expected, variables, where=directory)
    variables = jax.tree.map(jnp.asarray, variables)
    return variables, meta


def frame_shape_of(config) -> tuple[int, int]:
    """The training frame size of a config (256x256 when it names none)."""
    shape = config.data.get("frame_shape", (256, 256)) if "data" in config else (256, 256)
    return int(shape[0]), int(shape[1])


def check_same_structure(expected, actual, where: str) -> None:
    """Raise ValueError naming the first missing, unexpected or mis-shaped variable."""
    exp = {"/".join(map(str, _path(p))): np.shape(x) for p, x in jax.tree_util.tree_leaves_with_path(expected)}
    act = {"/".join(map(str, _path(p))): np.shape(x) for p, x in jax.tree_util.tree_leaves_with_path(actual)}
    missing = sorted(set(exp) - set(act))
    unexpected = sorted(set(act) - set(exp))
    if missing:
        raise ValueError(f"{where}: variable {missing[0]} is missing ({len(missing)} missing in all); wrong config?")
    if unexpected:
        raise ValueError(f"{where}: unexpected variable {unexpected[0]} ({len(unexpected)} in all); wrong config?")
    for key, shape in exp.items():
        if tuple(act[key]) != tuple(shape):
            raise ValueError(f"{where}: variable {key} has shape {tuple(act[key])}, the config expects {tuple(shape)}")


def _path(path) -> list:
    return [getattr(p, "key", getattr(p, "name", getattr(p, "idx", p))) for p in path]


def random_fomm(config: ml_collections.ConfigDict, seed: int = 0, dtype: Any = jnp.float32) -> FOMM:
    """A :class:`FOMM` with randomly initialised weights (tests, benchmarks, notebooks without a
    trained model). Initialisation is jitted with the ``unsafe_rbg`` generator: XLA compiles a
    threefry draw per parameter very slowly on CPUs (tens of seconds even for the tiny config)."""
    nets = build_networks(config.model, dtype=dtype)
    shape = frame_shape_of(config)
    init = jax.jit(lambda key: init_variables(nets, key, shape, with_discriminator=False))
    return FOMM(config, init(jax.random.key(seed, impl="unsafe_rbg")), dtype=dtype)


def load(directory: str, which: str = "latest", dtype: Any = jnp.float32) -> FOMM:
    """Load a FOMM directory (converted or trained) as a :class:`FOMM`."""
    config = load_config(directory)
    variables, _ = restore_variables(directory, config, which)
    return FOMM(config, variables, dtype=dtype)
