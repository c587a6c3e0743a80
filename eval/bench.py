"""Speed benchmarks. ``python -m eval.bench <benchmark> [options]``; each prints a table and can write JSON.

Benchmarks (argparse subcommands; add one with a ``_add_<name>`` parser and a ``bench_<name>`` function):

- ``forecast``: median time to draw S closed-loop samples of one N-M window (batch of one window)
  with a randomly initialised forecaster, as one jitted ``vmap``-ed call (``Forecaster.sample``)
  and as a Python loop calling a jitted single-sample function once per sample (how the authors'
  PyTorch code draws them). Compilation is excluded from both. The reference is the authors'
  VRNN: 100 samples x 24 steps (12-12) in 128 ms on a 2-core CPU (DESIGN.md).
- ``fomm``: median (and IQR) milliseconds per frame of the FOMM keypoint detector and of the
  generator (dense motion included), each one jitted call on a batch of ``--batch`` frames,
  compiled beforehand, with randomly initialised weights (timing does not depend on values) at the
  official vox-256 config (``--config_variant tiny`` for a quick run). The reference is PyTorch
  FOMM on a 2-core CPU: generator 1.02 s/frame, detector 33 ms/frame (DESIGN.md).
- ``pipeline``: the whole system on one clip, end to end: S sampled futures of one N-M block
  forecast and rendered with ``kpflow.pipeline`` (default 100 samples x 24 frames at 256x256, the
  issue's GPU target), with the compiled memory of one rendering chunk and the device's peak.

Timings are measured here, never asserted in tests.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

# The authors' VRNN sizes (appendix B of the papers; hidden 256, latent 20, MLPs 128).
AUTHORS_SIZES: dict[str, dict[str, Any]] = {
    "vrnn": {"hidden": 256, "latent": 20, "prior_hidden": 128, "posterior_hidden": 128, "decoder_hidden": 128},
}
# Small sizes for smoke runs (``--tiny``): same code paths, negligible compile and run time.
TINY_SIZES: dict[str, dict[str, Any]] = {
    "vrnn": {"hidden": 16, "latent": 4, "prior_hidden": 16, "posterior_hidden": 16, "decoder_hidden": 16},
}

# The authors' PyTorch VRNN on the 2-core CPU where DESIGN.md's facts were measured.
REFERENCE = {
    "what": "authors' PyTorch VRNN, Python loop over samples",
    "ms": 128.0,
    "samples": 100,
    "num_observed": 12,
    "horizon": 12,
    "device": "2-core CPU",
    "source": "DESIGN.md, 'Facts measured here'",
}

# PyTorch FOMM (vox-256 config) on the 2-core CPU where DESIGN.md's facts were measured.
FOMM_REFERENCE = {
    "what": "PyTorch FOMM, vox-256 config, one 256x256 frame",
    "cpu_ms": {"generator": 1020.0, "detector": 33.0},
    "params_m": {"generator": 45.6, "detector": 14.2},
    "gflop": {"generator": 107.0, "detector": 2.6},
    "frame_size": 256,
    "device": "2-core CPU",
    "source": "DESIGN.md, 'Facts measured here'",
}


# -- helpers --------------------------------------------------------------------------------------
def parse_assignment(text: str) -> tuple[str, Any]:
    """``"hidden=16"`` -> ("hidden", 16); values are Python literals, else strings."""
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"--set expects KEY=VALUE, got {text!r}")
    key, value = text.split("=", 1)
    try:
        return key.strip(), ast.literal_eval(value)
    except (ValueError, SyntaxError):
        return key.strip(), value


def time_calls(fn: Callable[[], Any], repeats: int) -> list[float]:
    """Milliseconds of ``repeats`` calls of ``fn`` after one warm-up call; ``fn`` must block on its result."""
    fn()  # compile / warm caches
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return times


def environment() -> dict[str, Any]:
    """Backend, devices, CPU count and versions: what a reader needs to compare two timings."""
    import flax
    import jax
    import jaxlib
    import numpy as np

    devices = jax.devices()
    try:
        usable_cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        usable_cpus = os.cpu_count()
    return {
        "backend": jax.default_backend(),
        "devices": [str(d) for d in devices],
        "device_kind": devices[0].device_kind,
        "cpu_count": os.cpu_count(),
        "usable_cpus": usable_cpus,
        "machine": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "python": platform.python_version(),
        "jax": jax.__version__,
        "jaxlib": jaxlib.__version__,
        "flax": flax.__version__,
        "numpy": np.__version__,
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
    }


def _ms_stats(times: list[float]) -> dict[str, Any]:
    q1, _, q3 = statistics.quantiles(times, n=4, method="inclusive") if len(times) > 1 else times * 3
    return {
        "median_ms": statistics.median(times),
        "iqr_ms": q3 - q1,
        "min_ms": min(times),
        "max_ms": max(times),
        "times_ms": [round(t, 4) for t in times],
    }


# -- forecast -------------------------------------------------------------------------------------
def _add_forecast(sub) -> None:
    p = sub.add_parser(
        "forecast",
        help="closed-loop sampling: one vmap-ed jitted call vs a Python loop over samples",
        description=bench_forecast.__doc__,
    )
    p.add_argument("--model", default="vrnn", help="registry name (kpflow.forecast.REGISTRY); default vrnn")
    p.add_argument("--horizon", default="12-12", help="observed-predicted frames N-M (default 12-12)")
    p.add_argument("--samples", type=int, default=100, help="samples per window S (default 100)")
    p.add_argument("--repeats", type=int, default=20, help="timed calls per variant; the median is reported")
    p.add_argument("--tiny", action="store_true", help="small model sizes, for smoke tests")
    p.add_argument(
        "--set", dest="overrides", action="append", default=[], type=parse_assignment, metavar="KEY=VALUE",
        help="override a model hyper-parameter (repeatable), e.g. --set hidden=64",
    )
    p.add_argument("--dim", type=int, default=60, help="numbers per frame, 6K (default 60)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--skip_loop", action="store_true", help="time only the vmap-ed call")
    p.set_defaults(run=bench_forecast)


def model_hparams(model: str, tiny: bool, overrides: list[tuple[str, Any]]) -> dict[str, Any]:
    """The authors' sizes for ``model`` (or the tiny ones), then ``--set`` overrides."""
    hparams = dict((TINY_SIZES if tiny else AUTHORS_SIZES).get(model, {}))
    hparams.update(dict(overrides))
    return hparams


def bench_forecast(args: argparse.Namespace) -> dict[str, Any]:
    """Time S closed-loop samples of one N-M window: vmap-ed jitted call vs Python loop over samples."""
    import jax
    import numpy as np

    from kpflow import forecast
    from kpflow.data import parse_horizon, synthetic_clips
    from kpflow.keypoints import CausalScaler

    if args.samples < 1 or args.repeats < 1:
        raise SystemExit("--samples and --repeats must be >= 1")
    try:
        n, m = parse_horizon(args.horizon)
    except ValueError as e:
        raise SystemExit(f"eval.bench forecast: {e}") from None
    hparams = model_hparams(args.model, args.tiny, args.overrides)
    try:
        forecaster = forecast.create(args.model, dim=args.dim, num_observed=n, horizon=m, **hparams)
    except (ValueError, ImportError) as e:
        raise SystemExit(f"eval.bench forecast: cannot build {args.model!r}: {e}") from None

    # A realistic window (synthetic head motion) and a scaler fitted on other synthetic clips.
    clips = synthetic_clips(num_clips=4, num_speakers=2, min_frames=4 * (n + m), max_frames=4 * (n + m),
                            num_keypoints=args.dim // 6, seed=args.seed)
    series = list(clips.values())
    scaler = CausalScaler.fit(series[1:])
    window = np.asarray(series[0][None, : n + m])  # [1, N+M, D]
    context = jax.device_put(window[:, :n])  # [1, N, D]

    rng = jax.random.PRNGKey(args.seed)
    init_rng, sample_rng = jax.random.split(rng)
    # Jitted: an eager init of a scanned recurrent module dispatches op by op and takes seconds.
    variables = jax.jit(forecaster.init)(init_rng, window, scaler)
    num_params = int(sum(np.size(x) for x in jax.tree_util.tree_leaves(variables.get("params", {}))))

    s = args.samples
    sample_all = jax.jit(lambda v, c, k: forecaster.sample(v, c, m, k, s))
    sample_one = jax.jit(lambda v, c, k: forecaster.sample(v, c, m, k, 1))

    out = sample_all(variables, context, sample_rng)
    if out.shape != (s, 1, m, args.dim):
        raise SystemExit(f"{args.model}.sample returned {out.shape}, expected {(s, 1, m, args.dim)}")

    vmapped = time_calls(lambda: sample_all(variables, context, sample_rng).block_until_ready(), args.repeats)

    result: dict[str, Any] = {
        "benchmark": "forecast",
        "model": args.model,
        "hparams": _module_fields(forecaster.module),
        "num_params": num_params,
        "num_observed": n,
        "horizon": m,
        "batch": 1,
        "samples": s,
        "repeats": args.repeats,
        "vmap_jit": _ms_stats(vmapped),
    }
    if not args.skip_loop:
        keys = list(jax.random.split(sample_rng, s))  # made outside the timed region

        def loop():
            outs = [sample_one(variables, context, k) for k in keys]
            jax.block_until_ready(outs)

        result["python_loop"] = _ms_stats(time_calls(loop, args.repeats))
        result["loop_over_vmap"] = result["python_loop"]["median_ms"] / result["vmap_jit"]["median_ms"]

    comparable = (s, n, m) == (REFERENCE["samples"], REFERENCE["num_observed"], REFERENCE["horizon"])
    result["reference"] = dict(REFERENCE, comparable=comparable)
    result["speedup_vs_reference"] = REFERENCE["ms"] / result["vmap_jit"]["median_ms"] if comparable else None
    if "python_loop" in result:
        result["loop_speedup_vs_reference"] = (
            REFERENCE["ms"] / result["python_loop"]["median_ms"] if comparable else None
        )
    result["environment"] = environment()
    return result


def _module_fields(module) -> dict[str, Any]:
    return {f.name: getattr(module, f.name) for f in dataclasses.fields(module) if f.name not in ("parent", "name")}


def format_forecast(r: dict[str, Any]) -> str:
    env = r["environment"]
    size = ", ".join(f"{k}={v}" for k, v in r["hparams"].items() if k not in ("dim", "num_observed", "horizon"))
    lines = [
        (
            f"forecast: {r['model']} ({size + '; ' if size else ''}{r['num_params']:,} params), "
            f"{r['num_observed']}-{r['horizon']} window, batch 1, {r['samples']} samples, median of {r['repeats']}"
        ),
        (
            f"  backend {env['backend']} ({env['device_kind']}), {env['usable_cpus']}/{env['cpu_count']} CPUs, "
            f"jax {env['jax']}, flax {env['flax']}, python {env['python']}"
        ),
        f"  vmap + jit (one call):      {r['vmap_jit']['median_ms']:9.3f} ms",
    ]
    if "python_loop" in r:
        lines.append(f"  Python loop over samples:  {r['python_loop']['median_ms']:9.3f} ms"
                     f"   ({r['loop_over_vmap']:.1f}x the vmap-ed call)")
    ref = r["reference"]
    if ref["comparable"]:
        lines.append(f"  authors' PyTorch (loop):   {ref['ms']:9.3f} ms on a {ref['device']}"
                     f"   -> vmap speed-up {r['speedup_vs_reference']:.1f}x")
    else:
        lines.append(f"  authors' reference ({ref['samples']} samples, {ref['num_observed']}-{ref['horizon']}) "
                     "not comparable with these settings")
    return "\n".join(lines)


# -- fomm -----------------------------------------------------------------------------------------
def _add_fomm(sub) -> None:
    p = sub.add_parser(
        "fomm",
        help="FOMM keypoint detector and generator: ms per frame, jitted, compilation excluded",
        description=bench_fomm.__doc__,
    )
    p.add_argument("--dataset", default="vox", help="FOMM config dataset (default vox)")
    p.add_argument("--config_variant", default="", choices=("", "tiny"),
                   help="'' for the official config (default), 'tiny' for a quick run")
    p.add_argument("--frame_size", type=int, default=256,
                   help="frame height and width (default 256)")
    p.add_argument("--batch", type=int, default=1, help="frames per call (default 1)")
    p.add_argument("--repeats", type=int, default=10, help="timed calls per network (default 10)")
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"),
                   help="compute dtype of the networks (parameters stay float32)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(run=bench_fomm)


def _num_params(variables) -> int:
    import jax
    import numpy as np

    return int(sum(np.size(x) for x in jax.tree_util.tree_leaves(variables.get("params", {}))))


def bench_fomm(args: argparse.Namespace) -> dict[str, Any]:
    """Time FOMM's keypoint detector and generator (with dense motion) per frame, jitted.

    Each network is one jitted call on ``[batch, S, S, 3]`` frames (the generator also gets source
    and driving keypoints, detected beforehand), compiled and run once before the timed calls;
    every call blocks on its result. Per-frame times are call times divided by the batch.
    """
    import jax
    import jax.numpy as jnp

    from configs.fomm_common import fomm_config
    from kpflow.fomm.model import build_networks, init_variables

    if args.batch < 1 or args.repeats < 1 or args.frame_size < 8:
        raise SystemExit("eval.bench fomm: --batch and --repeats must be >= 1, --frame_size >= 8")
    try:
        config = fomm_config(args.dataset, args.config_variant)
    except ValueError as e:
        raise SystemExit(f"eval.bench fomm: {e}") from None
    dtype = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}[args.dtype]
    nets = build_networks(config.model, dtype=dtype)
    shape = (args.frame_size, args.frame_size)
    # Jitted, and the "unsafe_rbg" generator: XLA compiles a threefry draw per parameter slowly on
    # CPUs (tens of seconds even for the tiny config); the values do not matter for timing.
    init = jax.jit(lambda k: init_variables(nets, k, shape, with_discriminator=False))
    variables = init(jax.random.key(args.seed, impl="unsafe_rbg"))
    det_vars, gen_vars = variables["kp_detector"], variables["generator"]

    rng = jax.random.key(args.seed + 1)
    frames = jax.random.uniform(rng, (2, args.batch, *shape, 3), jnp.float32)
    source, driving = frames[0], frames[1]
    detect = jax.jit(lambda v, x: nets.kp_detector.apply(v, x))
    # Only the prediction is returned, as an inference user needs; dense motion runs regardless.
    generate = jax.jit(lambda v, s, ks, kd: nets.generator.apply(v, s, ks, kd)["prediction"])
    kp_source = jax.block_until_ready(detect(det_vars, source))
    kp_driving = jax.block_until_ready(detect(det_vars, driving))
    prediction = jax.block_until_ready(generate(gen_vars, source, kp_source, kp_driving))
    if prediction.shape != source.shape:
        raise SystemExit(f"the generator returned {prediction.shape}, expected {source.shape}")

    def per_frame(times: list[float]) -> dict[str, Any]:
        return _ms_stats([t / args.batch for t in times])

    def run_detector():
        jax.block_until_ready(detect(det_vars, driving))

    def run_generator():
        jax.block_until_ready(generate(gen_vars, source, kp_source, kp_driving))

    load_before = _load_average()
    detector = per_frame(time_calls(run_detector, args.repeats))
    generator = per_frame(time_calls(run_generator, args.repeats))
    load_after = _load_average()

    ref = FOMM_REFERENCE["cpu_ms"]
    ours = {"generator": generator["median_ms"], "detector": detector["median_ms"]}
    env = environment()
    return {
        "benchmark": "fomm",
        "dataset": args.dataset,
        "config_variant": args.config_variant or "official",
        "frame_size": args.frame_size,
        "batch": args.batch,
        "repeats": args.repeats,
        "dtype": args.dtype,
        "params_m": {
            "generator": _num_params(gen_vars) / 1e6,
            "detector": _num_params(det_vars) / 1e6,
        },
        "device_kind": env["device_kind"],
        "detector": detector,
        "generator": generator,
        "reference": FOMM_REFERENCE,
        "reference_cpu_ms": dict(ref),
        "comparable": args.config_variant == "" and args.frame_size == FOMM_REFERENCE["frame_size"],
        # reference / ours: > 1 means faster than the PyTorch reference on its 2-core CPU.
        "ratio_reference_over_ours": {k: ref[k] / ours[k] for k in ref},
        # Other processes on the machine slow CPU timings down: the 1-minute load average
        # before and after the timed calls (above the number of CPUs means contention).
        "load_average_1m": {"before": load_before, "after": load_after},
        "environment": env,
    }


def _load_average() -> float | None:
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):  # not on Unix
        return None


def format_fomm(r: dict[str, Any]) -> str:
    env, ref = r["environment"], r["reference"]
    lines = [
        (
            f"fomm: {r['dataset']} {r['config_variant']} config, "
            f"{r['frame_size']}x{r['frame_size']} frames, batch {r['batch']}, {r['dtype']}, "
            f"median of {r['repeats']}"
        ),
        (
            f"  backend {env['backend']} ({env['device_kind']}), "
            f"{env['usable_cpus']}/{env['cpu_count']} CPUs, jax {env['jax']}, flax {env['flax']}"
        ),
        (
            f"  {'network':<10} {'params':>8} {'ms/frame':>10} {'IQR':>8} {'reference CPU':>14} "
            f"{'ref/ours':>9}"
        ),
    ]
    for name in ("detector", "generator"):
        t = r[name]
        lines.append(
            f"  {name:<10} {r['params_m'][name]:7.2f}M {t['median_ms']:10.3f} {t['iqr_ms']:8.3f} "
            f"{ref['cpu_ms'][name]:11.0f} ms {r['ratio_reference_over_ours'][name]:8.2f}x"
        )
    load, cpus = r["load_average_1m"]["after"], env["usable_cpus"]
    if env["backend"] == "cpu" and load is not None and cpus and load > cpus:
        lines.append(f"  (load average {load:.1f} on {cpus} CPUs: other processes were running; "
                     "these CPU timings are inflated)")
    if not r["comparable"]:
        size = f"{ref['frame_size']}x{ref['frame_size']}"
        lines.append(f"  (the reference is the official config at {size}; "
                     "these settings are not comparable)")
    return "\n".join(lines)


# -- the whole system ------------------------------------------------------------------------------
def _add_pipeline(sub) -> None:
    p = sub.add_parser(
        "pipeline",
        help="end to end: S sampled futures of one N-M block forecast and rendered (kpflow.pipeline)",
        description=bench_pipeline.__doc__,
    )
    p.add_argument("--dataset", default="vox", help="FOMM config dataset (default vox)")
    p.add_argument("--config_variant", default="", choices=("", "tiny"),
                   help="'' for the official FOMM config (default), 'tiny' for a quick run")
    p.add_argument("--frame_size", type=int, default=256, help="frame height and width (default 256)")
    p.add_argument("--model", default="vrnn", help="forecaster (default vrnn, the authors' sizes)")
    p.add_argument("--tiny", action="store_true", help="tiny forecaster sizes")
    p.add_argument("--samples", type=int, default=100, help="sampled futures (default 100)")
    p.add_argument("--horizon", default="12-12", help="N-M (default 12-12: 24 frames, 12 forecast)")
    p.add_argument("--chunk_size", type=int, default=16, help="frames per compiled rendering call (default 16)")
    p.add_argument("--repeats", type=int, default=1, help="timed end-to-end runs (default 1)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(run=bench_pipeline)


def _device_peak_bytes() -> int | None:
    import jax

    stats = jax.devices()[0].memory_stats() or {}
    return stats.get("peak_bytes_in_use")


def bench_pipeline(args: argparse.Namespace) -> dict[str, Any]:
    """Time the whole system on one clip: ``--samples`` futures of an N-M block, rendered.

    A randomly initialised FOMM (timing does not depend on weights) and forecaster; the clip is one
    N+M block of random frames. One end-to-end run: detect the source keypoints, forecast S futures
    of the M frames with one vmapped call, normalise, and render the N transmitted frames once plus
    S x M forecast frames in chunks of ``--chunk_size`` (``kpflow.pipeline.MotionTransfer.run``,
    transfer mode). Compilation is excluded (a first run warms up). Reports the seconds per run,
    frames per second, and memory: XLA's compiled size of one rendering chunk and, on GPUs, the
    device's peak bytes in use.
    """
    import jax
    import jax.numpy as jnp
    import numpy as np

    from configs.fomm_common import fomm_config
    from kpflow import forecast, pipeline
    from kpflow.fomm.model import random_fomm

    schedule = pipeline.Schedule.parse(args.horizon)
    if args.samples < 1 or args.repeats < 1 or args.chunk_size < 1 or args.frame_size < 8 or schedule.horizon < 1:
        raise SystemExit("eval.bench pipeline: --samples, --repeats, --chunk_size >= 1, --frame_size >= 8, M >= 1")
    config = fomm_config(args.dataset, args.config_variant)
    config.data.frame_shape = (args.frame_size, args.frame_size, 3)
    shape = (args.frame_size, args.frame_size)
    fomm = random_fomm(config, args.seed)
    dim = 6 * fomm.num_kp

    sizes = (TINY_SIZES if args.tiny else AUTHORS_SIZES).get(args.model, {})
    f = forecast.create(args.model, dim=dim, num_observed=schedule.num_observed, horizon=schedule.horizon, **sizes)
    rng = np.random.default_rng(args.seed)
    frames = rng.uniform(0, 1, (schedule.period, *shape, 3)).astype(np.float32)
    series = np.asarray(fomm.detect(frames).to_vector())
    variables = f.init(jax.random.key(args.seed), jnp.asarray(series[None]))
    system = pipeline.MotionTransfer(fomm, pipeline.forecaster_predictor(f, variables), schedule, "transfer",
                                     chunk_size=args.chunk_size)
    source = rng.uniform(0, 1, (*shape, 3)).astype(np.float32)

    def run_once(i: int):
        return system.run(source, series, jax.random.key(i), args.samples)

    out = run_once(0)  # compile (time_calls warms up once more: cheap next to compilation)
    times = [t / 1e3 for t in time_calls(lambda: run_once(1), args.repeats)]  # ms -> s
    rendered = pipeline.frames_needed(schedule, schedule.period, args.samples)
    chunk = system.renderer._render_chunk.lower(
        fomm.variables["generator"], jnp.asarray(source), out.kp_source,
        jax.tree.map(lambda x: jnp.zeros((args.chunk_size,) + x.shape[1:], x.dtype),
                     jax.tree.map(lambda x: x[0], pipeline.Keypoints.from_vector(jnp.asarray(out.keypoints)))),
    ).compile()
    mem = chunk.memory_analysis()
    chunk_bytes = None
    if mem is not None:
        chunk_bytes = int(sum(getattr(mem, k, 0) or 0 for k in (
            "temp_size_in_bytes", "argument_size_in_bytes", "output_size_in_bytes")))
    median = statistics.median(times)
    env = environment()
    return {
        "benchmark": "pipeline",
        "dataset": args.dataset,
        "config_variant": args.config_variant or "official",
        "frame_size": args.frame_size,
        "model": args.model,
        "forecaster_sizes": "tiny" if args.tiny else ("authors" if args.model in AUTHORS_SIZES else "defaults"),
        "schedule": str(schedule),
        "samples": args.samples,
        "chunk_size": args.chunk_size,
        "frames_rendered": rendered,
        "output_shape": list(out.frames.shape),
        "seconds": {"median": median, "times": times},
        "frames_per_second": rendered / median,
        "chunk_compiled_bytes": chunk_bytes,
        "device_peak_bytes": _device_peak_bytes(),
        "device_kind": env["device_kind"],
        "environment": env,
    }


def format_pipeline(r: dict[str, Any]) -> str:
    env = r["environment"]
    gib = lambda b: "n/a" if b is None else f"{b / 2**30:.2f} GiB"
    return "\n".join([
        (f"pipeline: FOMM {r['dataset']} {r['config_variant']} at {r['frame_size']}x{r['frame_size']}, "
         f"{r['model']} ({r['forecaster_sizes']} sizes), {r['schedule']}, {r['samples']} samples, chunks of {r['chunk_size']}"),
        f"  backend {env['backend']} ({env['device_kind']}), jax {env['jax']}",
        (f"  end to end {r['seconds']['median']:.2f} s (median of {len(r['seconds']['times'])}) for "
         f"{r['frames_rendered']} rendered frames -> output {tuple(r['output_shape'])}: {r['frames_per_second']:.1f} frames/s"),
        f"  memory: one rendering chunk compiles to {gib(r['chunk_compiled_bytes'])}; device peak {gib(r['device_peak_bytes'])}",
    ])


FORMATTERS = {"forecast": format_forecast, "fomm": format_fomm, "pipeline": format_pipeline}


# -- entry point ----------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m eval.bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="benchmark", required=True, metavar="BENCHMARK")
    _add_forecast(sub)
    _add_fomm(sub)
    _add_pipeline(sub)
    # Every benchmark writes its result the same way.
    for p in sub.choices.values():
        p.add_argument("--out", default="", help="also write the result as JSON to this file")
    return parser


def main(argv=None) -> dict[str, Any]:
    args = build_parser().parse_args(argv)
    result = args.run(args)
    print(FORMATTERS.get(args.benchmark, lambda r: json.dumps(r, indent=1, default=str))(result))
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1, default=str)
        print(f"wrote {args.out}")
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
