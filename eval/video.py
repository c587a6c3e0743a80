"""Video evaluation of the whole system, as the paper does it (and a little more honestly).

``python -m eval.video --fomm DIR --forecaster WORKDIR [--forecaster WORKDIR ...] --videos PATH
--mode reconstruction|transfer --horizon 12-12 --samples 100 --out DIR``

Every video of ``PATH`` (a folder, or a FOMM layout's ``test/``) is read at the FOMM's frame size,
its keypoints are extracted with the FOMM's detector (what a sender would transmit), and the clip
is rendered in the streaming schedule (``kpflow.pipeline``) by:

- **FOMM (no forecast)**: every frame's keypoints transmitted (the paper's "FOMM" row);
- **hold-last**: forecast frames repeat the last transmitted keypoints;
- **each forecaster**: one closed-loop sample per block (the single-forecast use).

Reference frames: the ground-truth video in reconstruction mode (source = the clip's first frame);
in transfer mode (source = the first frame of the *next* clip in sorted order, FOMM's relative
motion) there is no ground truth, so the reference is FOMM without forecasting, and its own row
reads "reference".

Outputs in ``--out``:

- ``results.json`` and ``tables.md``:
  - the single-sample table: pixel MAE and SSIM over forecast frames (plus MAE over all frames),
    keypoint MAE of the forecast frames, and JEDi between reference and rendered segments;
  - the diversity table (``--samples`` S per block, on the first ``--diversity_windows`` blocks of
    each clip): the k lowest-MAE samples' MAE, APD and SSIM, the per-video standardised APD/MAE
    ratio (mean and median), best-of-S and mean-of-S MAE, and the keypoint energy score.
- ``frames.png`` (ground truth / FOMM / one row per model), ``ratio_density.png`` (density of the
  per-video ratios), and ``samples_<model>.gif``/``.mp4`` (reference, FOMM and several samples side
  by side).

An unreadable video is reported on stderr (one line: the file and the reason) and skipped; the
others are evaluated, ``results.json`` lists the skipped ones under ``skipped_videos``, and the run
ends with one ``error:`` line counting them and exit status 1 (when none can be read: one error
line at once). This is :func:`kpflow.io.read_videos`, the policy of every command that reads videos.

JEDi segments are the last transmitted frame plus the M forecast frames of every full block, so
that features see the forecast's motion from where it started. Features come from
``kpflow.features`` (``--features keypoints``: trajectories of the keypoints FOMM's detector finds
in the rendered frames, works everywhere; ``--features vjepa --vjepa_weights FILE``: V-JEPA, the
paper's choice, with user-supplied weights).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import itertools
import json
import sys
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from kpflow.cli import OneLineArgumentParser, UsageError, one_line, run_cli
from kpflow.io import check_output_path, keypoint_series, read_videos, video_paths, video_run_status
from kpflow.progress import progress
from kpflow.runs import check_forecaster_fits, load_fomm, load_fomm_config, load_forecaster

HOLD_LAST = "hold-last"
NO_FORECAST = "FOMM (no forecast)"
GIF_SAMPLES = 4
GIF_FPS = 10
MAX_GRID_COLUMNS = 8
# The ratio density plot: a Gaussian kernel density estimate on RATIO_GRID_POINTS points spanning the
# ratios with RATIO_GRID_MARGIN of their range on either side. Its bandwidth is Silverman's rule of
# thumb for a Gaussian kernel, SILVERMAN_FACTOR * std * n ** SILVERMAN_EXPONENT (optimal for
# Gaussian data); a single ratio, or equal ones, get half the margin.
SILVERMAN_FACTOR = 1.06
SILVERMAN_EXPONENT = -0.2
RATIO_GRID_POINTS = 200
RATIO_GRID_MARGIN = 0.25
RATIO_GRID_MIN_MARGIN = 1e-3
# Keypoint-trajectory JEDi features are z-scored; this keeps a constant feature finite.
FEATURE_STD_FLOOR = 1e-8


# -- arguments -----------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    p = OneLineArgumentParser(
        prog="python -m eval.video",
        description="Render clips through FOMM + forecasters in the streaming schedule and score the videos.",
    )
    p.add_argument("--fomm", required=True, help="FOMM directory (trained with train.fomm or converted)")
    p.add_argument("--forecaster", action="append", default=[], metavar="WORKDIR",
                   help="forecaster run directory (repeat for several models)")
    p.add_argument("--videos", required=True, help="a folder of videos, a FOMM layout (its test/ is used) or one video")
    p.add_argument("--mode", choices=("reconstruction", "transfer"), default="reconstruction")
    p.add_argument("--horizon", default="12-12", help="N-M: N transmitted, M forecast frames per block (default 12-12)")
    p.add_argument("--samples", type=int, default=100,
                   help="samples per block for the diversity table (default 100; 1: no diversity table)")
    p.add_argument("--top_k", type=int, default=20, help="lowest-MAE samples kept per block (the paper: 20 of 100)")
    p.add_argument("--diversity_windows", type=int, default=2,
                   help="blocks per clip in the diversity table (0: all; default 2)")
    p.add_argument("--diversity_models", default="",
                   help="comma-separated model names for the diversity table (default: every forecaster)")
    p.add_argument("--ratio_scaling", default="none", choices=("none", "components", "ratio"),
                   help="reading of the paper's standardised APD/MAE ratio (kpflow.metrics.standardized_ratio; default none)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--which", default="best", choices=("best", "latest"), help="forecaster checkpoint (default best)")
    p.add_argument("--features", default="keypoints", choices=("keypoints", "vjepa"), help="JEDi feature extractor")
    p.add_argument("--vjepa_weights", default="", help="V-JEPA encoder checkpoint for --features vjepa (vith16.pth.tar)")
    p.add_argument("--vjepa_probe", default="",
                   help="V-JEPA SSv2 attentive-probe checkpoint (JEDi's pooling; default: mean of the tokens)")
    p.add_argument("--vjepa_config", default="vit_huge", help="V-JEPA model size (JEDi: vit_huge)")
    p.add_argument("--max_clips", type=int, default=0, help="evaluate only the first N clips (0: all)")
    p.add_argument("--skip_short", action="store_true",
                   help="skip clips shorter than one N+M block (default: refuse them)")
    p.add_argument("--chunk_size", type=int, default=16, help="frames per compiled rendering call (memory bound)")
    p.add_argument("--figure_clip", type=int, default=0, help="index of the clip shown in the figures")
    p.add_argument("--adapt_movement_scale", action="store_true", help="transfer mode: FOMM's movement-scale adaptation")
    p.add_argument("--no_relative_jacobian", action="store_true", help="transfer mode: absolute driving Jacobians")
    p.add_argument("--seed", type=int, default=0)
    return p


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = build_parser()
    a = p.parse_args(argv)
    for name, low in (("samples", 1), ("top_k", 1), ("chunk_size", 1), ("diversity_windows", 0), ("max_clips", 0),
                      ("figure_clip", 0)):
        if getattr(a, name) < low:
            p.error(f"--{name} must be >= {low}; got {getattr(a, name)}")
    if a.top_k > a.samples > 1:
        p.error(f"--top_k ({a.top_k}) cannot exceed --samples ({a.samples})")
    if a.features == "vjepa" and not a.vjepa_weights:
        p.error("--features vjepa needs --vjepa_weights FILE (V-JEPA weights are supplied by the user)")
    return a


# -- inputs --------------------------------------------------------------------------------------


@dataclasses.dataclass
class Clip:
    name: str
    frames: np.ndarray  # [T, H, W, 3] float32 in [0, 1]
    series: np.ndarray  # [T, 6K] keypoints detected by the FOMM


@dataclasses.dataclass
class Model:
    label: str
    forecaster: object
    variables: dict
    workdir: str


def load_models(workdirs: Sequence[str], which: str, num_observed: int, horizon: int, dim: int) -> list[Model]:
    """Every ``--forecaster`` run, checked to forecast ``dim`` numbers per frame at ``num_observed``-``horizon``;
    labels are the models' names (with the run folder where two share one)."""
    models, seen = [], {}
    for workdir in workdirs:
        trained = load_forecaster(workdir, which, flag="--forecaster")
        check_forecaster_fits(trained, dim, num_observed, horizon, flag="--forecaster")
        f = trained.forecaster
        label = f.name
        if label in seen:
            label = f"{f.name} ({Path(workdir).name})"
        seen[label] = True
        models.append(Model(label, f, trained.variables, workdir))
    return models


def load_clips(videos: Iterable[tuple[Path, np.ndarray]], fomm, period: int, skip_short: bool, max_clips: int,
               total: int | None = None) -> list[Clip]:
    """The clips of ``videos`` (``(path, frames)`` pairs, e.g. from :func:`kpflow.io.read_videos`)
    with the FOMM's keypoints; ``total`` videos for the progress bar."""
    from kpflow.data.videos import video_name

    clips, short = [], []
    for path, frames in progress(videos, total=total, desc="read + detect", unit="clip", leave=False):
        name = video_name(path)
        if len(frames) < period:
            short.append(f"{name} ({len(frames)} frames)")
            continue
        clips.append(Clip(name, frames, keypoint_series(fomm, frames)))
        if max_clips and len(clips) == max_clips:
            break
    if short and not skip_short:
        raise UsageError(
            f"{len(short)} clip(s) shorter than one {period}-frame block: {', '.join(short[:3])}"
            f"{' ...' if len(short) > 3 else ''}; use a shorter --horizon, or --skip_short to leave them out"
        )
    if short:
        print(f"skipped {len(short)} clip(s) shorter than {period} frames: {', '.join(short)}", file=sys.stderr)
    if not clips:
        raise UsageError(f"no clip holds a full {period}-frame block")
    return clips


# -- evaluation ----------------------------------------------------------------------------------


def _segments(frames: np.ndarray, blocks, num_observed: int) -> list[np.ndarray]:
    """The last transmitted frame plus the forecast frames of every full block: ``[M + 1, H, W, 3]`` each."""
    return [frames[b.start + num_observed - 1 : b.stop] for b in blocks]


def _concatenated(rows: dict, key: str) -> np.ndarray:
    return np.concatenate(rows[key]) if rows[key] else np.zeros(0)


def _full_blocks(schedule, t: int):
    return [b for b in schedule.blocks(t) if len(b.forecast) == schedule.horizon]


class Evaluation:
    """Holds the loaded inputs and runs both tables (see the module docstring)."""

    def __init__(self, args: argparse.Namespace, fomm, models: list[Model], clips: list[Clip]):
        from kpflow import pipeline as pl

        self.args = args
        self.fomm = fomm
        self.models = models
        self.clips = clips
        self.schedule = pl.Schedule.parse(args.horizon)
        self.renderer = pl.Renderer(fomm, args.chunk_size)
        if args.mode == "transfer" and len(clips) < 2:
            raise UsageError("transfer mode needs at least two clips (the source image comes from another clip)")
        self.features = self.extractor()  # before any rendering: missing weights fail fast
        self._references: dict[tuple[int, int], np.ndarray] = {}  # transfer mode, see reference_window

    # -- per clip ---------------------------------------------------------------------------------
    def source_of(self, i: int) -> np.ndarray:
        j = i if self.args.mode == "reconstruction" else (i + 1) % len(self.clips)
        return self.clips[j].frames[0]

    def pipeline(self, predict):
        from kpflow import pipeline as pl

        a = self.args
        return pl.MotionTransfer(
            self.fomm, predict, self.schedule, a.mode, relative_jacobian=not a.no_relative_jacobian,
            adapt_movement_scale=a.adapt_movement_scale, renderer=self.renderer,
        )

    def predictor(self, method: str):
        from kpflow import pipeline as pl

        if method == NO_FORECAST:
            return None
        if method == HOLD_LAST:
            return pl.hold_last_predictor
        m = next(m for m in self.models if m.label == method)
        return pl.forecaster_predictor(m.forecaster, m.variables)

    def methods(self) -> list[str]:
        return [NO_FORECAST, HOLD_LAST] + [m.label for m in self.models]

    # -- single-sample table ------------------------------------------------------------------
    def single(self, key) -> tuple[dict, dict]:
        """-> (rows by method, frames by method for the figure clip)."""
        import jax

        from kpflow import metrics

        a = self.args
        sched = self.schedule
        rows = {m: {"abs_err_forecast": [], "abs_err_all": [], "ssim": [], "kp_abs_err": []} for m in self.methods()}
        segments = {m: [] for m in self.methods()}
        reference_segments, figure = [], {}
        predictors = {m: self.predictor(m) for m in self.methods()}
        pipes = {m: self.pipeline(p) for m, p in predictors.items()}
        bar = progress(total=len(self.clips) * len(rows), desc=f"single ({a.mode}, {sched})", unit="render")
        for i, clip in enumerate(self.clips):
            source = self.source_of(i)
            t = len(clip.frames)
            observed = sched.observed_mask(t)
            forecast = ~observed
            fomm_out = pipes[NO_FORECAST].run(source, clip.series, key)
            fomm_frames = fomm_out.frames[0]
            reference = clip.frames if a.mode == "reconstruction" else fomm_frames
            full = _full_blocks(sched, t)
            reference_segments += _segments(reference, full, sched.num_observed)
            for m in rows:
                key, sub = jax.random.split(key)
                if m == NO_FORECAST:
                    frames, kps = fomm_frames, clip.series
                else:
                    out = pipes[m].run(source, clip.series, sub, 1, observed_frames=fomm_frames[observed])
                    frames, kps = out.frames[0], out.keypoints[0]
                err = np.asarray(metrics.pixel_mae(frames, reference))  # [T]
                rows[m]["abs_err_forecast"].append(err[forecast])
                rows[m]["abs_err_all"].append(err)
                rows[m]["ssim"].append(np.asarray(metrics.ssim(frames[forecast], reference[forecast])))
                rows[m]["kp_abs_err"].append(np.abs(kps[forecast] - clip.series[forecast]).mean(axis=-1))
                segments[m] += _segments(frames, full, sched.num_observed)
                if i == a.figure_clip % len(self.clips):
                    figure[m] = frames
                bar.update()
            if i == a.figure_clip % len(self.clips):
                figure["reference"] = reference
                figure["source"] = source
        bar.close()
        jedi = self.jedi(reference_segments, segments)
        table = {}
        for m, r in rows.items():
            cat = functools.partial(_concatenated, r)
            table[m] = {
                "mae": float(cat("abs_err_forecast").mean()),
                "mae_all_frames": float(cat("abs_err_all").mean()),
                "ssim": float(cat("ssim").mean()),
                "kp_mae": float(cat("kp_abs_err").mean()),
                "jedi": jedi.get(m),
                "frames_scored": int(cat("abs_err_forecast").size),
            }
            if a.mode == "transfer" and m == NO_FORECAST:
                table[m]["reference"] = True
        return table, figure

    def extractor(self):
        from kpflow import features

        if self.args.features == "vjepa":
            try:
                return features.get_extractor("vjepa", weights=self.args.vjepa_weights,
                                              probe=self.args.vjepa_probe or None, config=self.args.vjepa_config)
            except (FileNotFoundError, ValueError, ImportError) as e:
                raise UsageError(one_line(e)) from None
        return features.get_extractor("keypoints", detect=self.fomm.detect)

    def jedi(self, reference_segments: list, segments: dict) -> dict:
        from kpflow import metrics

        if len(reference_segments) < 2:
            print("JEDi needs at least two full blocks over all clips; not computed", file=sys.stderr)
            return {}
        extract = self.features
        real = extract(np.stack(reference_segments))
        # Keypoint-trajectory features are increments of ~1e-2: in the homogeneous degree-2 kernel
        # every value would vanish, so they are z-scored with the reference set's per-dimension
        # statistics. V-JEPA features go in as JEDi uses them.
        loc, scale = (real.mean(0), real.std(0) + FEATURE_STD_FLOOR) if self.args.features == "keypoints" else (0.0, 1.0)
        out = {}
        for m, segs in progress(segments.items(), desc="JEDi features", unit="model", leave=False):
            if self.args.mode == "transfer" and m == NO_FORECAST:
                continue  # it is the reference
            out[m] = float(metrics.jedi((real - loc) / scale, (extract(np.stack(segs)) - loc) / scale))
        return out

    # -- diversity table ------------------------------------------------------------------------
    def baselines_on(self, jobs, key) -> dict:
        """FOMM without forecasting and hold-last on the diversity table's blocks (MAE and SSIM of
        the forecast frames), so the models' rows have their baselines beside them."""
        from kpflow import metrics

        n = self.schedule.num_observed
        rows = {}
        for label in (NO_FORECAST, HOLD_LAST):
            if self.args.mode == "transfer" and label == NO_FORECAST:
                continue  # it is the reference
            pipe = self.pipeline(self.predictor(label))
            mae, ssim = [], []
            for i, b in jobs:
                clip = self.clips[i]
                window = clip.series[b.start : b.stop]
                out = pipe.run(self.source_of(i), window, key, 1, kp_initial=clip.series[0])
                reference = self.reference_window(i, b)
                mae.append(float(np.mean(metrics.pixel_mae(out.frames[0, n:], reference[n:]))))
                ssim.append(float(np.mean(metrics.ssim(out.frames[0, n:], reference[n:]))))
            rows[label] = {"mae": float(np.mean(mae)), "ssim": float(np.mean(ssim)), "windows": len(jobs), "baseline": True}
        return rows

    def reference_window(self, i: int, b) -> np.ndarray:
        """The reference frames of block ``b`` of clip ``i``: ground truth, or (transfer) FOMM's
        rendering, made once per block and reused by every model's row."""
        clip = self.clips[i]
        if self.args.mode == "reconstruction":
            return clip.frames[b.start : b.stop]
        if (i, b.start) not in self._references:
            import jax

            window = clip.series[b.start : b.stop]
            out = self.pipeline(None).run(self.source_of(i), window, jax.random.key(0), 1, kp_initial=clip.series[0])
            self._references[(i, b.start)] = out.frames[0]
        return self._references[(i, b.start)]

    def diversity_models(self) -> list[str]:
        wanted = [w.strip() for w in self.args.diversity_models.split(",") if w.strip()]
        labels = [m.label for m in self.models]
        unknown = [w for w in wanted if w not in labels]
        if unknown:
            raise UsageError(f"--diversity_models names {unknown[0]!r}, which is not among the forecasters {labels}")
        return wanted or labels

    def diversity(self, key) -> tuple[dict, dict]:
        """-> (rows by model, {model: [S', N+M, H, W, 3] frames of the first window, for the GIFs})."""
        import jax

        from kpflow import metrics

        a = self.args
        sched = self.schedule
        n, m_ = sched.num_observed, sched.horizon
        table, media = {}, {}
        jobs = []
        for i, clip in enumerate(self.clips):
            blocks = _full_blocks(sched, len(clip.frames))
            jobs += [(i, b) for b in (blocks[: a.diversity_windows] if a.diversity_windows else blocks)]
        table.update(self.baselines_on(jobs, key))
        for label in self.diversity_models():
            pipe = self.pipeline(self.predictor(label))
            per_video = {"apd": [], "mae": []}
            windows = {"mae": [], "apd": [], "ssim": [], "mae_best": [], "mae_mean": [], "energy_score": []}
            bar = progress(total=len(jobs) * (a.samples * m_ + n), desc=f"diversity {label} (S={a.samples})", unit="frame")
            clip_scores: dict[int, dict] = {}
            for i, b in jobs:
                clip = self.clips[i]
                key, sub = jax.random.split(key)
                source = self.source_of(i)
                window = clip.series[b.start : b.stop]
                out = pipe.run(source, window, sub, a.samples, progress=bar.update, kp_initial=clip.series[0])
                reference = self.reference_window(i, b)
                samples = out.frames[:, n:]  # [S, M, H, W, 3]
                scores = metrics.video_sample_scores(samples, reference[n:], k=a.top_k)
                es = metrics.energy_score(out.keypoints[:, None, n:], window[None, n:])
                scores["energy_score"] = float(np.asarray(es)[0])
                for k, values in windows.items():
                    values.append(float(scores[k]))
                clip_scores.setdefault(i, {"apd": [], "mae": []})
                clip_scores[i]["apd"].append(float(scores["apd"]))
                clip_scores[i]["mae"].append(float(scores["mae"]))
                if label not in media and i == a.figure_clip % len(self.clips):
                    media[label] = {"reference": reference, "samples": out.frames[:GIF_SAMPLES], "num_observed": n}
            bar.close()
            for i, s in clip_scores.items():
                per_video["apd"].append(float(np.mean(s["apd"])))
                per_video["mae"].append(float(np.mean(s["mae"])))
            names = [self.clips[i].name for i in clip_scores]
            ratio = metrics.standardized_ratio(np.asarray(per_video["apd"]), np.asarray(per_video["mae"]),
                                               scaling=a.ratio_scaling)
            table[label] = {
                **{k: float(np.mean(v)) for k, v in windows.items()},
                "ratio_mean": float(ratio["mean"]),
                "ratio_median": float(ratio["median"]),
                "ratio_per_video": {n: (float(r) if np.isfinite(r) else None) for n, r in zip(names, ratio["per_video"])},
                "windows": len(jobs),
                "samples": a.samples,
                "top_k": a.top_k,
            }
        return table, media


# -- reports -------------------------------------------------------------------------------------


def _fmt(x, digits: int = 4) -> str:
    if x is None:
        return "-"
    if isinstance(x, float) and not np.isfinite(x):
        return "nan"
    return f"{x:.{digits}f}"


def _jedi(x) -> str:
    return "-" if x is None else f"{x:.3g}"


def _table_head(*columns: str) -> list[str]:
    return ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]


def markdown(result: dict) -> str:
    """Both tables of ``results.json`` in markdown."""
    a = result["args"]
    lines = [
        f"## {a['mode']}, {a['horizon']} ({len(result['clips'])} clips, {result['frame_size']} px)",
        "",
        "Single sample per block. MAE and SSIM over forecast frames against "
        + ("the ground-truth video" if a["mode"] == "reconstruction" else "FOMM without forecasting (the reference)")
        + f"; JEDi ({a['features']} features) between reference and rendered segments.",
        "",
        *_table_head("method", "MAE", "SSIM", "MAE (all frames)", "keypoint MAE", "JEDi"),
    ]
    for m, r in result["single"].items():
        if r.get("reference"):
            lines.append(f"| {m} | reference | reference | reference | {_fmt(r['kp_mae'])} | reference |")
        else:
            lines.append(f"| {m} | {_fmt(r['mae'])} | {_fmt(r['ssim'])} | {_fmt(r['mae_all_frames'])} | "
                         f"{_fmt(r['kp_mae'])} | {_jedi(r['jedi'])} |")
    if result.get("diversity"):
        lines += ["", *diversity_markdown(result["diversity"])]
    return "\n".join(lines) + "\n"


def diversity_markdown(diversity: dict) -> list[str]:
    """The diversity table's lines: the models' rows and their baselines' (one rendering each)."""
    d0 = next(r for r in diversity.values() if not r.get("baseline"))
    lines = [
        (f"Diversity: {d0['samples']} samples per block, the {d0['top_k']} with lowest MAE kept "
         f"({d0['windows']} blocks). Ratio = per-video standardised APD / MAE."),
        "",
        *_table_head("model", "APD", "MAE", "SSIM", "ratio mean", "ratio median", "best-of-S MAE", "mean-of-S MAE",
                     "keypoint energy score"),
    ]
    for m, r in diversity.items():
        if r.get("baseline"):
            lines.append(f"| {m} (one rendering) | - | {_fmt(r['mae'])} | {_fmt(r['ssim'])} | - | - | - | - | - |")
            continue
        lines.append(
            f"| {m} | {_fmt(r['apd'])} | {_fmt(r['mae'])} | {_fmt(r['ssim'])} | {_fmt(r['ratio_mean'], 3)} | "
            f"{_fmt(r['ratio_median'], 3)} | {_fmt(r['mae_best'])} | {_fmt(r['mae_mean'])} | {_fmt(r['energy_score'])} |"
        )
    return lines


def _to_uint8(frames: np.ndarray) -> np.ndarray:
    return (np.clip(frames, 0, 1) * 255 + 0.5).astype(np.uint8)


def plot_frame_grid(path: Path, figure: dict, methods: list[str], schedule, mode: str, clip_name: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = schedule.num_observed
    t = len(figure["reference"])
    stop = min(schedule.period, t)
    cols = np.unique(np.linspace(n - 1, stop - 1, min(MAX_GRID_COLUMNS, stop - n + 1)).round().astype(int))
    rows = [("ground truth" if mode == "reconstruction" else "reference (FOMM)", figure["reference"])]
    rows += [(m, figure[m]) for m in methods if m in figure and not (mode == "transfer" and m == NO_FORECAST)]
    fig, axes = plt.subplots(len(rows), len(cols) + 1, figsize=(1.6 * (len(cols) + 1), 1.6 * len(rows)), squeeze=False)
    for r, (label, frames) in enumerate(rows):
        if r == 0:
            axes[r, 0].imshow(np.clip(figure["source"], 0, 1))
            axes[r, 0].set_title("source", fontsize=8)
        else:
            axes[r, 0].axis("off")
        axes[r, 1].set_ylabel(label, fontsize=8)
        for c, f in enumerate(cols):
            ax = axes[r, c + 1]
            ax.imshow(np.clip(frames[f], 0, 1))
            if r == 0:
                ax.set_title(f"t={f}" + (" (sent)" if f < n else ""), fontsize=8)
        for ax in axes[r]:
            ax.set_xticks([])
            ax.set_yticks([])
    fig.suptitle(f"{clip_name}: {mode}, {schedule}; first column: the source image", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_ratio_density(path: Path, diversity: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.2))
    for label, r in diversity.items():
        if r.get("baseline"):
            continue
        v = np.asarray([x for x in r["ratio_per_video"].values() if x is not None and np.isfinite(x)], np.float64)
        if v.size == 0:
            continue
        lo, hi = v.min(), v.max()
        pad = RATIO_GRID_MARGIN * (hi - lo) + RATIO_GRID_MIN_MARGIN
        grid = np.linspace(lo - pad, hi + pad, RATIO_GRID_POINTS)
        bw = SILVERMAN_FACTOR * v.std() * v.size**SILVERMAN_EXPONENT if v.size > 1 and v.std() > 0 else pad / 2
        dens = np.exp(-0.5 * ((grid[:, None] - v[None]) / bw) ** 2).sum(1) / (v.size * bw * np.sqrt(2 * np.pi))
        (line,) = ax.plot(grid, dens, label=f"{label} (median {np.median(v):.2f})")
        ax.plot(v, np.zeros_like(v), "|", color=line.get_color(), markersize=12)
    ax.set_xlabel("per-video standardised APD / MAE")
    ax.set_ylabel("density")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_sample_videos(out: Path, media: dict, fps: int = GIF_FPS) -> list[Path]:
    """``samples_<model>.gif`` (and ``.mp4`` when ffmpeg works): reference | sample 1 | sample 2 ..."""
    import imageio.v3 as iio

    written = []
    for label, m in media.items():
        tiles = [m["reference"][None]] + [s[None] for s in m["samples"]]
        strip = _to_uint8(np.concatenate(np.concatenate(tiles, axis=0).transpose(1, 0, 2, 3, 4), axis=2)[..., :3])
        # strip: [T, H, (1 + S) W, 3]; a dark bar marks forecast frames
        strip[m["num_observed"] :, -3:] = (200, 40, 40)
        stem = out / f"samples_{label.replace(' ', '_').replace('(', '').replace(')', '')}"
        iio.imwrite(stem.with_suffix(".gif"), strip, duration=1000 // fps, loop=0)
        written.append(stem.with_suffix(".gif"))
        try:
            h, w = strip.shape[1:3]
            even = strip[:, : h - h % 2, : w - w % 2]
            iio.imwrite(stem.with_suffix(".mp4"), even, fps=fps, codec="libx264", macro_block_size=1,
                        ffmpeg_log_level="error")
            written.append(stem.with_suffix(".mp4"))
        except Exception as e:  # noqa: BLE001 -- no ffmpeg: the GIF is enough
            print(f"mp4 not written ({type(e).__name__}); the GIF is", file=sys.stderr)
    return written


# -- main ----------------------------------------------------------------------------------------


def run(args: argparse.Namespace, skips=None) -> dict:
    """Evaluate as ``args`` says and write the outputs; returns ``results.json``'s dict. Unreadable
    videos are skipped into ``skips`` (a :class:`kpflow.data.videos.VideoSkips`) and listed under
    ``skipped_videos``."""
    import jax

    from kpflow import pipeline as pl
    from kpflow.data.videos import VideoSkips
    from kpflow.fomm.model import frame_shape_of
    from kpflow.keypoints import FEATURES_PER_KEYPOINT

    skips = VideoSkips() if skips is None else skips
    try:
        schedule = pl.Schedule.parse(args.horizon)
    except ValueError as e:
        raise UsageError(str(e)) from None
    if schedule.horizon < 1:
        raise UsageError(f"--horizon {args.horizon}: M must be at least 1 (nothing is forecast otherwise)")
    check_output_path(args.out, "--out", folder=True)
    paths = video_paths(args.videos, "test", "--videos")
    videos = read_videos(paths, frame_shape_of(load_fomm_config(args.fomm)), skips)
    first = next(videos)  # none readable: one line now, before any model is loaded
    fomm = load_fomm(args.fomm)
    models = load_models(args.forecaster, args.which, schedule.num_observed, schedule.horizon,
                         FEATURES_PER_KEYPOINT * fomm.num_kp)
    clips = load_clips(itertools.chain([first], videos), fomm, schedule.period, args.skip_short, args.max_clips,
                       total=len(paths))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    ev = Evaluation(args, fomm, models, clips)
    key = jax.random.key(args.seed)
    single_key, div_key = jax.random.split(key)
    timings = {}
    t0 = time.perf_counter()
    single, figure = ev.single(single_key)
    timings["single_s"] = time.perf_counter() - t0
    diversity, media = {}, {}
    if models and args.samples > 1:
        t0 = time.perf_counter()
        diversity, media = ev.diversity(div_key)
        timings["diversity_s"] = time.perf_counter() - t0
    h, w = frame_shape_of(fomm.config)
    result = {
        "args": vars(args),
        "clips": [c.name for c in clips],
        "frame_size": f"{h}x{w}",
        "schedule": str(schedule),
        "transmitted_fraction": float(np.mean([schedule.transmitted_fraction(len(c.frames)) for c in clips])),
        "single": single,
        "diversity": diversity,
        "timings": timings,
        "forecasters": {m.label: m.workdir for m in models},
        "skipped_videos": {str(p): reason for p, reason in skips.skipped},
    }
    figure_clip = clips[args.figure_clip % len(clips)].name
    plot_frame_grid(out / "frames.png", figure, ev.methods(), schedule, args.mode, figure_clip)
    if diversity:
        plot_ratio_density(out / "ratio_density.png", diversity)
        write_sample_videos(out, media)
    (out / "results.json").write_text(json.dumps(result, indent=1, default=str))
    (out / "tables.md").write_text(markdown(result))
    return result


def report(args: argparse.Namespace, result: dict) -> None:
    """The tables on stdout and the list of what was written."""
    print(markdown(result))
    print(f"written to {args.out}: results.json, tables.md, frames.png"
          + (", ratio_density.png, samples_*.gif" if result["diversity"] else ""))


def main(argv: Sequence[str] | None = None) -> int:
    """The command line; returns the exit status: 0, 1 when some videos could not be read (the
    results cover the others), 2 for a bad argument or input (one line ``error: ...``)."""
    from kpflow.data.videos import VideoSkips

    args = parse_args(argv)
    skips = VideoSkips()

    def evaluate() -> int:
        report(args, run(args, skips))
        return video_run_status(skips)

    return run_cli(evaluate)


if __name__ == "__main__":
    sys.exit(main())
