"""FOMM speed per frame: ``python -m eval.bench fomm [--config_variant tiny] [--out FILE.json]``.

Measures the median (and IQR) milliseconds per frame of the FOMM keypoint detector and of the
generator (dense motion included), each one jitted call on a batch of ``--batch`` frames, compiled
beforehand, with randomly initialised weights (timing does not depend on values) at the official
vox-256 config (``--config_variant tiny`` for a quick run). Nothing else is timed in the same run,
so the result leads with the two times; PyTorch FOMM on a 2-core CPU (generator 1.02 s/frame,
detector 33 ms/frame, docs/design.md) was measured on another machine and is shown only as context.
"""

from __future__ import annotations

import argparse
from typing import Any

import jax
import jax.numpy as jnp

from configs.fomm_common import fomm_config
from eval.bench import timing
from kpflow.cli import UsageError
from kpflow.fomm.model import build_networks, init_variables

HELP = "FOMM keypoint detector and generator: ms per frame, jitted, compilation excluded"

# PyTorch FOMM (vox-256 config) on the 2-core CPU of docs/design.md's reference measurements: another
# machine, so context only.
FOMM_REFERENCE = {
    "what": "PyTorch FOMM, vox-256 config, one 256x256 frame",
    "cpu_ms": {"generator": 1020.0, "detector": 33.0},
    "params_m": {"generator": 45.6, "detector": 14.2},
    "gflop": {"generator": 107.0, "detector": 2.6},
    "frame_size": 256,
    "device": "2-core CPU",
    "source": "docs/design.md, 'Reference measurements'",
}
NETWORKS = ("detector", "generator")


def add_config_arguments(p: argparse.ArgumentParser) -> None:
    """The FOMM config options every benchmark of a FOMM shares."""
    p.add_argument("--dataset", default="vox", help="FOMM config dataset (default vox)")
    p.add_argument("--config_variant", default="", choices=("", "tiny"),
                   help="'' for the official FOMM config (default), 'tiny' for a quick run")
    p.add_argument("--frame_size", type=int, default=256, help="frame height and width (default 256)")


def config_of(args: argparse.Namespace, frame_size: int):
    """The FOMM config ``--dataset`` / ``--config_variant`` name, for ``frame_size`` frames;
    UsageError on an unknown dataset or variant."""
    try:
        config = fomm_config(args.dataset, args.config_variant)
    except ValueError as e:
        raise UsageError(str(e)) from None
    config.data.frame_shape = (frame_size, frame_size, 3)
    return config


def config_fields(args: argparse.Namespace) -> dict[str, Any]:
    """What a result records of the FOMM config options."""
    return {"dataset": args.dataset, "config_variant": args.config_variant or "official",
            "frame_size": args.frame_size}


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_config_arguments(p)
    p.add_argument("--batch", type=int, default=1, help="frames per call (default 1)")
    p.add_argument("--repeats", type=int, default=10, help="timed calls per network (default 10)")
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"),
                   help="compute dtype of the networks (parameters stay float32)")
    p.add_argument("--seed", type=int, default=0)


def time_networks(args: argparse.Namespace) -> dict[str, Any]:
    """Each network's milliseconds per call (``{"detector": [ms], "generator": [ms]}``), its variables,
    and the load average before and after the timed calls."""
    dtype = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}[args.dtype]
    nets = build_networks(config_of(args, args.frame_size).model, dtype=dtype)
    shape = (args.frame_size, args.frame_size)
    # Jitted, and the "unsafe_rbg" generator: XLA compiles a threefry draw per parameter slowly on
    # CPUs (tens of seconds even for the tiny config); the values do not matter for timing.
    init = jax.jit(lambda k: init_variables(nets, k, shape, with_discriminator=False))
    variables = init(jax.random.key(args.seed, impl="unsafe_rbg"))
    det_vars, gen_vars = variables["kp_detector"], variables["generator"]

    frames = jax.random.uniform(jax.random.key(args.seed + 1), (2, args.batch, *shape, 3), jnp.float32)
    source, driving = frames[0], frames[1]
    detect = jax.jit(lambda v, x: nets.kp_detector.apply(v, x))
    # Only the prediction is returned, as an inference user needs; dense motion runs regardless.
    generate = jax.jit(lambda v, s, ks, kd: nets.generator.apply(v, s, ks, kd)["prediction"])
    kp_source = jax.block_until_ready(detect(det_vars, source))
    kp_driving = jax.block_until_ready(detect(det_vars, driving))
    prediction = jax.block_until_ready(generate(gen_vars, source, kp_source, kp_driving))
    if prediction.shape != source.shape:
        raise UsageError(f"the generator returned {prediction.shape}, expected {source.shape}")
    calls = {
        "detector": lambda: jax.block_until_ready(detect(det_vars, driving)),
        "generator": lambda: jax.block_until_ready(generate(gen_vars, source, kp_source, kp_driving)),
    }
    before = timing.load_average()
    times = {name: timing.time_calls(fn, args.repeats) for name, fn in calls.items()}
    return {
        "times": times,
        "variables": {"detector": det_vars, "generator": gen_vars},
        "load_average_1m": {"before": before, "after": timing.load_average()},
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Time FOMM's keypoint detector and generator (with dense motion) per frame, jitted.

    Each network is one jitted call on ``[batch, S, S, 3]`` frames (the generator also gets source
    and driving keypoints, detected beforehand), compiled and run once before the timed calls;
    every call blocks on its result. Per-frame times are call times divided by the batch.
    """
    if args.batch < 1 or args.repeats < 1 or args.frame_size < 8:
        raise UsageError("--batch and --repeats must be >= 1, --frame_size >= 8")
    timed = time_networks(args)
    per_frame = {name: timing.ms_stats([t / args.batch for t in timed["times"][name]]) for name in NETWORKS}

    ref = FOMM_REFERENCE["cpu_ms"]
    env = timing.environment()
    return {
        "benchmark": "fomm",
        **config_fields(args),
        "batch": args.batch,
        "repeats": args.repeats,
        "dtype": args.dtype,
        "params_m": {name: timing.count_params(timed["variables"][name]) / 1e6 for name in ("generator", "detector")},
        "device_kind": env["device_kind"],
        "detector": per_frame["detector"],
        "generator": per_frame["generator"],
        "reference": FOMM_REFERENCE,
        "reference_cpu_ms": dict(ref),
        "comparable": args.config_variant == "" and args.frame_size == FOMM_REFERENCE["frame_size"],
        # reference / ours: > 1 means faster than the PyTorch reference on its 2-core CPU (another machine).
        "ratio_reference_over_ours": {k: ref[k] / per_frame[k]["median_ms"] for k in ref},
        # Other processes on the machine slow CPU timings down: the 1-minute load average
        # before and after the timed calls (above the number of CPUs means contention).
        "load_average_1m": timed["load_average_1m"],
        "environment": env,
    }


def format(r: dict[str, Any]) -> str:
    """The result as the table ``python -m eval.bench fomm`` prints; the PyTorch columns are context."""
    env, ref = r["environment"], r["reference"]
    lines = [
        (f"fomm: {r['dataset']} {r['config_variant']} config, "
         f"{r['frame_size']}x{r['frame_size']} frames, batch {r['batch']}, {r['dtype']}, median of {r['repeats']}"),
        (f"  backend {env['backend']} ({env['device_kind']}), "
         f"{env['usable_cpus']}/{env['cpu_count']} CPUs, jax {env['jax']}, flax {env['flax']}"),
        f"  {'network':<10} {'params':>8} {'ms/frame':>10} {'IQR':>8} {'PyTorch*':>11} {'PyTorch*/ours':>14}",
    ]
    for name in NETWORKS:
        t = r[name]
        lines.append(f"  {name:<10} {r['params_m'][name]:7.2f}M {t['median_ms']:10.3f} {t['iqr_ms']:8.3f} "
                     f"{ref['cpu_ms'][name]:8.0f} ms {r['ratio_reference_over_ours'][name]:13.2f}x")
    lines.append(f"  * context, not measured in this run: PyTorch FOMM on a {ref['device']} (another machine; docs/design.md)")
    load, cpus = r["load_average_1m"]["after"], env["usable_cpus"]
    if env["backend"] == "cpu" and load is not None and cpus and load > cpus:
        lines.append(f"  (load average {load:.1f} on {cpus} CPUs: other processes were running; "
                     "these CPU timings are inflated)")
    if not r["comparable"]:
        size = f"{ref['frame_size']}x{ref['frame_size']}"
        lines.append(f"  (the reference is the official config at {size}; these settings are not comparable)")
    return "\n".join(lines)
