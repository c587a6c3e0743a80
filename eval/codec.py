"""Rate-distortion of keypoint transmission: ``python -m eval.codec --data_dir PATH --out FILE.json``.

Every clip of ``--data_dir`` (per-clip ``.npz`` keypoints) is sent through ``kpflow.codec`` at 30 fps
and the receiver's reconstruction is compared with the clip (keypoint MAE in raw units, over all
frames). The codec's models are fitted on the clips of ``--fit_dir`` (default: the first
``--fit_fraction`` of the clips, which are then not scored). Points written to the JSON list, each
``{"policy", "kbps", "mae_raw", ...}``:

- ``paper_fp32``: every frame's 60 numbers as float32 (57.6 kbps, exact);
- ``paper_fp32_half_forecast``: the papers' 6 sent + 6 forecast frames, float32, forecast frames
  held from the last sent one (28.8 kbps);
- ``order0``: the plain baseline: per-dimension quantisation, frame-to-frame deltas of the quantised
  values, and the *ideal* order-0 entropy of those symbols (per dimension, measured on the scored
  clips themselves; no headers, no packets) for each ``--steps`` value;
- ``kpflow_every_frame`` and ``kpflow_threshold``: real packets from ``kpflow.codec`` (headers
  included), every frame or with the keyframe policy at each ``--thresholds`` value, residuals in
  the ``--basis`` with a ``--deadzone``. Their models are fitted on the fitting clips only, then
  refitted to what the policy sends there (``CodecParams.fit_to_policy``); each point also says
  where the bits go (``header_kbps``, ``packets_per_second``, ``intra_packets``).

``FILE.png`` beside the JSON draws the curves (kbps against MAE) with the papers' points.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

FPS = 30.0
FLOAT_BITS = 32


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m eval.codec", description=__doc__.split("\n\n")[0])
    p.add_argument("--data_dir", required=True, help="folder of per-clip .npz keypoints")
    p.add_argument("--out", required=True, help="output JSON (a list of points); FILE.png is drawn beside it")
    p.add_argument("--fit_dir", default="", help="clips to fit the codec's models on (default: part of --data_dir)")
    p.add_argument("--fit_fraction", type=float, default=0.5, help="share of --data_dir clips used for fitting (default 0.5)")
    p.add_argument("--steps", type=float, nargs="+", default=[0.03, 0.04, 0.05, 0.06, 0.08, 0.1],
                   help="quantisation steps in raw keypoint units")
    p.add_argument("--thresholds", type=float, nargs="+", default=[0.015, 0.02, 0.025, 0.03],
                   help="keyframe-policy thresholds (mean absolute drift, raw units)")
    p.add_argument("--basis", default="pca", choices=["pca", "identity"],
                   help="residuals coded in the principal directions of motion (pca) or per dimension")
    p.add_argument("--deadzone", type=float, default=0.6, help="residual components up to this many steps are not sent")
    p.add_argument("--intra_period", type=int, default=60, help="every N-th packet is intra (loss recovery)")
    p.add_argument("--max_gap", type=int, default=60, help="send at least every N frames (<= 127)")
    a = p.parse_args(argv)
    if not 0 < a.fit_fraction < 1:
        p.error(f"--fit_fraction must be in (0, 1); got {a.fit_fraction}")
    if min(a.steps) <= 0 or min(a.thresholds) < 0:
        p.error("--steps must be > 0 and --thresholds >= 0")
    if not 0 <= a.deadzone < 1.5:
        p.error(f"--deadzone must be in [0, 1.5) steps; got {a.deadzone}")
    return a


def paper_points(series: list[np.ndarray]) -> list[dict]:
    """The papers' float32 operating points: everything sent, and 6 sent + 6 held."""
    dim = series[0].shape[1]
    full = dim * FLOAT_BITS * FPS / 1000
    errors = []
    for s in series:
        rec = s.copy()
        for t in range(len(s)):
            if t % 12 >= 6:
                rec[t] = rec[t - 1]
        errors.append(np.abs(rec - s).ravel())
    return [
        {"policy": "paper_fp32", "kbps": full, "mae_raw": 0.0},
        {"policy": "paper_fp32_half_forecast", "kbps": full / 2, "mae_raw": float(np.mean(np.concatenate(errors)))},
    ]


def order0_point(series: list[np.ndarray], step: float) -> dict:
    """Quantise, code deltas of the quantised values, count the ideal order-0 entropy per dimension."""
    symbols, errors = [], []
    for s in series:
        q = np.round(s / step).astype(np.int64)  # closed loop is exact: deltas of quantised values
        symbols.append(np.diff(q, axis=0, prepend=np.zeros((1, s.shape[1]), np.int64)))
        errors.append(np.abs(q * step - s).ravel())
    sym = np.concatenate(symbols)
    bits = 0.0
    for d in range(sym.shape[1]):
        _, counts = np.unique(sym[:, d], return_counts=True)
        prob = counts / counts.sum()
        bits += -(counts * np.log2(prob)).sum()
    frames = sum(len(s) for s in series)
    return {"policy": "order0", "step": step, "kbps": bits / (frames / FPS) / 1000,
            "mae_raw": float(np.mean(np.concatenate(errors)))}


def codec_point(series: list[np.ndarray], params, policy: str, **kwargs) -> dict:
    from kpflow import codec

    total, header, packets, intra, errors = 0, 0, 0, 0, []
    for s in series:
        out = codec.transmit(s, params, policy=policy, fps=FPS, **kwargs)
        total += out["bytes"]
        header += out["header_bytes"]
        packets += out["packets"]
        intra += out["intra_packets"]
        errors.append(np.abs(out["reconstruction"] - s).ravel())
    seconds = sum(len(s) for s in series) / FPS
    return {"kbps": total * 8 / seconds / 1000, "mae_raw": float(np.mean(np.concatenate(errors))),
            "header_kbps": header * 8 / seconds / 1000, "packets_per_second": packets / seconds,
            "intra_packets": intra, "bytes": total}


def plot(path: Path, points: list[dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4))
    curves = sorted({p["policy"] for p in points if not p["policy"].startswith("paper")})
    for name in curves:
        pts = sorted((p["mae_raw"], p["kbps"]) for p in points if p["policy"] == name)
        # A sweep over two knobs: draw its lower envelope as the curve, every point as a dot.
        front = [pt for i, pt in enumerate(pts) if all(pt[1] < k for _, k in pts[:i])]
        line, = ax.plot([m for m, _ in front], [k for _, k in front], "-", label=name)
        ax.plot([m for m, _ in pts], [k for _, k in pts], "o", ms=3, color=line.get_color(), alpha=0.6)
    paper = [p for p in points if p["policy"] == "paper_fp32_half_forecast"]
    if paper:
        ax.axvline(paper[0]["mae_raw"], color="k", ls=":", lw=1)  # the MAE every scheme must match
    for p in points:
        if p["policy"].startswith("paper"):
            ax.plot(p["mae_raw"], p["kbps"], "k*", ms=9)
            ax.annotate(p["policy"], (p["mae_raw"], p["kbps"]), fontsize=7, xytext=(4, 4), textcoords="offset points")
    ax.set_yscale("log")
    ax.set_xlabel("keypoint MAE (raw units, all frames)")
    ax.set_ylabel("kbps at 30 fps (log)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run(args: argparse.Namespace) -> list[dict]:
    from tqdm import tqdm

    from kpflow import codec
    from kpflow.data.clips import load_folder

    try:
        clips = load_folder(args.data_dir)
        fit_clips = load_folder(args.fit_dir) if args.fit_dir else None
    except (FileNotFoundError, ValueError) as e:
        raise SystemExit(f"error: {' '.join(str(e).split())}") from None
    names = clips.names
    if fit_clips is None:
        if len(names) < 2:
            raise SystemExit(f"error: {args.data_dir} holds {len(names)} clip(s); need two (fit and score) or --fit_dir")
        cut = min(len(names) - 1, max(1, round(args.fit_fraction * len(names))))
        fit = [clips.clips[n] for n in names[:cut]]
        scored = [clips.clips[n] for n in names[cut:]]
    else:
        fit = list(fit_clips.clips.values())
        scored = list(clips.clips.values())
    points = paper_points(scored)
    jobs = list(itertools.product(args.steps, [None, *args.thresholds]))
    for step in args.steps:
        points.append(order0_point(scored, step))
    for step, threshold in tqdm(jobs, desc="rate-distortion", unit="point"):
        base = codec.CodecParams.fit(fit, step, basis=args.basis, deadzone=args.deadzone)
        sender = {"intra_period": args.intra_period, "max_gap": args.max_gap}
        if threshold is None:
            sender["policy"] = "every_frame"
        else:
            sender.update(policy="threshold", threshold=threshold)
        params = base.fit_to_policy(fit, **sender)  # fitting clips only: the scored ones stay unseen
        p = codec_point(scored, params, **sender)
        setting = {"step": step, "basis": args.basis, "deadzone": args.deadzone}
        if threshold is None:
            points.append({"policy": "kpflow_every_frame", **setting, **p})
        else:
            points.append({"policy": "kpflow_threshold", **setting, "threshold": threshold, **p})
    return points


def best_at(points: list[dict], policy: str, mae: float) -> dict | None:
    """The lowest-rate point of ``policy`` whose MAE is at most ``mae``."""
    ok = [p for p in points if p["policy"] == policy and p["mae_raw"] <= mae]
    return min(ok, key=lambda p: p["kbps"]) if ok else None


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    points = run(args)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(points, indent=1))
    plot(out.with_suffix(".png"), points)
    paper = next(p for p in points if p["policy"] == "paper_fp32_half_forecast")
    print(f"papers' 6 sent + 6 held, FP32: {paper['kbps']:.1f} kbps at MAE {paper['mae_raw']:.4f}")
    for policy in ("order0", "kpflow_every_frame", "kpflow_threshold"):
        b = best_at(points, policy, paper["mae_raw"])
        line = "no point at that MAE" if b is None else (
            f"{b['kbps']:.2f} kbps at MAE {b['mae_raw']:.4f} (step {b['step']}"
            + (f", threshold {b['threshold']}" if "threshold" in b else "")
            + (f"; headers {b['header_kbps']:.2f} kbps, {b['packets_per_second']:.1f} packets/s" if "header_kbps" in b else "")
            + ")")
        print(f"  {policy:<20} {line}")
    print(f"wrote {out} and {out.with_suffix('.png')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
