"""The paper's real-time protocol: ``python -m eval.bench realtime [--render frame|forecast_block|block]
[--dtypes float32,bfloat16] [--out FILE.json]``.

Measures one clip streamed in N + M blocks at batch 1, stage by stage: the wall clock of keypoint
extraction, forecasting and generation, frames per second, XLA's FLOPs per call and the TOPS the
paper's formula asks for, the paper's bitrate, and each extra compute dtype (bfloat16) beside
float32 in the same run with its quality cost. The paper's 36.69 fps on an RTX 3090 was measured on
another machine and is shown only as context.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from eval.bench import timing
from eval.bench.forecast import load_trained
from eval.bench.pipeline import (
    add_system_arguments,
    forecaster_sizes,
    random_forecaster,
    random_system_fomm,
)
from kpflow import pipeline
from kpflow.cli import UsageError
from kpflow.data.synthetic_video import identity_style, render_clip
from kpflow.data.videos import VideoReadError, read_video
from kpflow.fomm.model import FOMM, frame_shape_of
from kpflow.keypoints import FEATURES_PER_KEYPOINT, Keypoints
from kpflow.runs import check_forecaster_fits, load_fomm, load_fomm_config

HELP = "the paper's streaming protocol: per-stage wall clock, fps, FLOPs, TOPS, bitrate; fp32 vs bf16"

# What the paper's streaming numbers assume (docs/design.md): FP32 keypoints, D x 32 bits per sent frame,
# 30 fps, savings quoted against 500 kbps for 256x256 video; FOMM+VRNN 36.69 fps on an RTX 3090
# (another machine: context only).
REALTIME_REFERENCE = {
    "what": "paper: FOMM+VRNN end to end, 256x256, batch 1, FP32",
    "fps": 36.69,
    "device": "RTX 3090",
    "reference_kbps": 500.0,
    "fps_target_factor": 10.0,
    "utilisation": 0.6,
}
RENDER_MODES = ("frame", "forecast_block", "block")
STAGES = ("extraction", "forecasting", "generation")


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_system_arguments(p)
    p.add_argument("--horizon", default="6-6", help="N-M block (default 6-6, the paper's)")
    p.add_argument("--frames", type=int, default=36, help="clip length (default 36, the paper's)")
    p.add_argument("--render", default="frame", choices=RENDER_MODES,
                   help="generator calls: 'frame' (default, the paper's: one frame per call), "
                        "'forecast_block' (transmitted frames one by one as they arrive, each block's M "
                        "forecast frames in one call once forecast), 'block' (also the N transmitted "
                        "frames in one call, a block's latency later)")
    p.add_argument("--fomm", default="", help="a FOMM directory (trained or converted) instead of random weights; "
                   "its config and frame size replace --dataset, --config_variant and --frame_size")
    p.add_argument("--forecaster", default="", help="a forecaster workdir (train.forecaster) instead of a random "
                   "--model; its horizon must be --horizon")
    p.add_argument("--video", default="", help="a video to stream (its first --frames frames, resized to the "
                   "FOMM's size) instead of a generated clip")
    p.add_argument("--source_cache", action=argparse.BooleanOptionalAction, default=True,
                   help="encode the source image once per stream (default) rather than in every generator call")
    p.add_argument("--dtypes", default="",
                   help="comma-separated compute dtypes of FOMM, e.g. float32,bfloat16 (default: float32 "
                        "on CPU, float32,bfloat16 on GPU/TPU)")
    p.add_argument("--repeats", type=int, default=5, help="timed runs of the whole clip; medians reported")
    p.add_argument("--seed", type=int, default=0)


# -- FLOPs, TOPS and bitrate: the paper's formulas ------------------------------------------------
def xla_flops(computation) -> float | None:
    """XLA's FLOP count of a lowered or compiled computation (None where the backend gives none)."""
    try:
        cost = computation.cost_analysis()
    except Exception:  # noqa: BLE001 - some backends do not implement it
        return None
    if isinstance(cost, (list, tuple)):  # older jax: one dict per computation
        cost = cost[0] if cost else None
    if not cost or "flops" not in cost:
        return None
    return float(cost["flops"])


def hlo_flops(jitted, *args) -> float | None:
    """FLOPs of ``jitted(*args)`` counted by XLA on the unoptimised HLO, lowered for the CPU.

    The count does not depend on the platform, but only the CPU's cost analysis counts every
    operation: on GPUs, convolutions become library calls that the analysis leaves out. Arrays
    are replaced by their shapes first, so that arrays placed on an accelerator lower for the CPU.
    """
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype) if isinstance(x, jax.Array) else x, args)
    try:
        lowered = jitted.trace(*abstract).lower(lowering_platforms=("cpu",))
    except Exception:  # noqa: BLE001 - fall back to the default platform
        lowered = jitted.lower(*args)
    return xla_flops(lowered)


def realtime_budget(flops: dict[str, float | None], schedule, fps: float = 30.0,
                    utilisation: float = REALTIME_REFERENCE["utilisation"]) -> dict[str, Any]:
    """FLOPs per second of video and the accelerator TOPS it needs (the paper's formula).

    Per second of video at ``fps``: the sender's detector runs on the transmitted frames only (a duty
    cycle of N / (N + M), 1/2 for 6-6: every second frame on average), the forecaster once per block,
    the generator on every frame. Required TOPS = operations per second / utilisation / 1e12 with
    the paper's 60 % utilisation; XLA counts a multiply-add as 2 operations.
    """
    n, period = schedule.num_observed, schedule.period
    calls = {"extraction": fps * n / period, "forecasting": fps / period, "generation": fps}
    per_second = {k: (flops[k] or 0.0) * calls[k] for k in calls}
    total = sum(per_second.values())
    return {
        "calls_per_second": calls,
        "duty_cycle_extraction": n / period,
        "gflop_per_call": {k: None if flops[k] is None else flops[k] / 1e9 for k in flops},
        "gflop_per_second": {k: v / 1e9 for k, v in per_second.items()},
        "total_gflop_per_second": total / 1e9,
        "utilisation": utilisation,
        "required_tops": total / utilisation / 1e12,
    }


def paper_bitrate(dim: int, schedule, fps: float = 30.0, bits: int = 32) -> dict[str, float]:
    """The paper's rate: D numbers x ``bits`` per transmitted frame, N of every N + M frames sent."""
    full = dim * bits * fps / 1e3
    sent = full * schedule.num_observed / schedule.period
    return {"kbps_every_frame": full, "kbps": sent,
            "saving_vs_reference": REALTIME_REFERENCE["reference_kbps"] / sent}


# -- what is streamed ------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Stream:
    """Everything one run streams, resolved from the arguments (which are left as parsed)."""

    schedule: pipeline.Schedule
    dtypes: tuple[str, ...]
    fomm: FOMM  # float32
    frame_size: int  # the FOMM's (from --fomm) or --frame_size
    model: str  # as reported: the registry name, or "name (workdir)" for a trained model
    forecaster: Any
    variables: Any
    video: jax.Array  # [T, S, S, 3] float32 in [0, 1], on the device
    render: str
    source_cache: bool
    seed: int


def stream_dtypes(text: str) -> tuple[str, ...]:
    """``--dtypes``, or its default: float32 on CPUs, float32 and bfloat16 on accelerators."""
    dtypes = tuple(d for d in (text or ("float32" if jax.default_backend() == "cpu" else "float32,bfloat16")).split(",")
                   if d)
    if set(dtypes) - {"float32", "bfloat16"} or not dtypes or dtypes[0] != "float32":
        raise UsageError(f"--dtypes must start with float32 and name float32 / bfloat16; got {text!r}")
    return dtypes


def stream_video(args: argparse.Namespace, frame_size: int) -> jax.Array:
    """``--video``'s first ``--frames`` frames, or a generated talking-blob clip: ``[T, S, S, 3]`` on the device."""
    if not args.video:
        style = identity_style(args.seed, 0, frame_size)
        video = render_clip(style, np.random.default_rng(args.seed), args.frames, frame_size)
        return jnp.asarray(video.astype(np.float32) / 255.0)
    try:
        video = read_video(args.video, (frame_size, frame_size))
    except VideoReadError as e:
        raise UsageError(str(e)) from None
    if len(video) < args.frames:
        raise UsageError(f"{args.video} has {len(video)} frames; --frames is {args.frames}")
    return jnp.asarray(video[: args.frames])


def resolve(args: argparse.Namespace) -> Stream:
    """Validate the arguments; load or build the FOMM, the forecaster and the clip."""
    try:
        schedule = pipeline.Schedule.parse(args.horizon)
    except ValueError as e:
        raise UsageError(str(e)) from None
    if args.repeats < 1 or args.frame_size < 8 or args.frames < schedule.period:
        raise UsageError(f"--repeats >= 1, --frame_size >= 8 and --frames >= N + M = {schedule.period}")
    dtypes = stream_dtypes(args.dtypes)
    trained = load_trained(args.forecaster) if args.forecaster else None  # before any compilation
    def cannot_load_fomm(e: UsageError) -> UsageError:
        detail = str(e).removeprefix(f"--fomm {args.fomm!r} ")
        return UsageError(f"cannot load --fomm {args.fomm!r}: {detail}")

    try:
        frame_size = frame_shape_of(load_fomm_config(args.fomm, flag="--fomm"))[0] if args.fomm else args.frame_size
    except UsageError as e:
        raise cannot_load_fomm(e) from None
    video = stream_video(args, frame_size)  # a bad --video fails before any network is built
    if args.fomm:
        try:
            fomm = load_fomm(args.fomm, flag="--fomm")
        except UsageError as e:
            raise cannot_load_fomm(e) from None
    else:
        fomm = random_system_fomm(args, frame_size)
    dim = FEATURES_PER_KEYPOINT * fomm.num_kp
    if trained is not None:
        check_forecaster_fits(trained, dim, schedule.num_observed, schedule.horizon, flag="--forecaster")
        model, f, variables = f"{trained.config.model.name} ({args.forecaster})", trained.forecaster, trained.variables
    else:
        model, f = args.model, random_forecaster(args, dim, schedule)
        variables = jax.jit(f.init)(jax.random.key(args.seed), jnp.zeros((1, schedule.period, dim)))
    return Stream(schedule, dtypes, fomm, frame_size, model, f, variables, video, args.render, args.source_cache,
                  args.seed)


# -- streaming ---------------------------------------------------------------------------------------
def stages(fomm: FOMM, s: Stream):
    """One jitted call per step of the stream, so that timings hold no eager glue:
    ``(detect, forecast_block, encode, generate)``."""
    nets = fomm.networks
    f, variables, horizon = s.forecaster, s.variables, s.schedule.horizon

    @jax.jit
    def detect(v, video, t):  # the frame at index t -> its keypoint vector [D]
        frame = jax.lax.dynamic_slice_in_dim(video, t, 1)
        return nets.kp_detector.apply(v, frame).to_vector()[0]

    @jax.jit
    def forecast_block(sent, rng, block):  # N vectors [D] -> M forecast vectors [M, D]
        key = jax.random.fold_in(rng, block)
        return f.sample(variables, jnp.stack(sent)[None], horizon, key, 1)[0, 0]

    @jax.jit
    def encode(v, source):  # the generator's encoder depends on the source alone
        return nets.generator.apply(v, source, encode_only=True)["source_features"]

    @jax.jit
    def generate(v, source, features, kp_source, vectors):  # [n, D] driving vectors -> [n, S, S, 3]
        n = vectors.shape[0]
        kp_d = Keypoints.from_vector(vectors.astype(jnp.float32))
        batch = lambda x: jnp.broadcast_to(x, (n, *x.shape[1:]))
        kp_s = jax.tree.map(batch, kp_source)
        cached = None if features is None else batch(features)
        return nets.generator.apply(v, batch(source), kp_s, kp_d, source_features=cached)["prediction"]

    return detect, forecast_block, encode, generate


def stream(fomm: FOMM, fns, s: Stream, timed: dict[str, float] | None):
    """One pass over the clip; adds each stage's seconds to ``timed``; returns frames and keypoints."""
    det_vars, gen_vars = fomm.variables["kp_detector"], fomm.variables["generator"]
    detect, forecast_fn, encode, generate_fn = fns

    def clock(stage, fn, *args):
        start = time.perf_counter()
        out = jax.block_until_ready(fn(*args))
        if timed is not None:
            timed[stage] += time.perf_counter() - start
        return out

    source = s.video[:1]
    kp_source = clock("extraction", fomm.detect, source)
    # Once per stream: the receiver keeps its source's encoding (``--no-source_cache``: per call).
    features = clock("generation", encode, gen_vars, source) if s.source_cache else None

    def render(vectors):
        return clock("generation", generate_fn, gen_vars, source, features, kp_source, vectors)

    frames, kps = [], []
    rng = jax.random.key(s.seed + 1)
    for i, block in enumerate(s.schedule.blocks(len(s.video))):
        sent = []
        for t in block.observed:  # frames arrive one by one: detect, send, render on arrival
            sent.append(clock("extraction", detect, det_vars, s.video, t))
            if s.render != "block":
                frames.append(render(sent[-1][None]))
        if s.render == "block":
            frames.append(render(jnp.stack(sent)))
        kps.extend(sent)
        if len(block.forecast):
            future = clock("forecasting", forecast_fn, tuple(sent), rng, i)[: len(block.forecast)]
            kps.extend(future)
            if s.render == "frame":
                frames.extend(render(future[j : j + 1]) for j in range(len(block.forecast)))
            else:  # the forecast frames are all known now: one call renders them
                frames.append(render(future))
    return jnp.concatenate(frames), jnp.stack(kps)


def lowered_flops(fomm: FOMM, fns, s: Stream) -> dict[str, float | None]:
    """Each stage's FLOPs per call. The unoptimised HLO's count: on GPUs the compiled module's
    convolutions are library calls that XLA's cost analysis does not count."""
    detect, forecast_fn, encode, generate = fns
    det_vars, gen_vars = fomm.variables["kp_detector"], fomm.variables["generator"]
    vec = detect(det_vars, s.video, 0)
    kp = fomm.detect(s.video[:1])
    features = encode(gen_vars, s.video[:1]) if s.source_cache else None
    return {
        "extraction": hlo_flops(detect, det_vars, s.video, 0),
        "forecasting": hlo_flops(forecast_fn, (vec,) * s.schedule.num_observed, jax.random.key(0), 0),
        "generation": hlo_flops(generate, gen_vars, s.video[:1], features, kp, vec[None]),
    }


def time_stream(fomm: FOMM, s: Stream, repeats: int) -> dict[str, Any]:
    """A warm-up pass (compiles every shape), then ``repeats`` timed passes: the result's entry of one
    dtype, and under ``"output"`` the last pass's (frames, keypoints)."""
    fns = stages(fomm, s)
    out = stream(fomm, fns, s, None)
    runs = []
    for _ in range(repeats):
        timed = dict.fromkeys(STAGES, 0.0)
        start = time.perf_counter()
        out = stream(fomm, fns, s, timed)
        timed["total"] = time.perf_counter() - start
        runs.append(timed)
    median = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
    frames = len(s.video)
    flops = lowered_flops(fomm, fns, s)
    return {
        "seconds_per_clip": median,
        "ms_per_30_frames": {k: v * 30.0 / frames * 1e3 for k, v in median.items()},
        "fps": frames / median["total"],
        "fps_stages_only": frames / sum(median[k] for k in STAGES),
        "runs": runs,
        "flops_per_call": flops,
        "budget": realtime_budget(flops, s.schedule),
        "fps_over_reference": frames / median["total"] / REALTIME_REFERENCE["fps"],
        "output": out,
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    """The paper's real-time protocol: one clip streamed in N + M blocks, batch 1, stage by stage.

    A 36-frame clip (synthetic talking-blob video, on the device) is streamed in blocks of 6
    transmitted + 6 forecast frames (reconstruction mode: the source is the first frame). Per block
    the sender's detector runs on each transmitted frame as it arrives (batch 1), the receiver
    renders it, then draws one future of the M frames from those N (one call) and renders them:
    ``--render frame`` one frame per generator call (the paper's batch 1), ``forecast_block`` the M
    forecast frames in one call (they are all known at once), ``block`` also the N transmitted
    frames in one call (a block's latency later). The receiver encodes its source image once per
    stream (the generator's encoder depends on the source alone; counted in generation) and every
    generator call starts from those features; ``--no-source_cache`` encodes it in every call.
    Every step is one jitted call, compiled beforehand (a full warm-up run), blocking on its result
    before the clock is read; each stage's wall clock is summed over the clip, medians of
    ``--repeats`` runs, scaled to 30 frames. Frames per second = clip frames / total wall clock of
    a run (stages plus the little Python between).

    Also: XLA's FLOP count of each step (unoptimised HLO) and the paper's TOPS formula (see
    ``realtime_budget``), the paper's bitrate (FP32 keypoints) with its saving against 500 kbps,
    and for each extra dtype (bfloat16 on GPU/TPU) the same timings plus its quality cost: mean
    absolute difference from the float32 run of the keypoints and of the frames (pixels in [0, 1]).
    Weights are random (timing does not depend on them); the FOMM is the official config.
    """
    s = resolve(args)
    per_dtype: dict[str, Any] = {}
    for name in s.dtypes:
        fomm = s.fomm if name == "float32" else FOMM(s.fomm.config, s.fomm.variables, dtype=getattr(jnp, name))
        entry = time_stream(fomm, s, args.repeats)
        out = entry.pop("output")
        if name == "float32":
            reference_out = out
        else:
            entry["quality_vs_float32"] = {
                "frame_mae": float(jnp.mean(jnp.abs(out[0].astype(jnp.float32) - reference_out[0]))),
                "keypoint_mae": float(jnp.mean(jnp.abs(out[1].astype(jnp.float32) - reference_out[1]))),
            }
        per_dtype[name] = entry
    env = timing.environment()
    return {
        "benchmark": "realtime",
        "dataset": args.dataset,
        "config_variant": "from --fomm" if args.fomm else (args.config_variant or "official"),
        "frame_size": s.frame_size,
        "model": s.model,
        "forecaster_sizes": "trained" if args.forecaster else forecaster_sizes(args),
        "weights": {"fomm": args.fomm or "random", "forecaster": args.forecaster or "random"},
        "video": args.video or "generated",
        "schedule": str(s.schedule),
        "frames": args.frames,
        "render": s.render,
        "source_cache": s.source_cache,
        "repeats": args.repeats,
        "dtypes": per_dtype,
        "bitrate": paper_bitrate(FEATURES_PER_KEYPOINT * s.fomm.num_kp, s.schedule),
        "reference": REALTIME_REFERENCE,
        "comparable": (args.config_variant == "" and not args.fomm and s.frame_size == 256 and s.render == "frame"
                       and not args.tiny and not args.forecaster),
        "fps_over_reference": per_dtype["float32"]["fps"] / REALTIME_REFERENCE["fps"],
        # Nothing else is timed in this run: the float32 stream leads, the paper's fps is context.
        "headline": timing.headline(
            "the float32 stream, per 30 frames", per_dtype["float32"]["ms_per_30_frames"]["total"], {},
            (f"the paper's {REALTIME_REFERENCE['fps']} fps on another machine ({REALTIME_REFERENCE['device']})",
             30e3 / REALTIME_REFERENCE["fps"])),
        "device_kind": env["device_kind"],
        "environment": env,
    }


def format(r: dict[str, Any]) -> str:
    """The result as the table ``python -m eval.bench realtime`` prints; the paper's fps is context."""
    env, ref, bit = r["environment"], r["reference"], r["bitrate"]
    w = r["weights"]["fomm"]
    fomm = f"{r['dataset']} {r['config_variant']} (random weights)" if w == "random" else w
    source = ", source encoded once" if r.get("source_cache") else ", source encoded per call"
    lines = [
        (f"realtime: FOMM {fomm} at {r['frame_size']}x{r['frame_size']} + "
         f"{r['model']} ({r['forecaster_sizes']} sizes), {r['frames']} {r['video']} frames in {r['schedule']} blocks, "
         f"batch 1, rendering per {r['render'].replace('_', ' ')}{source}, median of {r['repeats']}"),
        f"  backend {env['backend']} ({env['device_kind']}), jax {env['jax']}",
        timing.format_headline(r["headline"]),
        (f"  {'dtype':<9} {'extract':>9} {'forecast':>9} {'generate':>9} {'total':>9}  (ms per 30 frames) {'fps':>8}"
         f"  {'TOPS@30fps':>10}  quality cost vs float32"),
    ]
    for name, e in r["dtypes"].items():
        ms = e["ms_per_30_frames"]
        q = e.get("quality_vs_float32")
        cost = "-" if q is None else f"frame MAE {q['frame_mae']:.2e}, keypoint MAE {q['keypoint_mae']:.2e}"
        lines.append(f"  {name:<9} {ms['extraction']:9.1f} {ms['forecasting']:9.1f} {ms['generation']:9.1f} "
                     f"{ms['total']:9.1f}  {'':18} {e['fps']:8.2f}  {e['budget']['required_tops']:10.2f}  {cost}")
    b = r["dtypes"]["float32"]["budget"]
    g = b["gflop_per_call"]
    fmt = lambda v: "n/a" if v is None else f"{v:.3g}"
    lines.append(f"  GFLOP per call (XLA): detector {fmt(g['extraction'])}, forecaster {fmt(g['forecasting'])} "
                 f"per block, generator {fmt(g['generation'])} per frame (XLA, unoptimised HLO); detector duty "
                 f"cycle {b['duty_cycle_extraction']:.2f}, {b['utilisation']:.0%} utilisation")
    lines.append(f"  bitrate (FP32 keypoints, paper's scheme): {bit['kbps']:.1f} kbps "
                 f"({bit['saving_vs_reference']:.1f}x below {ref['reference_kbps']:.0f} kbps; every frame sent: "
                 f"{bit['kbps_every_frame']:.1f})")
    lines.append(f"  context, not measured in this run: the paper's {ref['fps']} fps on an {ref['device']} (another machine); "
                 f"float32 here: {r['fps_over_reference']:.2f}x that"
                 + ("" if r["comparable"] else " (settings not comparable: the paper is the official config, "
                                               "256x256, frame by frame)"))
    return "\n".join(lines)
