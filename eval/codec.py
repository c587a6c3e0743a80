"""Rate-distortion of keypoint transmission: ``python -m eval.codec (--data_dir PATH | --videos PATH --fomm DIR) --out FILE.json``.

Every scored clip is sent through ``kpflow.codec`` at 30 fps and the receiver's reconstruction is
compared with the clip (keypoint MAE in raw units, over all frames). The clips are either per-clip
``.npz`` keypoints (``--data_dir``) or the keypoints a FOMM's detector finds in a folder of videos
(``--videos`` with ``--fomm``: the keypoints the renderer was trained with, so pixel errors can be
measured too). The codec's models are fitted on the clips of ``--fit_dir`` (``.npz`` keypoints, or
videos when ``--videos`` is given; default: the first ``--fit_fraction`` of the clips, which are
then not scored). ``--max_clips N`` scores only the first N of the remaining clips. Points written
to the JSON list, each ``{"policy", "kbps", "mae_raw", ...}``:

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

``--predictor WORKDIR`` (a trained forecaster) runs every ``kpflow_*`` point again with that model
as the codec's predictor (``kpflow.forecast.predictor``), named ``kpflow_threshold_<model>`` and
``kpflow_every_frame_<model>``, with the share of its step used (``gain``: ``--predictor_gain``, or
fitted on the fitting clips at the hold-last operating point, ``gain_fit``); its operating point is
scored under loss too.

With ``--fomm``, some points are also rendered in reconstruction mode (``kpflow.pipeline``: source =
the clip's first frame, driving = the receiver's keypoint series) and get ``pixel_mae`` (mean
|rendered - ground-truth frame| over every frame and pixel of the scored clips, pixels in [0, 1])
and ``pixel_mae_vs_fomm`` (the same against FOMM rendering every frame's exact keypoints, the
``paper_fp32`` point, for which it is 0). ``--render nearest`` (default) renders ``paper_fp32``,
``paper_fp32_half_forecast`` and, per other policy, the point whose keypoint MAE is nearest the
half-forecast one; ``--render all`` renders every point.

``FILE.png`` beside the JSON draws the curves (kbps against keypoint MAE) with the papers' points,
and a second panel (kbps against pixel MAE) when points were rendered.

Bad arguments or inputs give a one-line ``error: ...`` on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from kpflow.channel import check_loss, loss_pattern
from kpflow.cli import OneLineArgumentParser, UsageError, one_line, run_cli
from kpflow.codec import SEQ_MODULO
from kpflow.io import check_output_path, keypoint_series, read_videos, video_paths, video_run_status
from kpflow.progress import progress
from kpflow.runs import load_fomm

FPS = 30.0
FLOAT_BITS = 32
BITS_PER_BYTE = 8
# The papers' schedule: of every PAPER_PERIOD frames the first PAPER_SENT are sent, the rest forecast.
PAPER_SENT, PAPER_PERIOD = 6, 12
COMPARED_POLICIES = ("order0", "kpflow_every_frame", "kpflow_threshold")
RENDER_CHOICES = ("nearest", "all")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = OneLineArgumentParser(prog="python -m eval.codec", description=__doc__.split("\n\n")[0])
    p.add_argument("--data_dir", default="", help="folder of per-clip .npz keypoints (or give --videos and --fomm)")
    p.add_argument("--videos", default="", help="folder of videos (a FOMM layout's test/); keypoints from --fomm's detector")
    p.add_argument("--fomm", default="", help="FOMM directory (train.fomm): detects the keypoints of --videos and renders them")
    p.add_argument("--out", required=True, help="output JSON (a list of points); FILE.png is drawn beside it")
    p.add_argument("--fit_dir", default="",
                   help="clips to fit the codec's models on: .npz keypoints, or videos with --videos (default: part of the clips)")
    p.add_argument("--fit_fraction", type=float, default=0.5, help="share of the clips used for fitting (default 0.5)")
    p.add_argument("--fit_speakers", default="",
                   help="comma-separated speakers (clip-name prefixes) whose clips fit the codec; the other speakers' are scored")
    p.add_argument("--max_clips", type=int, default=0, help="score only the first N clips (0: all)")
    p.add_argument("--steps", type=float, nargs="+", default=[0.03, 0.04, 0.05, 0.06, 0.08, 0.1],
                   help="quantisation steps in raw keypoint units")
    p.add_argument("--thresholds", type=float, nargs="+", default=[0.015, 0.02, 0.025, 0.03],
                   help="keyframe-policy thresholds (mean absolute drift, raw units)")
    p.add_argument("--basis", default="pca", choices=["pca", "identity"],
                   help="residuals coded in the principal directions of motion (pca) or per dimension")
    p.add_argument("--deadzone", type=float, default=0.6, help="residual components up to this many steps are not sent")
    p.add_argument("--intra_period", type=int, default=30,
                   help="an intra packet at least every N frames (loss recovery; 0: none; <= 128; default 30)")
    p.add_argument("--max_gap", type=int, default=30, help="send at least every N frames (1..128; default 30)")
    p.add_argument("--loss_rates", type=float, nargs="*", default=[0.05, 0.2],
                   help="packet loss rates at which the operating point (kpflow_threshold at the papers' MAE) is "
                        "scored; it also gets single-loss recovery times (none: skip both)")
    p.add_argument("--burst", type=float, default=3.0, help="mean length of a loss run (1: independent losses)")
    p.add_argument("--loss_seed", type=int, default=0, help="seed of the loss patterns")
    p.add_argument("--predictor", nargs="+", default=[], metavar="WORKDIR",
                   help="trained forecaster workdir(s) (train.forecaster): the codec is also run with each as its "
                        "predictor, every point again with the policy suffixed by the model's name (kpflow_threshold_vrnn)")
    p.add_argument("--predictor_gain", type=float, default=None,
                   help="share of the forecast step the predictor uses, 0..1 (default: fitted on the fitting clips at "
                        "the hold-last operating point; kpflow.forecast.predictor.fit_gain)")
    p.add_argument("--render", default="nearest", choices=RENDER_CHOICES,
                   help="with --fomm: which points are rendered (nearest: the papers' two and, per policy, the point "
                        "nearest the half-forecast keypoint MAE; all: every point)")
    p.add_argument("--chunk_size", type=int, default=16, help="frames per compiled rendering call (memory bound)")
    a = p.parse_args(argv)
    if not 0 < a.fit_fraction < 1:
        p.error(f"--fit_fraction must be in (0, 1); got {a.fit_fraction}")
    if min(a.steps) <= 0 or min(a.thresholds) < 0:
        p.error("--steps must be > 0 and --thresholds >= 0")
    if not 0 <= a.deadzone < 1.5:
        p.error(f"--deadzone must be in [0, 1.5) steps; got {a.deadzone}")
    if a.max_clips < 0 or a.chunk_size < 1:
        p.error(f"--max_clips must be >= 0 and --chunk_size >= 1; got {a.max_clips} and {a.chunk_size}")
    if not 0 <= a.intra_period <= SEQ_MODULO or not 1 <= a.max_gap <= SEQ_MODULO:
        p.error(f"--intra_period must be 0..{SEQ_MODULO} and --max_gap 1..{SEQ_MODULO} frames; "
                f"got {a.intra_period} and {a.max_gap}")
    if a.predictor_gain is not None and not 0 <= a.predictor_gain <= 1:
        p.error(f"--predictor_gain must be in [0, 1]; got {a.predictor_gain}")
    for rate in a.loss_rates:
        try:
            check_loss(rate, a.burst)
        except ValueError as e:
            p.error(f"--loss_rates/--burst: {e}")
    return a


def check_sources(a: argparse.Namespace) -> None:
    """Exactly one source of clips: ``--data_dir``, or ``--videos`` with the ``--fomm`` that reads and renders them."""
    if a.data_dir and a.videos:
        raise UsageError("give --data_dir (keypoint clips) or --videos with --fomm, not both")
    if a.fomm and not a.videos:
        raise UsageError("--fomm needs --videos PATH: the clips it renders, whose keypoints its own detector finds")
    if a.videos and not a.fomm:
        raise UsageError("--videos needs --fomm DIR: its detector finds the keypoints, its generator renders them")
    if a.fit_dir and a.fit_speakers:
        raise UsageError("give --fit_dir (separate fitting clips) or --fit_speakers (fitting speakers of the same folder), not both")
    if not a.data_dir and not a.videos:
        raise UsageError("give --data_dir (a folder of .npz keypoint clips) or --videos PATH with --fomm DIR")


# -- clips -----------------------------------------------------------------------------------------


def split_clips(names: list[str], a: argparse.Namespace, source: str) -> tuple[list[str], list[str]]:
    """(fitting, scored) clip names: all scored with ``--fit_dir``; with ``--fit_speakers`` those
    speakers' clips fit and every other speaker's are scored; else the first ``--fit_fraction`` fit."""
    from kpflow.data.clips import speaker_of

    if a.fit_dir:
        fit, scored = [], names
    elif a.fit_speakers:
        wanted = set(a.fit_speakers.split(","))
        speakers = {speaker_of(os.path.basename(n)) for n in names}
        if not wanted <= speakers:
            raise UsageError(f"--fit_speakers {sorted(wanted - speakers)} have no clips in {source}; "
                             f"speakers there: {sorted(speakers)}")
        fit = [n for n in names if speaker_of(os.path.basename(n)) in wanted]
        scored = [n for n in names if speaker_of(os.path.basename(n)) not in wanted]
        if not scored:
            raise UsageError(f"--fit_speakers leaves no clip of {source} to score")
    else:
        if len(names) < 2:
            raise UsageError(f"{source} holds {len(names)} clip(s); need two (fit and score) or --fit_dir")
        cut = min(len(names) - 1, max(1, round(a.fit_fraction * len(names))))
        fit, scored = names[:cut], names[cut:]
    return fit, scored[: a.max_clips] if a.max_clips else scored


def keypoint_clips(a: argparse.Namespace) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """``--data_dir`` (and ``--fit_dir``) .npz clips -> (fitting series, scored series), each ``[T, D]``."""
    from kpflow.data.clips import load_folder

    try:
        clips = load_folder(a.data_dir)
        fit_clips = load_folder(a.fit_dir) if a.fit_dir else None
    except (FileNotFoundError, ValueError) as e:
        raise UsageError(one_line(e)) from None
    fit, scored = split_clips(clips.names, a, a.data_dir)
    fitting = fit_clips.series() if fit_clips is not None else [clips.clips[n] for n in fit]
    return fitting, [clips.clips[n] for n in scored]


def video_clips(a: argparse.Namespace, fomm, skips) -> tuple[list[np.ndarray], list[np.ndarray], list[np.ndarray]]:
    """``--videos`` (and ``--fit_dir``) through ``fomm``'s detector -> (fitting series, scored series,
    scored frames); series ``[T, D]``, frames ``[T, H, W, 3]`` float32 in [0, 1] at the FOMM's frame size.
    Only the scored clips' frames are kept."""
    from kpflow.fomm.model import frame_shape_of

    paths = video_paths(a.videos, "test", "--videos")
    fit_paths = video_paths(a.fit_dir, "train", "--fit_dir") if a.fit_dir else []
    fit, scored = split_clips([str(p) for p in paths], a, a.videos)
    fit_paths = fit_paths or [Path(p) for p in fit]
    shape = frame_shape_of(fomm.config)
    # An unreadable video is skipped with a line, and the run exits 1 at the end (kpflow.io.read_videos).
    fitting = [keypoint_series(fomm, frames) for _, frames in
               progress(read_videos(fit_paths, shape, skips), desc="detect (fitting clips)", unit="clip",
                        total=len(fit_paths), leave=False)]
    scored_frames, scored_series = [], []
    for _, frames in progress(read_videos(scored, shape, skips), desc="detect (scored clips)", unit="clip",
                              total=len(scored), leave=False):
        scored_frames.append(frames)
        scored_series.append(keypoint_series(fomm, frames))
    return fitting, scored_series, scored_frames


# -- rate-distortion points: each with the receiver's reconstruction of every scored clip -------------


def paper_points(series: list[np.ndarray]) -> list[tuple[dict, list[np.ndarray]]]:
    """The papers' float32 operating points: everything sent, and 6 sent + 6 held."""
    dim = series[0].shape[1]
    full = dim * FLOAT_BITS * FPS / 1000  # kbps
    held, errors = [], []
    for s in series:
        rec = s.copy()
        for t in range(len(s)):
            if t % PAPER_PERIOD >= PAPER_SENT:
                rec[t] = rec[t - 1]
        held.append(rec)
        errors.append(np.abs(rec - s).ravel())
    return [
        ({"policy": "paper_fp32", "kbps": full, "mae_raw": 0.0}, list(series)),
        ({"policy": "paper_fp32_half_forecast", "kbps": full / 2, "mae_raw": float(np.mean(np.concatenate(errors)))},
         held),
    ]


def order0_point(series: list[np.ndarray], step: float) -> tuple[dict, list[np.ndarray]]:
    """Quantise, code deltas of the quantised values, count the ideal order-0 entropy per dimension."""
    symbols, errors, recs = [], [], []
    for s in series:
        q = np.round(s / step).astype(np.int64)  # closed loop is exact: deltas of quantised values
        symbols.append(np.diff(q, axis=0, prepend=np.zeros((1, s.shape[1]), np.int64)))
        recs.append((q * step).astype(np.float32))
        errors.append(np.abs(q * step - s).ravel())
    sym = np.concatenate(symbols)
    bits = 0.0
    for d in range(sym.shape[1]):
        _, counts = np.unique(sym[:, d], return_counts=True)
        prob = counts / counts.sum()
        bits += -(counts * np.log2(prob)).sum()
    frames = sum(len(s) for s in series)
    return {"policy": "order0", "step": step, "kbps": bits / (frames / FPS) / 1000,
            "mae_raw": float(np.mean(np.concatenate(errors)))}, recs


def codec_point(series: list[np.ndarray], params, policy: str, predict=None, **kwargs) -> tuple[dict, list[np.ndarray]]:
    from kpflow import codec

    predict = codec.hold_last if predict is None else predict
    total, header, packets, intra, errors, recs = 0, 0, 0, 0, [], []
    for s in series:
        out = codec.transmit(s, params, predict, policy=policy, fps=FPS, **kwargs)
        total += out["bytes"]
        header += out["header_bytes"]
        packets += out["packets"]
        intra += out["intra_packets"]
        recs.append(out["reconstruction"])
        errors.append(np.abs(out["reconstruction"] - s).ravel())
    seconds = sum(len(s) for s in series) / FPS
    return {"kbps": total * BITS_PER_BYTE / seconds / 1000, "mae_raw": float(np.mean(np.concatenate(errors))),
            "header_kbps": header * BITS_PER_BYTE / seconds / 1000, "packets_per_second": packets / seconds,
            "intra_packets": intra, "bytes": total}, recs


def sender_settings(a: argparse.Namespace, threshold: float | None) -> dict:
    """The Sender's keyword arguments of a point: every frame (``threshold`` None) or the threshold policy."""
    sender = {"intra_period": a.intra_period, "max_gap": a.max_gap}
    if threshold is None:
        sender["policy"] = "every_frame"
    else:
        sender.update(policy="threshold", threshold=threshold)
    return sender


def fitted_params(a: argparse.Namespace, fit: list[np.ndarray], point: dict, predict=None):
    """The codec parameters of a point (its ``step``, ``policy`` and ``threshold``), fitted on the fitting
    clips only (the scored ones stay unseen), then refitted to what that policy sends there; with
    ``predict`` (a predictor) instead of hold-last."""
    from kpflow import codec

    predict = codec.hold_last if predict is None else predict
    every = "every_frame" in point.get("policy", "threshold")  # every_frame, kpflow_every_frame[_<model>]
    sender = sender_settings(a, None if every else point.get("threshold"))
    try:
        base = codec.CodecParams.fit(fit, point["step"], predict, basis=a.basis, deadzone=a.deadzone)
    except ValueError as e:
        raise UsageError(one_line(e)) from None
    return base.fit_to_policy(fit, predict, **sender)


def operating_point(points: list[dict], policy: str = "kpflow_threshold") -> dict | None:
    """The ``policy`` point that the loss scores go to: the cheapest at the papers' keypoint MAE (else
    the most accurate one)."""
    paper = next(p for p in points if p["policy"] == "paper_fp32_half_forecast")
    best = best_at(points, policy, paper["mae_raw"])
    candidates = [p for p in points if p["policy"] == policy]
    return best or (min(candidates, key=lambda p: p["mae_raw"]) if candidates else None)


def rate_distortion(a: argparse.Namespace, fit: list[np.ndarray], scored: list[np.ndarray]) -> list[tuple[dict, list]]:
    """Every point of the sweep, each with its per-clip reconstructions ``[T, D]`` of ``scored``."""

    points = paper_points(scored)
    for step in a.steps:
        points.append(order0_point(scored, step))
    jobs = list(itertools.product(a.steps, [None, *a.thresholds]))
    for step, threshold in progress(jobs, desc="rate-distortion", unit="point"):
        sender = sender_settings(a, threshold)
        params = fitted_params(a, fit, {"step": step, **sender})
        p, recs = codec_point(scored, params, **sender)
        setting = {"step": step, "basis": a.basis, "deadzone": a.deadzone}
        if threshold is None:
            points.append(({"policy": "kpflow_every_frame", **setting, **p}, recs))
        else:
            points.append(({"policy": "kpflow_threshold", **setting, "threshold": threshold, **p}, recs))
    return points


def load_predictors(a: argparse.Namespace, dim: int) -> list:
    """The ``--predictor`` workdirs as :class:`~kpflow.forecast.predictor.ForecastPredictor` (gain 1 until
    fitted), each with a distinct name; one-line errors for a missing or mismatched workdir."""
    from kpflow.forecast.predictor import ForecastPredictor
    from kpflow.runs import check_forecaster_fits, load_forecaster

    predictors, names = [], set()
    for workdir in a.predictor:
        trained = load_forecaster(workdir, flag="--predictor")
        f = trained.forecaster
        check_forecaster_fits(trained, dim, f.num_observed, f.horizon, flag="--predictor")
        name = f.name
        while name in names:  # two workdirs of one model: vrnn, vrnn_2
            name = f"{f.name}_{len(names) + 1}"
        names.add(name)
        predictors.append(ForecastPredictor(f, trained.variables, step=min(a.steps), name=name))
    return predictors


def predictor_points(a: argparse.Namespace, fit: list[np.ndarray], scored: list[np.ndarray], predictor,
                     hold_last_operating: dict | None) -> list[tuple[dict, list]]:
    """Every codec point of the sweep again with ``predictor`` as the codec's predictor (policy names
    suffixed ``_<name>``). Its gain is ``--predictor_gain`` or fitted on the fitting clips at the
    hold-last operating point's step and threshold (kpflow.forecast.predictor.fit_gain)."""
    from kpflow.forecast.predictor import fit_gain

    gain_fit = None
    if a.predictor_gain is not None:
        gain = a.predictor_gain
    else:
        ref = hold_last_operating or {"step": a.steps[0], "threshold": a.thresholds[0]}
        fitted, gain_fit = fit_gain(predictor, fit, ref["step"], sender_settings(a, ref["threshold"]),
                                    progress=lambda g: progress(g, desc=f"fit gain ({predictor.name})", unit="gain"))
        gain = fitted.gain
    points = []
    jobs = list(itertools.product(a.steps, [None, *a.thresholds]))
    for step, threshold in progress(jobs, desc=f"rate-distortion ({predictor.name})", unit="point"):
        predict = predictor.replace(gain=gain, step=step)
        sender = sender_settings(a, threshold)
        params = fitted_params(a, fit, {"step": step, **sender}, predict)
        p, recs = codec_point(scored, params, predict=predict, **sender)
        info = {"predictor": predictor.name, "gain": gain, **({"gain_fit": gain_fit} if gain_fit else {})}
        setting = {"step": step, "basis": a.basis, "deadzone": a.deadzone}
        if threshold is None:
            points.append(({"policy": f"kpflow_every_frame_{predictor.name}", **setting, **p, **info}, recs))
        else:
            points.append(({"policy": f"kpflow_threshold_{predictor.name}", **setting, "threshold": threshold, **p,
                            **info}, recs))
        points[-1][0]["_predict"] = predict  # for the loss scores; dropped before writing
    return points


def score_losses(point: dict, params, scored: list[np.ndarray], a: argparse.Namespace, predict=None,
                 memory: int = 1) -> None:
    """Add to ``point`` (a kpflow_threshold point, fitted ``params``) how it fares under loss.

    ``single_loss_recovery``: over every packet of every scored clip, dropped alone, the frames until
    the receiver shows what a lossless one shows (``kpflow.codec.loss_recovery``; a trial that never
    recovers counts the frames to the clip's end). ``loss``: per rate of ``--loss_rates``, bursty
    losses (``--burst``) drawn per clip from ``--loss_seed``: keypoint MAE over all frames and over
    the frames whose packet was lost. ``predict``: the codec's predictor (hold-last by default), which
    reads the last ``memory`` frames.
    """
    from kpflow import codec

    predict = codec.hold_last if predict is None else predict
    sender = {"policy": "threshold", "threshold": point["threshold"], "intra_period": a.intra_period, "max_gap": a.max_gap}
    frames, recovered = [], []
    for s in progress(scored, desc="single-loss recovery", unit="clip", leave=False):
        f, ok = codec.loss_recovery(s, params, predict, memory=memory, **sender)
        frames.append(f)
        recovered.append(ok)
    frames, recovered = np.concatenate(frames), np.concatenate(recovered)
    point["single_loss_recovery"] = {
        "trials": len(frames), "mean_frames": float(frames.mean()), "p50_frames": float(np.percentile(frames, 50)),
        "p95_frames": float(np.percentile(frames, 95)), "max_frames": int(frames.max()),
        "never_share": float(1 - recovered.mean()),
    }
    rng = np.random.default_rng(a.loss_seed)
    point["loss"] = []
    for rate in a.loss_rates:
        errors, lost_errors = [], []
        for s in scored:
            out = codec.transmit(s, params, predict, lost_packets=loss_pattern(len(s), rate, a.burst, rng), **sender)
            err = np.abs(out["reconstruction"] - s)
            errors.append(err.ravel())
            lost_errors.append(err[out["lost"]].ravel())
        lost = np.concatenate(lost_errors)
        point["loss"].append({"rate": rate, "burst": a.burst, "mae_raw": float(np.mean(np.concatenate(errors))),
                              "mae_raw_lost_frames": float(lost.mean()) if lost.size else None})


# -- pixels ----------------------------------------------------------------------------------------


def points_to_render(points: list[dict], which: str = "nearest") -> list[int]:
    """Indices of the points rendered: all, or the papers' two and, per compared policy, the point whose
    keypoint MAE is nearest the half-forecast one (the lower rate on a tie)."""
    if which == "all":
        return list(range(len(points)))
    index = {p["policy"]: i for i, p in enumerate(points) if p["policy"].startswith("paper")}
    target = points[index["paper_fp32_half_forecast"]]["mae_raw"]
    chosen = [index["paper_fp32"], index["paper_fp32_half_forecast"]]
    predicted = sorted({p["policy"] for p in points if "predictor" in p})
    for policy in (*COMPARED_POLICIES, *predicted):
        candidates = [i for i, p in enumerate(points) if p["policy"] == policy]
        if candidates:
            chosen.append(min(candidates, key=lambda i: (abs(points[i]["mae_raw"] - target), points[i]["kbps"])))
    return chosen


def add_pixel_errors(points: list[dict], reconstructions: list[list[np.ndarray]], chosen: list[int],
                     frames: list[np.ndarray], series: list[np.ndarray], fomm, chunk_size: int = 16) -> None:
    """Render the ``chosen`` points of every scored clip and add ``pixel_mae`` and ``pixel_mae_vs_fomm`` to them.

    ``reconstructions[i][c]`` is point i's keypoint series ``[T, D]`` for clip c; ``frames[c]``
    ``[T, H, W, 3]`` its ground truth and ``series[c]`` ``[T, D]`` its exact keypoints. Reconstruction
    mode: source = the clip's first frame, FOMM renders every frame of the driving series.
    """
    import jax

    from kpflow import pipeline as pl

    fomm_only = pl.MotionTransfer(fomm, None, pl.Schedule(1, 0), "reconstruction", chunk_size=chunk_size)
    key = jax.random.key(0)  # nothing is forecast, so nothing is drawn
    vs_truth = dict.fromkeys(chosen, 0.0)
    vs_fomm = dict.fromkeys(chosen, 0.0)
    count = 0
    for c in progress(range(len(frames)), desc="render", unit="clip"):
        truth = frames[c]
        reference = fomm_only.run(truth[0], series[c], key).frames[0]
        for i in chosen:
            rec = reconstructions[i][c]
            # Exact keypoints (paper_fp32, a lossless point): the reference frames themselves.
            rendered = reference if np.array_equal(rec, series[c]) else fomm_only.run(truth[0], rec, key).frames[0]
            vs_truth[i] += float(np.abs(rendered - truth).sum(dtype=np.float64))
            vs_fomm[i] += float(np.abs(rendered - reference).sum(dtype=np.float64))
        count += truth.size
    for i in chosen:
        points[i]["pixel_mae"] = vs_truth[i] / count
        points[i]["pixel_mae_vs_fomm"] = vs_fomm[i] / count


# -- output ----------------------------------------------------------------------------------------


def describe(p: dict) -> str:
    """A point's setting in words: ``step 0.05, threshold 0.02``."""
    return ", ".join(f"{k} {p[k]}" for k in ("step", "threshold") if k in p)


def plot(path: Path, points: list[dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rendered = [p for p in points if "pixel_mae" in p]
    fig, axes = plt.subplots(1, 2 if rendered else 1, figsize=(12.5 if rendered else 6.5, 4), squeeze=False)
    ax = axes[0, 0]
    colors = {}
    curves = sorted({p["policy"] for p in points if not p["policy"].startswith("paper")})
    for name in curves:
        pts = sorted((p["mae_raw"], p["kbps"]) for p in points if p["policy"] == name)
        # A sweep over two knobs: draw its lower envelope as the curve, every point as a dot.
        front = [pt for i, pt in enumerate(pts) if all(pt[1] < k for _, k in pts[:i])]
        line, = ax.plot([m for m, _ in front], [k for _, k in front], "-", label=name)
        colors[name] = line.get_color()
        ax.plot([m for m, _ in pts], [k for _, k in pts], "o", ms=3, color=colors[name], alpha=0.6)
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
    if rendered:
        ax = axes[0, 1]
        for p in rendered:
            if p["policy"].startswith("paper"):
                ax.plot(p["pixel_mae"], p["kbps"], "k*", ms=9)
                ax.annotate(p["policy"], (p["pixel_mae"], p["kbps"]), fontsize=7, xytext=(4, 4),
                            textcoords="offset points")
            else:  # in the legend: points of similar rate and error would hide each other's labels
                ax.plot(p["pixel_mae"], p["kbps"], "o", ms=5, color=colors.get(p["policy"]),
                        label=f"{p['policy']} ({describe(p)})")
        exact = [p for p in rendered if p["policy"] == "paper_fp32"]
        if exact:  # no keypoint codec renders better than FOMM given exact keypoints
            ax.axvline(exact[0]["pixel_mae"], color="k", ls=":", lw=1)
        ax.set_yscale("log")
        ax.set_xlabel("pixel MAE vs ground truth (reconstruction, all frames)")
        ax.set_ylabel("kbps at 30 fps (log)")
        ax.grid(alpha=0.3, which="both")
        if len(rendered) > 2:
            ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run(args: argparse.Namespace, skips=None) -> list[dict]:
    """The rate-distortion points of the sweep (rendered too with ``--fomm``); writes nothing.
    Videos that cannot be read are recorded in ``skips`` (a ``kpflow.data.videos.VideoSkips``)."""
    from kpflow.data.videos import VideoSkips

    check_sources(args)
    check_output_path(args.out, "--out")
    skips = VideoSkips() if skips is None else skips
    if args.videos:
        fomm = load_fomm(args.fomm)
        fit, scored, frames = video_clips(args, fomm, skips)
        if not fit or not scored:
            raise UsageError(f"no readable {'fitting' if not fit else 'scored'} video in {args.fit_dir or args.videos}")
    else:
        fit, scored = keypoint_clips(args)
    from kpflow.codec import finest_step

    if min(args.steps) < finest_step(fit):
        raise UsageError(f"--steps {min(args.steps):g} is too fine for the data's range; use steps of at least "
                         f"{finest_step(fit):.2g}")
    predictors = load_predictors(args, fit[0].shape[1]) if args.predictor else []
    results = rate_distortion(args, fit, scored)
    operating = operating_point([p for p, _ in results])
    for predictor in predictors:
        results += predictor_points(args, fit, scored, predictor, operating)
    points = [p for p, _ in results]
    if args.loss_rates and operating is not None:
        params = fitted_params(args, fit, operating)
        score_losses(operating, params, scored, args)
    for predictor in predictors:
        op = operating_point(points, f"kpflow_threshold_{predictor.name}")
        if args.loss_rates and op is not None:
            predict = op["_predict"]
            score_losses(op, fitted_params(args, fit, op, predict), scored, args, predict, memory=predict.memory)
    for p in points:
        p.pop("_predict", None)
    if args.videos:
        add_pixel_errors(points, [r for _, r in results], points_to_render(points, args.render), frames, scored, fomm,
                         args.chunk_size)
    return points


def best_at(points: list[dict], policy: str, mae: float) -> dict | None:
    """The lowest-rate point of ``policy`` whose MAE is at most ``mae``."""
    ok = [p for p in points if p["policy"] == policy and p["mae_raw"] <= mae]
    return min(ok, key=lambda p: p["kbps"]) if ok else None


def main(argv: Sequence[str] | None = None) -> int:
    from kpflow.data.videos import VideoSkips

    args = parse_args(argv)
    skips = VideoSkips()

    def work() -> int:
        write_and_report(args, run(args, skips))
        return video_run_status(skips, "python -m eval.codec")

    return run_cli(work)


def write_and_report(args: argparse.Namespace, points: list[dict]) -> None:
    """FILE.json and FILE.png; on stdout, each policy's best point at the papers' keypoint MAE."""
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(points, indent=1))
    plot(out.with_suffix(".png"), points)
    paper = next(p for p in points if p["policy"] == "paper_fp32_half_forecast")
    print(f"papers' 6 sent + 6 held, FP32: {paper['kbps']:.1f} kbps at MAE {paper['mae_raw']:.4f}")
    predicted = sorted({p["policy"] for p in points if "predictor" in p})
    for policy in (*COMPARED_POLICIES, *predicted):
        b = best_at(points, policy, paper["mae_raw"])
        line = "no point at that MAE" if b is None else (
            f"{b['kbps']:.2f} kbps at MAE {b['mae_raw']:.4f} ({describe(b)}"
            + (f", gain {b['gain']:g}" if "gain" in b else "")
            + (f"; headers {b['header_kbps']:.2f} kbps, {b['packets_per_second']:.1f} packets/s" if "header_kbps" in b else "")
            + ")")
        print(f"  {policy:<26} {line}")
    for p in points:
        if "single_loss_recovery" in p:
            r = p["single_loss_recovery"]
            print(f"under loss ({p['policy']}, {describe(p)}): one lost packet leaves the receiver wrong for "
                  f"{r['mean_frames']:.1f} frames on average (p95 {r['p95_frames']:.0f}, max {r['max_frames']}; "
                  f"{100 * r['never_share']:.1f}% not recovered by the clip's end; {r['trials']} trials)")
            for q in p["loss"]:
                lost = "no frame lost" if q["mae_raw_lost_frames"] is None else f"{q['mae_raw_lost_frames']:.4f} over lost frames"
                print(f"  {100 * q['rate']:.0f}% loss, bursts of {q['burst']:g}: keypoint MAE {q['mae_raw']:.4f} ({lost})")
    rendered = [p for p in points if "pixel_mae" in p]
    if rendered:
        print("rendered (reconstruction mode), pixel MAE vs ground truth / vs FOMM with exact keypoints:")
        for p in rendered:
            name = p["policy"] + (f" ({describe(p)})" if describe(p) else "")
            print(f"  {name:<44} {p['kbps']:6.2f} kbps  keypoint MAE {p['mae_raw']:.4f}  "
                  f"pixel MAE {p['pixel_mae']:.4f} / {p['pixel_mae_vs_fomm']:.4f}")
    print(f"wrote {out} and {out.with_suffix('.png')}")


if __name__ == "__main__":
    sys.exit(main())
