"""The whole system on one clip, end to end: ``python -m eval.bench pipeline [--samples 100] [--out FILE.json]``.

Measures S sampled futures of one N-M block forecast and rendered with ``kpflow.pipeline`` (default
100 samples x 24 frames at 256x256, the issue's GPU target): seconds per run, frames per second,
the compiled memory of one rendering chunk and the device's peak. There is no reference to compare
with, in this run or elsewhere: the result is the time itself.
"""

from __future__ import annotations

import argparse
import statistics
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from eval.bench import timing
from eval.bench.fomm import add_config_arguments, config_fields, config_of
from eval.bench.forecast import AUTHORS_SIZES, model_hparams
from kpflow import forecast, pipeline
from kpflow.cli import UsageError
from kpflow.fomm.model import random_fomm
from kpflow.keypoints import FEATURES_PER_KEYPOINT

HELP = "end to end: S sampled futures of one N-M block forecast and rendered (kpflow.pipeline)"


def add_system_arguments(p: argparse.ArgumentParser) -> None:
    """The FOMM and forecaster options of the whole-system benchmarks (``pipeline``, ``realtime``)."""
    add_config_arguments(p)
    p.add_argument("--model", default="vrnn", help="forecaster (default vrnn, the authors' sizes)")
    p.add_argument("--tiny", action="store_true", help="tiny forecaster sizes")


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_system_arguments(p)
    p.add_argument("--samples", type=int, default=100, help="sampled futures (default 100)")
    p.add_argument("--horizon", default="12-12", help="N-M (default 12-12: 24 frames, 12 forecast)")
    p.add_argument("--chunk_size", type=int, default=16, help="frames per compiled rendering call (default 16)")
    p.add_argument("--repeats", type=int, default=1, help="timed end-to-end runs (default 1)")
    p.add_argument("--seed", type=int, default=0)


def random_system_fomm(args: argparse.Namespace, frame_size: int):
    """A randomly initialised FOMM of ``--dataset`` / ``--config_variant`` at ``frame_size`` (timing
    does not depend on weights); UsageError on an unknown dataset or variant."""
    return random_fomm(config_of(args, frame_size), args.seed)


def random_forecaster(args: argparse.Namespace, dim: int, schedule: pipeline.Schedule):
    """``--model`` at the authors' sizes (``--tiny``: tiny ones) for ``dim`` numbers per frame."""
    try:
        return forecast.create(args.model, dim=dim, num_observed=schedule.num_observed, horizon=schedule.horizon,
                               **model_hparams(args.model, args.tiny, []))
    except (ValueError, ImportError) as e:
        raise UsageError(f"cannot build {args.model!r}: {e}") from None


def forecaster_sizes(args: argparse.Namespace) -> str:
    return "tiny" if args.tiny else ("authors" if args.model in AUTHORS_SIZES else "defaults")


def chunk_compiled_bytes(system: pipeline.MotionTransfer, source, out: pipeline.PipelineOutput,
                         chunk_size: int) -> int | None:
    """XLA's compiled size (arguments, outputs, temporaries) of one rendering chunk, or None."""
    kp_one = jax.tree.map(lambda x: x[0], pipeline.Keypoints.from_vector(jnp.asarray(out.keypoints)))
    kp_chunk = jax.tree.map(lambda x: jnp.zeros((chunk_size,) + x.shape[1:], x.dtype), kp_one)
    variables = system.renderer.fomm.variables["generator"]
    chunk = system.renderer.render_chunk.lower(variables, jnp.asarray(source), out.kp_source, kp_chunk).compile()
    mem = chunk.memory_analysis()
    if mem is None:
        return None
    return int(sum(getattr(mem, k, 0) or 0 for k in ("temp_size_in_bytes", "argument_size_in_bytes",
                                                      "output_size_in_bytes")))


def device_peak_bytes() -> int | None:
    """The first device's peak bytes in use (None where the backend does not say: CPUs)."""
    stats = jax.devices()[0].memory_stats() or {}
    return stats.get("peak_bytes_in_use")


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Time the whole system on one clip: ``--samples`` futures of an N-M block, rendered.

    A randomly initialised FOMM (timing does not depend on weights) and forecaster; the clip is one
    N+M block of random frames. One end-to-end run: detect the source keypoints, forecast S futures
    of the M frames with one vmapped call, normalise, and render the N transmitted frames once plus
    S x M forecast frames in chunks of ``--chunk_size`` (``kpflow.pipeline.MotionTransfer.run``,
    transfer mode). Compilation is excluded (a first run warms up). Reports the seconds per run,
    frames per second, and memory: XLA's compiled size of one rendering chunk and, on GPUs, the
    device's peak bytes in use.
    """
    try:
        schedule = pipeline.Schedule.parse(args.horizon)
    except ValueError as e:
        raise UsageError(str(e)) from None
    if args.samples < 1 or args.repeats < 1 or args.chunk_size < 1 or args.frame_size < 8 or schedule.horizon < 1:
        raise UsageError("--samples, --repeats, --chunk_size >= 1, --frame_size >= 8, M >= 1")
    shape = (args.frame_size, args.frame_size)
    fomm = random_system_fomm(args, args.frame_size)
    f = random_forecaster(args, FEATURES_PER_KEYPOINT * fomm.num_kp, schedule)
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
    times = [t / 1e3 for t in timing.time_calls(lambda: run_once(1), args.repeats)]  # ms -> s
    rendered = pipeline.frames_needed(schedule, schedule.period, args.samples)
    median = statistics.median(times)
    env = timing.environment()
    return {
        "benchmark": "pipeline",
        **config_fields(args),
        "model": args.model,
        "forecaster_sizes": forecaster_sizes(args),
        "schedule": str(schedule),
        "samples": args.samples,
        "chunk_size": args.chunk_size,
        "frames_rendered": rendered,
        "output_shape": list(out.frames.shape),
        "seconds": {"median": median, "times": times},
        "frames_per_second": rendered / median,
        "chunk_compiled_bytes": chunk_compiled_bytes(system, source, out, args.chunk_size),
        "device_peak_bytes": device_peak_bytes(),
        "device_kind": env["device_kind"],
        "environment": env,
    }


def format(r: dict[str, Any]) -> str:
    """The result as the lines ``python -m eval.bench pipeline`` prints."""
    env = r["environment"]
    gib = lambda b: "n/a" if b is None else f"{b / 2**30:.2f} GiB"
    return "\n".join([
        (f"pipeline: FOMM {r['dataset']} {r['config_variant']} at {r['frame_size']}x{r['frame_size']}, "
         f"{r['model']} ({r['forecaster_sizes']} sizes), {r['schedule']}, {r['samples']} samples, "
         f"chunks of {r['chunk_size']}"),
        f"  backend {env['backend']} ({env['device_kind']}), jax {env['jax']}",
        (f"  end to end {r['seconds']['median']:.2f} s (median of {len(r['seconds']['times'])}) for "
         f"{r['frames_rendered']} rendered frames -> output {tuple(r['output_shape'])}: "
         f"{r['frames_per_second']:.1f} frames/s"),
        (f"  memory: one rendering chunk compiles to {gib(r['chunk_compiled_bytes'])}; "
         f"device peak {gib(r['device_peak_bytes'])}"),
    ])
