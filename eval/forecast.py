"""Evaluate a trained forecaster against the baselines on a folder of keypoint clips.

    python -m eval.forecast --workdir runs/vrnn_vox --data_dir ../shared/data/vox_keypoints \
        --out runs/vrnn_vox/eval_6-6.json [--samples 100] [--seed 0] [--split all|train|val]

Protocol (docs/design.md, "Protocols"): the model is evaluated at the horizon N-M it was trained for, on
non-overlapping N+M windows of every clip of the folder (all clips are test data; ``--split``
restricts to the workdir's validation or training clips). Every method draws S closed-loop samples
per window, batched over windows and jitted; the scores (:func:`kpflow.metrics.window_scores`,
:func:`kpflow.metrics.motion_mmd`) are computed in two unit systems:

- ``minmax``: the papers' units; each clip is min-max scaled per dimension over the observed frames
  of all its evaluation windows (it sees the future, so it is for reporting only);
- ``raw``: keypoint units as stored.

Methods: ``model``; the baselines ``hold_last``, ``linear`` and ``random_walk`` (Gaussian steps with
the per-dimension variance of the workdir's training split); and, for recurrent models only,
``teacher_forced``: the authors' protocol where the true frame t-1 is fed in before predicting t. It
is a one-step-ahead prediction with true inputs, *not* a forecast, and is labelled so.

Writes FILE.json (scores), FILE.md (a table) and FILE.png (real vs sampled trajectories).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
from collections.abc import Callable
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from kpflow import data as kpdata
from kpflow import forecast, metrics
from kpflow.cli import OneLineArgumentParser, UsageError, fail, one_line
from kpflow.io import check_output_path, pad_rows
from kpflow.keypoints import FEATURES_PER_KEYPOINT, CausalScaler, MinMaxScaler
from kpflow.progress import progress
from kpflow.runs import load_forecaster

# Order of rows in every table; the index also seeds each method's random stream.
METHODS = ("model", "hold_last", "linear", "random_walk", "teacher_forced")
BASELINES = ("hold_last", "linear", "random_walk")
# Baselines whose S samples are all the same point forecast: one sample gives identical scores.
POINT_BASELINES = ("hold_last", "linear")
TEACHER_FORCED_NOTE = (
    "teacher_forced: the authors' evaluation protocol; the true frame t-1 is fed in before predicting "
    "t, so it is a one-step-ahead prediction with true inputs, not a forecast"
)
# The papers' diversity protocol: per window, the DIVERSITY_TOP_K samples of lowest MAE.
DIVERSITY_TOP_K = 20
MOTION_SAMPLES_PER_WINDOW = 4
PLOT_SAMPLES = 20
# A baseline's random stream is seeded with BASELINE_SEED_OFFSET + its index in METHODS.
BASELINE_SEED_OFFSET = 100


# -- inputs -------------------------------------------------------------------------------------


def parse_args(argv=None) -> argparse.Namespace:
    p = OneLineArgumentParser(
        prog="python -m eval.forecast",
        description="Evaluate a trained keypoint forecaster against hold-last, linear and random-walk baselines.",
    )
    p.add_argument("--workdir", required=True, help="training workdir holding the checkpoint")
    p.add_argument("--data_dir", required=True, help="folder of per-clip .npz keypoint files to evaluate on")
    p.add_argument("--out", required=True, help="output JSON path; FILE.md and FILE.png are written beside it")
    p.add_argument("--samples", type=int, default=100, help="samples per window (default 100)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--split", choices=("all", "train", "val"), default="all",
                   help="all clips of --data_dir (default), or only the workdir's validation / training clips")
    p.add_argument("--plot_windows", type=int, default=4, help="windows shown in FILE.png (0: no plot)")
    p.add_argument("--batch_size", type=int, default=128, help="windows per jitted batch")
    p.add_argument("--which", default="best", help="checkpoint to load (passed to load_trained)")
    a = p.parse_args(argv)
    if a.samples < 1:
        p.error(f"--samples must be at least 1, got {a.samples}")
    if a.plot_windows < 0:
        p.error(f"--plot_windows must be >= 0, got {a.plot_windows}")
    if a.batch_size < 1:
        p.error(f"--batch_size must be at least 1, got {a.batch_size}")
    return a


def select_clips(data_dir: str, trained, split: str) -> kpdata.ClipSet:
    """The clips of ``data_dir`` to evaluate (``split``: all, or the workdir's train / val names)."""
    try:
        clips = kpdata.load_folder(data_dir)
    except (FileNotFoundError, ValueError) as e:
        raise UsageError(one_line(e)) from None
    if split == "all":
        return clips
    names = list(trained.val_names) if split == "val" else list(trained.train_clips.names)
    chosen = [n for n in clips.names if n in set(names)]
    if not chosen:
        example = f" (e.g. {names[0]!r})" if names else ""
        raise UsageError(f"none of the workdir's {split} clips{example} are in {data_dir!r}; use --split all")
    return clips.subset(chosen)


@dataclasses.dataclass
class EvalWindows:
    """Every evaluation window, with its clip and its clip's min-max units.

    ``windows [W, N+M, D]`` raw float32; ``clip_index [W]`` into ``clip_names``; ``mm_min``,
    ``mm_range [W, D]``: the min-max scaler of the window's clip (the papers' units).
    """

    windows: np.ndarray
    clip_index: np.ndarray
    clip_names: list[str]
    windows_per_clip: dict[str, int]
    mm_min: np.ndarray
    mm_range: np.ndarray

    def __len__(self) -> int:
        return len(self.windows)


def build_windows(clips: kpdata.ClipSet, num_observed: int, horizon: int) -> EvalWindows:
    """Non-overlapping N+M windows of every clip (clips shorter than one window contribute none)."""
    parts, index, mins, ranges, counts = [], [], [], [], {}
    for i, (name, series) in enumerate(clips.clips.items()):
        w = kpdata.evaluation_windows(series, num_observed, horizon)
        counts[name] = len(w)
        if not len(w):
            continue
        scaler = MinMaxScaler.fit(kpdata.observed_frames_of_windows(series, num_observed, horizon))
        parts.append(w)
        index.append(np.full(len(w), i))
        mins.append(np.broadcast_to(scaler.minimum, (len(w), w.shape[-1])))
        ranges.append(np.broadcast_to(scaler.range, (len(w), w.shape[-1])))
    return EvalWindows(
        windows=np.concatenate(parts).astype(np.float32),
        clip_index=np.concatenate(index),
        clip_names=clips.names,
        windows_per_clip=counts,
        mm_min=np.concatenate(mins).astype(np.float32),
        mm_range=np.concatenate(ranges).astype(np.float32),
    )


# -- sampling and scoring -----------------------------------------------------------------------


@dataclasses.dataclass
class Method:
    """A row of the table: ``sample(variables, windows [B, N+M, D], rng) -> [S', B, M, D]`` raw (jitted).

    Variables are an argument, not a closure constant, so large models do not get baked into the program.
    """

    name: str
    sample: Callable
    variables: dict
    num_samples: int

    def __call__(self, windows, rng):
        return self.sample(self.variables, windows, rng)


def make_methods(trained, eval_windows: EvalWindows, num_observed: int, horizon: int, num_samples: int,
                 rng) -> list[Method]:
    """The model, the three baselines (random walk fitted on the training split) and, if it applies, teacher forcing."""
    f = trained.forecaster
    n, m, s = num_observed, horizon, num_samples
    methods = [Method("model", jax.jit(lambda v, win, key: f.sample(v, win[:, :n], m, key, s)), trained.variables, s)]
    train_scaler = CausalScaler.fit(trained.train_clips.series())
    example = jnp.asarray(eval_windows.windows[:1])
    for name in BASELINES:
        b = forecast.create(name, dim=f.dim, num_observed=n, horizon=m)
        bvars = b.init(jax.random.fold_in(rng, BASELINE_SEED_OFFSET + METHODS.index(name)), example, train_scaler)
        bs = 1 if name in POINT_BASELINES else s
        # Default arguments bind this iteration's forecaster (a plain closure would see the last one).
        sample = jax.jit(lambda v, win, key, b=b, k=bs: b.sample(v, win[:, :n], m, key, k))
        methods.append(Method(name, sample, bvars, bs))
    if f.supports_teacher_forcing:
        teacher_forced = jax.jit(lambda v, win, key: f.teacher_forced(v, win, key, s))
        methods.append(Method("teacher_forced", teacher_forced, trained.variables, s))
    return methods


_jnp_median = jax.jit(lambda x: jnp.median(x, axis=0))


def sample_median(samples) -> jnp.ndarray:
    """Per-dimension median over samples ``[S, B, M, D] -> [B, M, D]``.

    XLA's CPU sort is several times slower than NumPy's selection, and this is the slowest part of
    scoring, so on the CPU backend it runs in NumPy; elsewhere it stays on the accelerator.
    """
    if jax.default_backend() == "cpu":
        return jnp.asarray(np.median(np.asarray(samples), axis=0))
    return _jnp_median(samples)


@partial(jax.jit, static_argnames=("num_observed", "top_k", "motion_k"))
def score_batch(samples, median, windows, mm_min, mm_range, num_observed: int, top_k: int, motion_k: int) -> dict:
    """Per-window scores of one batch in both unit systems, plus what the set-level scores need.

    ``samples [S, B, M, D]``, ``median [B, M, D]`` (:func:`sample_median`), ``windows [B, N+M, D]``,
    ``mm_min``, ``mm_range [B, D]`` ->
    ``{"raw": {score: [B]}, "minmax": {...}, "diversity": (mae [B], apd [B]) in minmax units,
    "motion": {unit: (real features [B, F], forecast features [k, B, F])}}``.
    """
    target = windows[:, num_observed:]
    last = windows[:, num_observed - 1]
    to_mm = lambda x: (x - mm_min[:, None]) / mm_range[:, None]  # [.., B, T, D]
    s_mm, t_mm, last_mm = to_mm(samples), to_mm(target), (last - mm_min) / mm_range
    # One median for both units: min-max scaling is monotone per dimension, so it maps medians to medians.
    out = {
        "raw": metrics.window_scores(samples, target, median),
        "minmax": metrics.window_scores(s_mm, t_mm, to_mm(median)),
    }
    out["diversity"] = metrics.lowest_mae_diversity(s_mm, t_mm, top_k)
    lead = lambda x: jnp.broadcast_to(x, (motion_k,) + x.shape)
    out["motion"] = {
        "raw": (metrics.motion_features(target, last), metrics.motion_features(samples[:motion_k], lead(last))),
        "minmax": (metrics.motion_features(t_mm, last_mm), metrics.motion_features(s_mm[:motion_k], lead(last_mm))),
    }
    return out


def evaluate_method(method: Method, ev: EvalWindows, num_observed: int, batch_size: int, rng, plot_idx,
                    bar) -> dict:
    """Score one method on every window. Returns per-unit score dicts (floats), diversity and plot samples."""
    w = len(ev)
    b = min(batch_size, w)
    motion_idx, motion_k = metrics.motion_subset(w, method.num_samples, MOTION_SAMPLES_PER_WINDOW)
    top_k = min(DIVERSITY_TOP_K, method.num_samples)
    per_window = {"raw": [], "minmax": []}
    diversity, real_f, fake_f = ([], []), {"raw": [], "minmax": []}, {"raw": [], "minmax": []}
    plot = {}
    for i, start in enumerate(range(0, w, b)):
        sl = slice(start, min(start + b, w))
        valid = sl.stop - sl.start
        win = pad_rows(ev.windows[sl], b)
        samples = method(jnp.asarray(win), jax.random.fold_in(rng, i))
        mm_min, mm_range = jnp.asarray(pad_rows(ev.mm_min[sl], b)), jnp.asarray(pad_rows(ev.mm_range[sl], b))
        out = score_batch(samples, sample_median(samples), jnp.asarray(win), mm_min, mm_range,
                          num_observed=num_observed, top_k=top_k, motion_k=motion_k)
        out = jax.device_get(out)
        for unit, rows in per_window.items():
            rows.append({k: v[:valid] for k, v in out[unit].items()})
            real_f[unit].append(out["motion"][unit][0][:valid])
            fake_f[unit].append(out["motion"][unit][1][:, :valid])
        for j in (0, 1):
            diversity[j].append(out["diversity"][j][:valid])
        for j in plot_idx:
            if sl.start <= j < sl.stop:
                s_np = np.asarray(samples[:, j - sl.start])
                plot[int(j)] = {"paths": s_np[:PLOT_SAMPLES], "mean": s_np.mean(axis=0)}
        bar.update(1)
    scores = {}
    for unit, rows in per_window.items():
        row = {k: float(np.mean(np.concatenate([p[k] for p in rows]))) for k in rows[0]}
        real = np.concatenate(real_f[unit])[motion_idx]
        fake = np.concatenate(fake_f[unit], axis=1)[:, motion_idx].reshape(-1, real.shape[-1])
        row["motion_mmd"] = float(metrics.motion_mmd_from_features(real, fake))
        scores[unit] = {k: row[k] for k in metrics.SCORE_KEYS}
    div_mae, div_apd = (np.concatenate(d) for d in diversity)
    ratio = metrics.apd_mae_ratio_by_video(div_apd, div_mae, ev.clip_index)
    div = {"top_k": top_k, "mae": ratio["mae"], "apd": ratio["apd"],
           "ratio_mean": ratio["ratio_mean"], "ratio_median": ratio["ratio_median"]}
    return {"scores": scores, "diversity": div, "plot": plot, "motion_samples_per_window": motion_k}


# -- outputs ------------------------------------------------------------------------------------


def _finite_or_none(x):
    return None if isinstance(x, float) and not math.isfinite(x) else x


def _label(name: str) -> str:
    return "teacher_forced (authors' protocol, true inputs; not a forecast)" if name == "teacher_forced" else name


def markdown_table(result: dict) -> str:
    """One row per method; columns: the six scores in minmax units, then in raw units."""
    units = ("minmax", "raw")
    head = ["method"] + [f"{k} ({u})" for u in units for k in metrics.SCORE_KEYS]
    lines = [
        f"# Forecast evaluation: {result.get('model', 'model')} at {result['horizon']}",
        "",
        (f"{result['num_windows']} windows, {result['samples']} samples per window, "
         f"data `{result.get('data_dir', '')}` (split: {result.get('split', 'all')}), "
         f"workdir `{result.get('workdir', '')}`. Lower is better except apd (diversity). "
         "minmax = the papers' per-clip min-max units; raw = keypoint units."),
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    for name in result["units"]["raw"]:
        cells = [_label(name)] + [f"{result['units'][u][name][k]:.4g}" for u in units for k in metrics.SCORE_KEYS]
        lines.append("| " + " | ".join(cells) + " |")
    div = result.get("diversity", {}).get("methods", {})
    if div:
        lines += [
            "",
            (f"Diversity, the papers' protocol (minmax units): per window the {result['diversity']['top_k']} "
             "lowest-MAE samples; their mean MAE and APD; per clip APD / MAE, mean and median over clips."),
            "",
            "| method | top-k mae | top-k apd | apd/mae mean | apd/mae median |",
            "|---|---|---|---|---|",
        ]
        fmt = lambda x: "n/a" if x is None else f"{x:.4g}"
        for name, d in div.items():
            cells = [_label(name)] + [fmt(d[k]) for k in ("mae", "apd", "ratio_mean", "ratio_median")]
            lines.append("| " + " | ".join(cells) + " |")
    if "teacher_forced" in result["units"]["raw"]:
        lines += ["", TEACHER_FORCED_NOTE + "."]
    return "\n".join(lines) + "\n"


def _most_moving_keypoints(windows: np.ndarray, count: int = 2) -> list[int]:
    """Keypoints whose location moves most over the given windows ``[P, T, D]`` (what is worth looking at)."""
    per_kp = windows.reshape(windows.shape[:2] + (-1, FEATURES_PER_KEYPOINT))[..., :2]  # [P, T, K, 2]
    spread = per_kp.std(axis=1).sum(axis=(0, 2))  # [K]
    return sorted(np.argsort(-spread)[:count].tolist())


def plot_trajectories(path: str, ev: EvalWindows, plot: dict, num_observed: int, title: str) -> None:
    """Grid: one row per window, columns x and y of the two most moving keypoints (raw units)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    idx = sorted(plot)
    kps = _most_moving_keypoints(ev.windows[idx])
    cols = [(k, c) for k in kps for c in (0, 1)]
    fig, axes = plt.subplots(len(idx), len(cols), figsize=(3.4 * len(cols), 2.3 * len(idx) + 0.9), squeeze=False,
                             layout="constrained")
    n = num_observed
    for r, j in enumerate(idx):
        win, paths, mean = ev.windows[j], plot[j]["paths"], plot[j]["mean"]
        t = np.arange(len(win))
        tf = np.arange(n - 1, len(win))  # futures drawn from the last observed frame on, so lines join
        clip = ev.clip_names[ev.clip_index[j]]
        for c, (k, xy) in enumerate(cols):
            ax = axes[r, c]
            d = FEATURES_PER_KEYPOINT * k + xy
            join = lambda fut, d=d, start=win[n - 1, d]: np.concatenate([[start], fut[:, d]])
            for p in paths:
                ax.plot(tf, join(p), color="tab:blue", alpha=0.25, lw=0.8, label="samples")
            ax.plot(tf, join(mean), color="tab:blue", lw=2.0, label="sample mean", zorder=3)
            ax.plot(tf, np.full(len(tf), win[n - 1, d]), color="dimgray", ls="--", lw=1.4, label="hold-last", zorder=3)
            ax.plot(t[:n], win[:n, d], color="black", lw=1.8, marker=".", label="context")
            ax.plot(tf, win[n - 1 :, d], color="tab:red", lw=1.8, marker=".", label="truth", zorder=4)
            ax.axvline(n - 0.5, color="k", lw=0.5, alpha=0.5)
            ax.tick_params(labelsize=7)
            where = f"\n{clip[:34]} @ frame {_window_start(ev, j, len(win))}" if c == 0 else ""
            ax.set_title(f"{'xy'[xy]} of keypoint {k}{where}", fontsize=8, loc="left")
            if r == len(idx) - 1:
                ax.set_xlabel("frame in window", fontsize=8)
    handles, labels = axes[0, 0].get_legend_handles_labels()
    unique = dict(zip(labels, handles))  # one legend entry per kind of line
    fig.legend(unique.values(), unique.keys(), loc="outside lower center", ncol=5, fontsize=8, frameon=False)
    fig.suptitle(title, fontsize=10)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _window_start(ev: EvalWindows, j: int, length: int) -> int:
    """First frame (in its clip) of window ``j``."""
    first = int(np.argmax(ev.clip_index == ev.clip_index[j]))
    return (j - first) * length


# -- main ---------------------------------------------------------------------------------------


def load_inputs(args: argparse.Namespace) -> tuple:
    """The trained forecaster and the evaluation windows of ``--data_dir`` -> ``(trained, windows)``;
    UsageError (one line) for anything that does not fit."""
    trained = load_forecaster(args.workdir, args.which, args.data_dir)
    n, m = int(trained.config.num_observed), int(trained.config.num_predicted)
    clips = select_clips(args.data_dir, trained, args.split)
    f = trained.forecaster
    if clips.dim != f.dim:
        raise UsageError(
            f"{args.data_dir!r} has {clips.dim} numbers per frame ({clips.dim // FEATURES_PER_KEYPOINT} keypoints); "
            f"the model expects {f.dim} ({f.dim // FEATURES_PER_KEYPOINT} keypoints)"
        )
    try:
        kpdata.check_long_enough(clips.clips, n + m, what=args.data_dir)
    except ValueError as e:
        raise UsageError(one_line(e)) from None
    return trained, build_windows(clips, n, m)


def evaluate_all(methods: list[Method], ev: EvalWindows, num_observed: int, args: argparse.Namespace, rng,
                 plot_idx: list[int]) -> dict:
    """``{method name: evaluate_method(...)}`` for every method, with one progress bar over all batches."""
    num_batches = math.ceil(len(ev) / min(args.batch_size, len(ev)))
    results = {}
    with progress(total=num_batches * len(methods), desc="evaluating", unit="batch") as bar:
        for method in methods:
            bar.set_postfix_str(method.name)
            key = jax.random.fold_in(rng, METHODS.index(method.name))
            results[method.name] = evaluate_method(method, ev, num_observed, args.batch_size, key,
                                                   plot_idx if method.name == "model" else [], bar)
    return results


def result_json(args: argparse.Namespace, model_name: str, horizon: str, ev: EvalWindows, results: dict) -> dict:
    """What FILE.json holds: the scores of every method in both units, the diversity and the notes."""
    out = {
        "horizon": horizon,
        "num_windows": len(ev),
        "samples": args.samples,
        "units": {u: {name: r["scores"][u] for name, r in results.items()} for u in ("minmax", "raw")},
        "model": model_name,
        "workdir": args.workdir,
        "data_dir": args.data_dir,
        "split": args.split,
        "seed": args.seed,
        "clips": {k: v for k, v in ev.windows_per_clip.items()},
        "diversity": {
            "units": "minmax",
            "top_k": min(DIVERSITY_TOP_K, args.samples),
            "methods": {name: {k: _finite_or_none(v) for k, v in r["diversity"].items() if k != "top_k"}
                        for name, r in results.items()},
        },
        "notes": {
            "minmax": ("per clip, each dimension min-max scaled over the observed frames of all its "
                       "evaluation windows (the papers' units)"),
            "motion_mmd": ("unbiased MMD^2, RBF kernel, features = per-step increments and keypoint speeds, "
                           "standardised by the real set; bandwidth = median heuristic on the real set; "
                           f"up to {MOTION_SAMPLES_PER_WINDOW} samples per window"),
            "energy_score": "fair (unbiased) energy score over the flattened M x D future, averaged over windows",
        },
    }
    if "teacher_forced" in results:
        out["notes"]["teacher_forced"] = TEACHER_FORCED_NOTE
    return out


def run(args: argparse.Namespace) -> dict:
    """Evaluate and write FILE.json, FILE.md, FILE.png; returns the JSON dict."""
    check_output_path(args.out, "--out")
    trained, ev = load_inputs(args)
    config, f = trained.config, trained.forecaster
    n, m = int(config.num_observed), int(config.num_predicted)
    rng = jax.random.PRNGKey(args.seed)
    methods = make_methods(trained, ev, n, m, args.samples, rng)
    # Plotted windows: evenly spread over the set (so over clips), deterministic.
    plot_idx = np.linspace(0, len(ev) - 1, min(args.plot_windows, len(ev))).round().astype(int)
    plot_idx = np.unique(plot_idx).tolist() if args.plot_windows else []
    results = evaluate_all(methods, ev, n, args, rng, plot_idx)

    model_name = str(config.model.get("name", f.name)) if "model" in config else f.name
    out = result_json(args, model_name, f"{n}-{m}", ev, results)
    base = os.path.splitext(args.out)[0]
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as fh:
        json.dump(out, fh, indent=2)
    with open(base + ".md", "w") as fh:
        fh.write(markdown_table(out))
    if plot_idx:
        title = (f"{model_name} {n}-{m}, raw units: context, truth, {min(PLOT_SAMPLES, args.samples)} of "
                 f"{args.samples} closed-loop samples, their mean, hold-last")
        plot_trajectories(base + ".png", ev, results["model"]["plot"], n, title)
    return out


def main(argv=None) -> None:
    """The command line: a bad argument or input exits with ``error: <one line>`` (status 1)."""
    args = parse_args(argv)
    try:
        out = run(args)
    except UsageError as e:
        raise fail(e) from None
    t = out["units"]["minmax"]
    print(
        f"{out['model']} {out['horizon']} on {out['num_windows']} windows (minmax units): "
        f"mae_mean {t['model']['mae_mean']:.4f} vs hold-last {t['hold_last']['mae_mean']:.4f}; "
        f"energy {t['model']['energy_score']:.4f} vs random walk {t['random_walk']['energy_score']:.4f}. "
        f"Wrote {args.out}"
    )


if __name__ == "__main__":
    main()
