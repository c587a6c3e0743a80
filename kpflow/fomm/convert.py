"""Convert an original FOMM PyTorch checkpoint into a kpflow FOMM directory.

    python -m kpflow.fomm.convert --checkpoint vox-cpk.pth.tar --config configs/fomm_vox.py --out DIR

The checkpoint holds the state dicts ``generator``, ``kp_detector`` and optionally
``discriminator`` (plus optimiser states, ignored). The key map is mechanical because the Flax
modules carry the PyTorch attribute names: ``a.down_blocks.3.conv.weight`` becomes
``a/down_blocks_3/conv/kernel``; convolution weights go from OIHW to HWIO; batch-norm
``weight/bias/running_mean/running_var`` become ``scale/bias`` (params) and ``mean/var``
(``batch_stats``); spectral-norm ``weight_orig/weight_u/weight_v`` become ``kernel`` and
``batch_stats`` ``u/v``. Fixed buffers (the anti-aliasing Gaussians) are recomputed, after checking
they match. Every mismatch is reported by its PyTorch name.

torch is an optional extra (``make torch``) needed only to read ``.pth.tar`` files; a ``.npz``
with keys ``<network>/<name>`` (e.g. ``generator/first.conv.weight``) converts without it.
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Mapping

import jax
import numpy as np

from kpflow.fomm.model import build_networks, frame_shape_of, init_variables, save_model
from kpflow.fomm.ops import anti_alias_kernel

NETWORKS = ("kp_detector", "generator", "discriminator")
TORCH_HINT = "reading a PyTorch checkpoint needs torch: run `make torch` (it pins torch==2.13.0, the CPU wheel, first)"
# Modules whose children are indexed (ModuleList / ModuleDict); their index joins the name.
_INDEXED = ("down_blocks", "up_blocks", "discs")


class ConversionError(ValueError):
    """A checkpoint that does not fit the config; the message names the offending parameter."""


def flax_location(torch_key: str, value: np.ndarray) -> tuple[str, tuple[str, ...], str] | None:
    """``torch_key`` -> ``(collection, module path, leaf name)``, or None for entries with no Flax
    variable (``num_batches_tracked``, anti-aliasing buffers)."""
    parts = torch_key.split(".")
    path: list[str] = []
    for part in parts[:-1]:
        if path and (part.isdigit() or path[-1] == "discs") and path[-1] in _INDEXED:
            path[-1] = f"{path[-1]}_{part.replace('.', '-')}"
        else:
            path.append(part)
    leaf = parts[-1]
    if leaf == "num_batches_tracked" or (path and path[-1] == "down" and leaf == "weight"):
        return None
    if leaf in ("weight", "weight_orig") and np.ndim(value) == 4:
        return "params", tuple(path), "kernel"
    if leaf == "weight":
        return "params", tuple(path), "scale"
    table = {"bias": ("params", "bias"), "running_mean": ("batch_stats", "mean"), "running_var": ("batch_stats", "var"),
             "weight_u": ("batch_stats", "u"), "weight_v": ("batch_stats", "v")}
    if leaf not in table:
        raise ConversionError(f"parameter {torch_key!r} has an unknown kind ({leaf!r}); is this an original FOMM checkpoint?")
    collection, name = table[leaf]
    return collection, tuple(path), name


_TORCH_LEAF = {"kernel": "weight", "scale": "weight", "bias": "bias", "mean": "running_mean", "var": "running_var",
               "u": "weight_u", "v": "weight_v"}


def torch_name(full_path: tuple[str, ...]) -> str:
    """``("params", "a", "down_blocks_3", "conv", "kernel")`` -> ``"a.down_blocks.3.conv.weight"``
    (the PyTorch name of a Flax variable, for messages; a spectral-norm kernel is ``weight_orig`` there)."""
    parts = []
    for part in full_path[1:-1]:
        for container in _INDEXED:
            if part.startswith(container + "_"):
                part = container + "." + part[len(container) + 1 :]
                break
        parts.append(part)
    return ".".join(parts + [_TORCH_LEAF.get(full_path[-1], full_path[-1])])


def _flatten(tree, prefix=()) -> dict[tuple[str, ...], object]:
    out = {}
    for k, v in tree.items():
        if isinstance(v, Mapping):
            out.update(_flatten(v, prefix + (k,)))
        else:
            out[prefix + (k,)] = v
    return out


def _unflatten(flat: dict[tuple[str, ...], np.ndarray]) -> dict:
    tree: dict = {}
    for path, value in flat.items():
        node = tree
        for p in path[:-1]:
            node = node.setdefault(p, {})
        node[path[-1]] = value
    return tree


def convert_network(
    state: Mapping[str, np.ndarray], expected: Mapping, network: str, anti_alias: Mapping[str, float] | None = None
) -> dict:
    """One PyTorch state dict -> Flax variables shaped like ``expected`` (e.g. from ``jax.eval_shape``).

    ``anti_alias`` maps each anti-aliasing buffer's key (``down.weight``) to the downscaling factor the
    config expects there. Raises :class:`ConversionError` naming the first unexpected, missing or
    mis-shaped parameter.
    """
    anti_alias = dict(anti_alias or {})
    want = {path: tuple(np.shape(x)) for path, x in _flatten(expected).items()}
    got: dict[tuple[str, ...], np.ndarray] = {}
    origin: dict[tuple[str, ...], str] = {}
    for key, value in state.items():
        value = np.asarray(value)
        loc = flax_location(key, value)
        if loc is None:
            if key.endswith("down.weight"):
                if key not in anti_alias:
                    raise ConversionError(
                        f"{network}.{key}: the checkpoint downscales here but the config's model does not "
                        "(scale_factor 1); does --config match the checkpoint?"
                    )
                _check_anti_alias_buffer(f"{network}.{key}", value, anti_alias.pop(key))
            continue
        collection, path, leaf = loc
        full = (collection,) + path + (leaf,)
        if leaf == "kernel":
            value = value.transpose(2, 3, 1, 0)  # OIHW -> HWIO
        if full not in want:
            raise ConversionError(
                f"{network}.{key} (shape {tuple(np.shape(state[key]))}) has no counterpart in the config's model "
                f"(looked for {'/'.join(full)}); does --config match the checkpoint?"
            )
        if tuple(value.shape) != want[full]:
            raise ConversionError(
                f"{network}.{key} has shape {tuple(np.shape(state[key]))} (-> {tuple(value.shape)} in Flax) but the "
                f"config's model expects {want[full]} at {'/'.join(full)}; does --config match the checkpoint?"
            )
        got[full] = value.astype(np.float32)
        origin[full] = key
    if anti_alias:
        key = next(iter(anti_alias))
        raise ConversionError(
            f"{network}.{key} is missing: the config's model downscales by {anti_alias[key]} there but the "
            "checkpoint has no anti-aliasing buffer; does --config match the checkpoint?"
        )
    missing = [p for p in want if p not in got]
    if missing:
        names = ", ".join(f"{network}.{torch_name(p)}" for p in missing[:3])
        raise ConversionError(
            f"{network}: {len(missing)} parameter(s) of the config's model are not in the checkpoint, e.g. {names}; "
            "does --config match the checkpoint?"
        )
    return _unflatten(got)


def _check_anti_alias_buffer(key: str, value: np.ndarray, scale: float) -> None:
    """The anti-aliasing Gaussian is recomputed from the config's scale; it must be the one stored
    (its size is the only trace in a checkpoint of the scale it was trained at)."""
    kernel, _, _ = anti_alias_kernel(scale)
    stored = np.asarray(value)[0, 0] if np.ndim(value) == 4 else np.asarray(value)
    if stored.shape != kernel.shape or not np.allclose(stored, kernel, atol=1e-6):
        raise ConversionError(
            f"{key}: the anti-aliasing kernel ({stored.shape[0]}x{stored.shape[-1]}) is not FOMM's Gaussian for "
            f"the config's scale_factor {scale} ({kernel.shape[0]}x{kernel.shape[1]}); does --config match the checkpoint?"
        )


def anti_alias_buffers(model_config) -> dict[str, dict[str, float]]:
    """Per network, the anti-aliasing buffer keys the reference model has for ``model_config``."""
    out: dict[str, dict[str, float]] = {"kp_detector": {}, "generator": {}, "discriminator": {}}
    kp_scale = float(model_config.kp_detector.get("scale_factor", 1))
    if kp_scale != 1:
        out["kp_detector"]["down.weight"] = kp_scale
    dense = model_config.generator.get("dense_motion_params")
    if dense is not None and float(dense.get("scale_factor", 1)) != 1:
        out["generator"]["dense_motion_network.down.weight"] = float(dense["scale_factor"])
    return out


def convert_checkpoint(checkpoint: Mapping[str, Mapping[str, np.ndarray]], config) -> dict:
    """``{"kp_detector": state, "generator": state[, "discriminator": state]}`` -> Flax variables."""
    nets = build_networks(config.model)
    expected = jax.eval_shape(lambda k: init_variables(nets, k, frame_shape_of(config)), jax.random.key(0))
    for name in ("kp_detector", "generator"):
        if name not in checkpoint:
            raise ConversionError(f"the checkpoint has no {name!r} state dict (found: {sorted(checkpoint)})")
    buffers = anti_alias_buffers(config.model)
    return {
        name: convert_network(checkpoint[name], expected[name], name, buffers[name])
        for name in NETWORKS
        if name in checkpoint
    }


def read_checkpoint(path: str, trust: bool = False) -> dict[str, dict[str, np.ndarray]]:
    """Read the state dicts of ``path`` (``.pth``/``.pth.tar`` via torch, or ``.npz``) as NumPy."""
    from kpflow.io import load_npz

    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint {path!r} does not exist")
    if path.endswith(".npz"):
        try:
            arrays = load_npz(path, "a FOMM state (.npz with keys <network>/<name>)")
        except ValueError as e:
            raise ConversionError(str(e)) from None
        out: dict[str, dict[str, np.ndarray]] = {}
        for key, value in arrays.items():
            network, _, name = key.partition("/")
            if network in NETWORKS and name:
                out.setdefault(network, {})[name] = value
        if not out:
            raise ConversionError(f"{path}: no '<network>/<name>' keys for {NETWORKS}")
        return out
    try:
        import torch
    except ImportError as exc:
        raise ImportError(TORCH_HINT) from exc
    try:
        raw = torch.load(path, map_location="cpu", weights_only=not trust)
    except Exception as exc:  # noqa: BLE001 - torch raises many kinds; report them in one line
        hint = "" if trust else " (if you trust this file, retry with --trust_checkpoint to allow arbitrary pickles)"
        raise ConversionError(f"{path}: torch cannot read it: {str(exc).splitlines()[0]}{hint}") from None
    if not isinstance(raw, Mapping):
        raise ConversionError(f"{path}: expected a dict of state dicts, got {type(raw).__name__}")
    out = {}
    for network in NETWORKS:
        if network in raw:
            out[network] = {k: v.detach().cpu().numpy() for k, v in raw[network].items()}
    if not out:
        raise ConversionError(f"{path}: none of {NETWORKS} in the checkpoint (keys: {sorted(raw)[:8]})")
    return out


# -- CLI -------------------------------------------------------------------------------------------

PROG = "python -m kpflow.fomm.convert"


def define_flags() -> None:
    """The converter's flags, defined when the CLI runs (importing this module defines none)."""
    from absl import flags
    from ml_collections import config_flags

    values = flags.FLAGS  # read now, not at import: tests swap in a fresh FlagValues
    config_flags.DEFINE_config_file("config", None, "FOMM config, e.g. configs/fomm_vox.py", flag_values=values,
                                    lock_config=True)
    flags.DEFINE_string("checkpoint", None, "original FOMM checkpoint (.pth.tar) or .npz state", flag_values=values)
    flags.DEFINE_string("out", None, "output FOMM directory", flag_values=values)
    flags.DEFINE_bool("trust_checkpoint", False, "let torch unpickle arbitrary objects (only for files you trust)",
                      flag_values=values)
    flags.DEFINE_bool("overwrite", False, "replace the model already in --out", flag_values=values)
    flags.DEFINE_bool("skip_discriminator", False, "convert only the keypoint detector and generator",
                      flag_values=values)
    flags.mark_flags_as_required(["config", "checkpoint", "out"], flag_values=values)


def main(argv) -> None:
    """Convert as the flags say (after :func:`define_flags` and ``kpflow.cli.parse_absl_flags``).
    A mistake the user can fix (a wrong config, a missing, damaged or foreign checkpoint, an
    unwritable ``--out``) is one line ``error: ...`` on stderr and exit status 2."""
    from absl import flags
    from ml_collections import config_flags

    from kpflow.cli import EXIT_USAGE, UsageError, check_config_kind, one_line
    from kpflow.io import check_output_path

    FLAGS = flags.FLAGS
    try:
        if len(argv) > 1:
            raise UsageError(f"unexpected arguments {argv[1:]}; flags look like --out=DIR")
        config = FLAGS.config
        check_config_kind(config, "fomm", f"--config {config_flags.get_config_filename(FLAGS['config'])}")
        check_output_path(FLAGS.out, "--out", folder=True)
        state = read_checkpoint(FLAGS.checkpoint, trust=FLAGS.trust_checkpoint)
        if FLAGS.skip_discriminator:
            state.pop("discriminator", None)
        variables = convert_checkpoint(state, config)
        if os.path.exists(os.path.join(FLAGS.out, "checkpoints")) or os.path.exists(os.path.join(FLAGS.out, "config.json")):
            if not FLAGS.overwrite:
                raise UsageError(f"{FLAGS.out!r} already holds a FOMM model; choose another --out or pass --overwrite")
            for name in ("checkpoints", "best", "config.json"):
                path = os.path.join(FLAGS.out, name)
                if os.path.isdir(path):
                    shutil.rmtree(path)
                elif os.path.exists(path):
                    os.remove(path)
        count = {k: sum(np.size(x) for x in jax.tree.leaves(v["params"])) for k, v in variables.items()}
        save_model(FLAGS.out, config, variables, meta={"source": os.path.abspath(FLAGS.checkpoint),
                                                       "networks": sorted(variables)})
    except (UsageError, ValueError, OSError, ImportError) as exc:  # ConversionError is a ValueError
        print(f"error: {one_line(exc)}", file=sys.stderr)
        raise SystemExit(EXIT_USAGE) from None
    print(f"wrote {FLAGS.out}: " + ", ".join(f"{k} {n / 1e6:.1f} M params" for k, n in count.items()))


def cli() -> None:
    from absl import app

    from kpflow.cli import parse_absl_flags

    define_flags()
    app.run(main, flags_parser=parse_absl_flags)


if __name__ == "__main__":
    cli()
