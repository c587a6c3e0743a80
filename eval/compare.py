"""Compare several forecast evaluations in one markdown table, or aggregate a runs tree.

    python -m eval.compare runs/vrnn/eval.json runs/grunf/eval.json [--units minmax] [--out table.md]
    python -m eval.compare --runs runs/compare [--units minmax] [--out DIR]

Each argument is a JSON written by ``python -m eval.forecast``, or a folder holding such JSONs (its
own ``*.json`` files, else those in its ``eval/`` subfolder). Rows: every file's model (and its
teacher-forced row, labelled as the authors' protocol), then the baselines once per horizon (a
baseline is repeated only where its numbers differ, i.e. other data or samples). Beside the scores,
the project's acceptance ratios, each against the baselines of the row's own file:

- ``mae_mean/hold_last`` = mae_mean / hold_last.mae_mean (a point forecast should be < 1),
- ``mae_best/hold_last`` = mae_best / hold_last.mae_mean,
- ``energy/random_walk`` = energy_score / random_walk.energy_score (< 1: a better distribution).

``--runs ROOT`` reads the tree written by ``scripts/compare_models.py``:
``ROOT/<model>/<horizon>/<rotation>/seed<k>/test.json`` (S samples per window) and
``test_single.json`` (one sample per window). Per model and horizon, each score is averaged over the
rotations of a seed, then its mean and standard deviation over seeds are reported (:func:`aggregate`);
the baselines hold-last and random walk are read from the same files (their rows average every
model's file of a (rotation, seed), which hold the same baseline). Columns (:data:`RUN_COLUMNS`):
single-sample MAE (the papers' point forecast: ``mae_mean`` of ``test_single.json``), mean-of-samples,
best-of-S and top-20-of-S MAE, APD, the papers' APD/MAE (per clip over the top 20, averaged over
clips), the energy score and motion MMD, all in ``--units`` (the diversity columns are always
minmax). ``--out DIR`` writes ``DIR/compare.md``, ``DIR/compare.json`` and ``DIR/mae_apd.png`` (MAE of
the mean of samples against APD, one point per model and seed, one panel per horizon).
"""

from __future__ import annotations

import glob
import json
import math
import os

from kpflow.cli import OneLineArgumentParser, UsageError, fail
from kpflow.data.windows import parse_horizon
from kpflow.io import check_output_path

SCORES = ("mae_mean", "mae_median", "mae_best", "apd", "energy_score", "motion_mmd")
RATIOS = ("mae_mean/hold_last", "mae_best/hold_last", "energy/random_walk")
BASELINES = ("hold_last", "linear", "random_walk")
# Sort key of a horizon that is not N-M: after every real one.
UNKNOWN_HORIZON_KEY = (10**9, 0)


def _is_evaluation(path: str) -> bool:
    try:
        with open(path) as f:
            d = json.load(f)
    except (OSError, ValueError):
        return False
    return isinstance(d, dict) and "units" in d and "horizon" in d


def expand(paths: list[str]) -> list[str]:
    """Files as given; folders replaced by the evaluation JSONs they hold (sorted)."""
    files = []
    for p in paths:
        if os.path.isdir(p):
            found = [f for f in sorted(glob.glob(os.path.join(p, "*.json"))) if _is_evaluation(f)]
            found = found or [f for f in sorted(glob.glob(os.path.join(p, "eval", "*.json"))) if _is_evaluation(f)]
            if not found:
                raise UsageError(f"{p!r} holds no evaluation JSON (write one with python -m eval.forecast)")
            files += found
        elif os.path.isfile(p):
            files.append(p)
        else:
            raise UsageError(f"{p!r} does not exist")
    return files


def load(path: str, units: str) -> dict:
    """One evaluation JSON, checked for what the table needs."""
    try:
        with open(path) as f:
            d = json.load(f)
    except (OSError, ValueError) as e:
        raise UsageError(f"{path}: not a readable JSON ({e})") from None
    if not isinstance(d, dict) or "units" not in d or "horizon" not in d:
        raise UsageError(f"{path}: not an evaluation JSON from python -m eval.forecast (no 'units' / 'horizon')")
    if units not in d["units"]:
        raise UsageError(f"{path}: has no {units!r} units (has {sorted(d['units'])})")
    table = d["units"][units]
    missing = [m for m in ("model", "hold_last", "random_walk") if m not in table]
    if missing:
        raise UsageError(f"{path}: table lacks {missing}")
    return d


def _ratios(row: dict, table: dict) -> list[float]:
    hl, rw = table["hold_last"]["mae_mean"], table["random_walk"]["energy_score"]
    div = lambda a, b: a / b if b else float("nan")
    return [div(row["mae_mean"], hl), div(row["mae_best"], hl), div(row["energy_score"], rw)]


def _cells(row: dict, table: dict) -> list[str]:
    return [f"{row[k]:.4g}" for k in SCORES] + [f"{x:.3f}" for x in _ratios(row, table)]


def _horizon_key(h: str):
    try:
        return parse_horizon(h)
    except ValueError:
        return UNKNOWN_HORIZON_KEY


def build_rows(runs: list[tuple[str, dict]], units: str) -> list[list[str]]:
    """Table rows: per horizon, models first, then baselines once (repeated only if their numbers differ)."""
    rows = []
    for horizon in sorted({d["horizon"] for _, d in runs}, key=_horizon_key):
        group = [(p, d) for p, d in runs if d["horizon"] == horizon]
        seen_baselines = set()
        model_rows, baseline_rows = [], []
        for path, d in group:
            table = d["units"][units]
            source = os.path.relpath(path)
            common = [horizon, str(d.get("num_windows", "")), str(d.get("samples", ""))]
            label = str(d.get("model", "model"))
            names = [("model", label)]
            if "teacher_forced" in table:
                names.append(("teacher_forced", f"{label} teacher_forced (authors' protocol, not a forecast)"))
            for key, text in names:
                r = table[key]
                model_rows.append([text, source, *common, *_cells(r, table)])
            for name in BASELINES:
                if name not in table:
                    continue
                r = table[name]
                signature = (name,) + tuple(round(r[k], 10) for k in SCORES)
                if signature in seen_baselines:
                    continue
                seen_baselines.add(signature)
                baseline_rows.append([name, source, *common, *_cells(r, table)])
        rows += model_rows + baseline_rows
    return rows


def markdown(runs: list[tuple[str, dict]], units: str) -> str:
    head = ["method", "file", "horizon", "windows", "samples"] + list(SCORES) + list(RATIOS)
    lines = [
        (f"Forecast evaluations, {units} units. Ratios are against the baselines of the same file: "
         "mae_mean/hold_last and mae_best/hold_last divide by hold-last's mae_mean; energy/random_walk "
         "divides by the random walk's energy score. Lower is better except apd."),
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    lines += ["| " + " | ".join(r) + " |" for r in build_rows(runs, units)]
    return "\n".join(lines) + "\n"


# -- a runs tree (scripts/compare_models.py) ----------------------------------------------------

RUN_EVAL_FILE = "test.json"  # S samples per test window
RUN_SINGLE_FILE = "test_single.json"  # one sample per test window
RUN_BASELINES = ("hold_last", "random_walk")
# (key, heading): the columns of the runs table.
RUN_COLUMNS = (
    ("mae_single", "single-sample MAE"),
    ("mae_mean", "mean-of-samples MAE"),
    ("mae_best", "best-of-S MAE"),
    ("mae_top20", "top-20-of-S MAE"),
    ("apd", "APD"),
    ("apd_mae", "APD/MAE"),
    ("energy_score", "energy score"),
    ("motion_mmd", "motion MMD"),
)
MODEL_ORDER = ("gru", "vae", "nf", "vrnn", "grunf")


def _number(x) -> float:
    return float("nan") if x is None else float(x)


def run_scores(full: dict, single: dict | None, method: str, units: str) -> dict[str, float]:
    """One run's RUN_COLUMNS for ``method`` (``model`` or a baseline) from its two evaluation JSONs."""
    row = full["units"][units][method]
    div = full.get("diversity", {}).get("methods", {}).get(method, {})
    single_row = (single or {}).get("units", {}).get(units, {}).get(method, {})
    return {
        "mae_single": _number(single_row.get("mae_mean")),
        "mae_mean": row["mae_mean"],
        "mae_best": row["mae_best"],
        "mae_top20": _number(div.get("mae")),
        "apd": row["apd"],
        "apd_mae": _number(div.get("ratio_mean")),
        "energy_score": row["energy_score"],
        "motion_mmd": row["motion_mmd"],
    }


def read_runs(root: str, units: str) -> list[dict]:
    """Every finished run under ``root``: ``{model, horizon, rotation, seed, path, full, single}``."""
    if not os.path.isdir(root):
        raise UsageError(f"--runs {root!r} is not a folder")
    runs = []
    for path in sorted(glob.glob(os.path.join(root, "*", "*", "*", "seed*", RUN_EVAL_FILE))):
        seed_dir = os.path.dirname(path)
        rotation_dir = os.path.dirname(seed_dir)
        model = os.path.basename(os.path.dirname(os.path.dirname(rotation_dir)))
        try:
            seed = int(os.path.basename(seed_dir).removeprefix("seed"))
        except ValueError:
            continue
        full = load(path, units)
        single_path = os.path.join(seed_dir, RUN_SINGLE_FILE)
        single = load(single_path, units) if os.path.isfile(single_path) else None
        runs.append({"model": model, "horizon": full["horizon"], "rotation": os.path.basename(rotation_dir),
                     "seed": seed, "path": path, "full": full, "single": single})
    if not runs:
        raise UsageError(f"--runs {root!r} holds no runs (<model>/<horizon>/<rotation>/seed<k>/{RUN_EVAL_FILE}; "
                         "write them with scripts/compare_models.py)")
    return runs


def _mean(xs) -> float:
    xs = list(xs)
    return sum(xs) / len(xs) if xs else float("nan")


def _sd(xs) -> float:
    """Sample standard deviation (nan with fewer than two values)."""
    xs = list(xs)
    if len(xs) < 2:
        return float("nan")
    m = _mean(xs)
    return math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1))


def aggregate(runs: list[dict], units: str) -> dict:
    """``{horizon: {method: {"seeds": {seed: {col: mean over rotations}}, "rotations": {seed: [...]},
    "mean": {col: mean over seeds}, "sd": {col: sd over seeds}}}}``; methods are the models, then the
    baselines (per (rotation, seed) the mean over the models' files, which hold the same baseline)."""
    # (horizon, method, seed, rotation) -> list of score dicts
    cells: dict[tuple, list[dict]] = {}
    for r in runs:
        for method, label in [("model", r["model"])] + [(b, b) for b in RUN_BASELINES]:
            if method in r["full"]["units"][units]:
                key = (r["horizon"], label, r["seed"], r["rotation"])
                cells.setdefault(key, []).append(run_scores(r["full"], r["single"], method, units))
    cols = [k for k, _ in RUN_COLUMNS]
    out: dict = {}
    for (horizon, label, seed, rotation), rows in sorted(cells.items(), key=lambda kv: (str(kv[0][2]), kv[0][3])):
        m = out.setdefault(horizon, {}).setdefault(label, {"seeds": {}, "rotations": {}, "per_rotation": {}})
        m["per_rotation"].setdefault(str(seed), {})[rotation] = {c: _mean(row[c] for row in rows) for c in cols}
    for horizon, methods in out.items():
        for m in methods.values():
            for seed, by_rot in m["per_rotation"].items():
                m["rotations"][seed] = sorted(by_rot)
                m["seeds"][seed] = {c: _mean(v[c] for v in by_rot.values()) for c in cols}
            m["mean"] = {c: _mean(v[c] for v in m["seeds"].values()) for c in cols}
            m["sd"] = {c: _sd(v[c] for v in m["seeds"].values()) for c in cols}
        for label, m in methods.items():
            if label not in RUN_BASELINES:
                m["ratios"] = baseline_ratios(m, methods)
    return {h: dict(sorted(ms.items(), key=lambda kv: _method_key(kv[0]))) for h, ms in
            sorted(out.items(), key=lambda kv: _horizon_key(kv[0]))}


# (name, model's column, baseline, baseline's column): the comparison's bars.
RUN_RATIOS = (
    ("mae_single/hold_last", "mae_single", "hold_last", "mae_mean"),
    ("mae_mean/hold_last", "mae_mean", "hold_last", "mae_mean"),
    ("mae_best/hold_last", "mae_best", "hold_last", "mae_mean"),
    ("energy/random_walk", "energy_score", "random_walk", "energy_score"),
)


def baseline_ratios(m: dict, methods: dict) -> dict[str, float]:
    """A model's RUN_RATIOS: its mean over its (seed, rotation) cells over the baseline's mean over the
    same cells (so a model with runs missing is compared on the speakers it was tested on)."""
    out = {}
    for name, col, base, base_col in RUN_RATIOS:
        ours, theirs = [], []
        for seed, by_rot in m["per_rotation"].items():
            for rot, v in by_rot.items():
                b = methods.get(base, {}).get("per_rotation", {}).get(seed, {}).get(rot)
                if b is not None:
                    ours.append(v[col])
                    theirs.append(b[base_col])
        out[name] = _mean(ours) / _mean(theirs) if ours and _mean(theirs) else float("nan")
    return out


def _method_key(label: str):
    if label in RUN_BASELINES:
        return (2, RUN_BASELINES.index(label), label)
    return (0, MODEL_ORDER.index(label), label) if label in MODEL_ORDER else (1, 0, label)


def _cell(mean: float, sd: float) -> str:
    if not math.isfinite(mean):
        return "n/a"
    return f"{mean:.4g}" + (f" ± {sd:.2g}" if math.isfinite(sd) else "")


def runs_markdown(agg: dict, units: str) -> str:
    lines = [
        (f"Forecasters on the test speakers, {units} units (top-20 MAE and APD/MAE: minmax). Each cell: "
         "the mean over seeds of the mean over rotations, ± the standard deviation over seeds. "
         "Lower is better except APD and APD/MAE."),
    ]
    head = ["method", "seeds", "rotations per seed"] + [h for _, h in RUN_COLUMNS]
    for horizon, methods in agg.items():
        lines += ["", f"**{horizon}**", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for label, m in methods.items():
            counts = sorted({len(r) for r in m["rotations"].values()})
            cells = [label, str(len(m["seeds"])), "/".join(map(str, counts))]
            cells += [_cell(m["mean"][c], m["sd"][c]) for c, _ in RUN_COLUMNS]
            lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Against the baselines, on the same rotations and seeds (below 1 beats the baseline):"]
    head = ["horizon", "model"] + [name.replace("/", " / ") for name, *_ in RUN_RATIOS]
    lines += ["", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for horizon, methods in agg.items():
        for label, m in methods.items():
            if "ratios" in m:
                cells = [horizon, label] + [_cell(m["ratios"][name], float("nan")) for name, *_ in RUN_RATIOS]
                lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _json_safe(x):
    if isinstance(x, dict):
        return {k: _json_safe(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_json_safe(v) for v in x]
    return None if isinstance(x, float) and not math.isfinite(x) else x


def plot_mae_apd(agg: dict, path: str, units: str) -> None:
    """Mean-of-samples MAE against APD: one point per model and seed, one panel per horizon."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(agg), figsize=(5 * len(agg), 4.2), squeeze=False, layout="constrained")
    for ax, (horizon, methods) in zip(axes[0], agg.items()):
        for i, (label, m) in enumerate(methods.items()):
            x = [v["apd"] for v in m["seeds"].values()]
            y = [v["mae_mean"] for v in m["seeds"].values()]
            marker = "s" if label in RUN_BASELINES else "o"
            ax.scatter(x, y, label=label, marker=marker, color=f"C{i}")
        ax.set_title(f"{horizon}, test speakers ({units} units)", fontsize=9)
        ax.set_xlabel("APD (diversity)")
        ax.set_ylabel("MAE of the mean of samples")
        ax.legend(fontsize=7)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def compare_runs(root: str, units: str, out_dir: str = "") -> str:
    """The runs table (markdown); with ``out_dir`` also compare.md, compare.json and mae_apd.png there."""
    if out_dir:
        check_output_path(out_dir, "--out", folder=True)
    runs = read_runs(root, units)
    agg = aggregate(runs, units)
    text = runs_markdown(agg, units)
    if out_dir:
        os.makedirs(out_dir, exist_ok=True)
        with open(os.path.join(out_dir, "compare.md"), "w") as f:
            f.write(text)
        with open(os.path.join(out_dir, "compare.json"), "w") as f:
            json.dump(_json_safe({"units": units, "root": root, "columns": dict(RUN_COLUMNS),
                                  "runs": sorted(os.path.relpath(r["path"], root) for r in runs),
                                  "horizons": agg}), f, indent=2)
        plot_mae_apd(agg, os.path.join(out_dir, "mae_apd.png"), units)
    return text


def main(argv=None) -> None:
    """The command line: a bad argument or input exits with ``error: <one line>`` (status 1)."""
    p = OneLineArgumentParser(prog="python -m eval.compare",
                              description="Compare forecast evaluation JSONs in one markdown table.")
    p.add_argument("files", nargs="*", metavar="runs",
                   help="evaluation JSONs from python -m eval.forecast, or folders holding them")
    p.add_argument("--runs", dest="root", default="",
                   help=("instead of files: the ROOT written by scripts/compare_models.py, "
                         "aggregated over rotations and seeds"))
    p.add_argument("--units", choices=("minmax", "raw"), default="minmax")
    p.add_argument("--out", default="",
                   help=("also write the table to this markdown file "
                         "(with --runs: a folder for compare.md, .json, .png)"))
    a = p.parse_args(argv)
    if bool(a.files) == bool(a.root):
        p.error("give evaluation JSONs (or folders) or --runs ROOT, not both" if a.files
                else "give evaluation JSONs (or folders holding them), or --runs ROOT")
    try:
        if a.root:
            print(compare_runs(a.root, a.units, a.out), end="")
            return
        if a.out:
            check_output_path(a.out, "--out")
        text = markdown([(f, load(f, a.units)) for f in expand(a.files)], a.units)
    except UsageError as e:
        raise fail(e) from None
    print(text, end="")
    if a.out:
        os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
        with open(a.out, "w") as f:
            f.write(text)

if __name__ == "__main__":
    main()
