"""The call's speed: ``python -m eval.bench call [--frame_sizes 64 256] [--calls 1 2 4] [--out FILE.json]``.

Loopback calls (``kpflow.call.app.loopback``: sender and receiver in this process over a real local
WebRTC connection, the receiver on its own frame clock) of a generated video at ``--fps``, paced in
real time, with randomly initialised FOMM weights (timing does not depend on them; ``tiny`` config
at 64x64, the official vox-256 one at 256x256). Each call's compiled functions are warmed up by a
short call first.

- **Per frame size**, one call: latency (capture to display) p50 / p95 / max, the receiver's render
  rate, and the share of frame ticks it rendered (the others show the newest rendered picture).
- **Concurrent calls**, at the first frame size: ``C`` calls at once in one process, sharing one
  FOMM and its compiled renderer; a process *sustains* C calls when every call renders at least
  :data:`SUSTAINED_SHARE` of its frame ticks.

The receiver does only what a real one does: the full-rate reference rendering of a loopback call
(``pixel_mae_vs_full_rate``) is off here.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
from pathlib import Path
from typing import Any

from configs.fomm_common import fomm_config
from eval.bench import timing
from kpflow.cli import UsageError

HELP = "live calls over loopback WebRTC: latency, render fps, concurrent calls per process"

SUSTAINED_SHARE = 0.95  # of a call's frame ticks rendered, for the process to sustain it
WARMUP_FRAMES = 8
VARIANTS = {64: "tiny", 256: ""}  # frame size -> FOMM config variant ("" is the official vox-256)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--frame_sizes", type=int, nargs="+", default=[64, 256], choices=sorted(VARIANTS),
                   help="frame sizes, one call each (64: the tiny FOMM; 256: the official config)")
    p.add_argument("--calls", type=int, nargs="+", default=[1, 2, 4],
                   help="numbers of concurrent calls in one process, at the first frame size")
    p.add_argument("--frames", type=int, default=90, help="frames per call (default 90: 3 s at 30 fps)")
    p.add_argument("--fps", type=float, default=30.0, help="the call's frame rate (default 30)")
    p.add_argument("--seed", type=int, default=0, help="weights and video seed")


def _check(args: argparse.Namespace) -> None:
    if args.frames < 2 or min(args.calls) < 1 or not 0 < args.fps <= 240:
        raise UsageError(f"need --frames >= 2, --calls >= 1 and 0 < --fps <= 240; got {args.frames}, {args.calls}, "
                         f"{args.fps}")


def _setup(size: int, frames: int, seed: int, root: Path):
    """A random FOMM at ``size``, its renderer, and a generated video (test/) with its fitting clips (train/)."""
    from kpflow.call.receiver import FrameRenderer
    from kpflow.data.synthetic_video import make_synthetic_videos
    from kpflow.fomm.model import random_fomm

    config = fomm_config("vox", VARIANTS[size])
    config.data.frame_shape = (size, size, 3)
    fomm = random_fomm(config, seed)
    videos = make_synthetic_videos(root / "videos", num_train=1, num_test=1, num_frames=frames, size=size, seed=seed)
    return fomm, FrameRenderer(fomm), str(videos["test"][0]), str(root / "videos" / "train")


async def _calls(fomm, renderer, video: str, fit: str, count: int, frames: int, fps: float) -> list[dict]:
    from kpflow.call import app

    def one():
        return app.loopback(fomm_dir="", fomm=fomm, renderer=renderer, video=video, codec_fit=fit, frames=frames,
                            fps=fps, realtime=True, quiet=True, reference_pixels=False)

    return list(await asyncio.gather(*(one() for _ in range(count))))


def _summary(stats: dict) -> dict[str, Any]:
    ticks = stats["frames_shown"] + stats["frames_skipped"]
    return {"latency_ms": stats["latency_ms"], "render_fps": stats["render_fps"],
            "rendered_share": stats["frames_shown"] / ticks if ticks else None, "frames": ticks,
            "kbps": stats["kbps"]}


def run(args: argparse.Namespace) -> dict[str, Any]:
    from kpflow.progress import progress

    _check(args)
    result: dict[str, Any] = {"fps": args.fps, "frames": args.frames, "sizes": [], "concurrent": [],
                              "environment": timing.environment(), "load_average_before": timing.load_average()}
    with tempfile.TemporaryDirectory() as tmp:
        for i, size in enumerate(progress(args.frame_sizes, desc="frame sizes", unit="size")):
            root = Path(tmp) / str(size)
            fomm, renderer, video, fit = _setup(size, args.frames, args.seed, root)
            asyncio.run(_calls(fomm, renderer, video, fit, 1, WARMUP_FRAMES, args.fps))  # compile
            (single,) = asyncio.run(_calls(fomm, renderer, video, fit, 1, args.frames, args.fps))
            result["sizes"].append({"frame_size": size, "config": VARIANTS[size] or "official", **_summary(single)})
            if i:
                continue
            for count in progress(args.calls, desc=f"concurrent calls at {size}x{size}", unit="setting"):
                calls = [_summary(s) for s in asyncio.run(_calls(fomm, renderer, video, fit, count, args.frames,
                                                                 args.fps))]
                shares = [c["rendered_share"] or 0.0 for c in calls]
                # A call that rendered no frame has no latency: it counts as not sustained.
                timed = [c["latency_ms"] for c in calls if c["latency_ms"]]
                result["concurrent"].append({
                    "frame_size": size, "calls": count, "rendered_shares": shares, "min_rendered_share": min(shares),
                    "sustained": min(shares) >= SUSTAINED_SHARE,
                    "latency_p50_ms": statistics.median(t["p50"] for t in timed) if timed else None,
                    "latency_p95_ms": max(t["p95"] for t in timed) if timed else None,
                    "render_fps_per_call": statistics.median(c["render_fps"] or 0.0 for c in calls)})
    # Above the CPU count, other processes competed for the CPUs (the calls run in real time).
    result["load_average_after"] = timing.load_average()
    return result


def format(result: dict[str, Any]) -> str:
    head = (f"loopback calls at {result['fps']:g} fps, {result['frames']} frames each, real-time pacing "
            f"(load average {result['load_average_before']} before, {result['load_average_after']} after):")
    lines = [head]
    for s in result["sizes"]:
        lat = s["latency_ms"]
        lines.append(f"  {s['frame_size']}x{s['frame_size']} ({s['config']} FOMM): latency p50 {lat['p50']:.0f} ms, "
                     f"p95 {lat['p95']:.0f} ms, max {lat['max']:.0f} ms; render {s['render_fps']:.1f} fps; "
                     f"{100 * s['rendered_share']:.0f}% of frame ticks rendered")
    for c in result["concurrent"]:
        latency = ("no frame rendered" if c["latency_p50_ms"] is None else
                   f"latency p50 {c['latency_p50_ms']:.0f} ms, p95 {c['latency_p95_ms']:.0f} ms")
        lines.append(f"  {c['calls']} concurrent call(s) at {c['frame_size']}x{c['frame_size']}: every call rendered "
                     f">= {100 * c['min_rendered_share']:.0f}% of its ticks ({'sustained' if c['sustained'] else 'not sustained'}); "
                     f"{latency}; render {c['render_fps_per_call']:.1f} fps per call")
    return "\n".join(lines)
