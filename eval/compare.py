"""Compare several forecast evaluations in one markdown table.

    python -m eval.compare runs/vrnn/eval.json runs/grunf/eval.json [--units minmax] [--out table.md]

Each argument is a JSON written by ``python -m eval.forecast``, or a folder holding such JSONs (its
own ``*.json`` files, else those in its ``eval/`` subfolder). Rows: every file's model (and its
teacher-forced row, labelled as the authors' protocol), then the baselines once per horizon (a
baseline is repeated only where its numbers differ, i.e. other data or samples). Beside the scores,
the project's acceptance ratios, each against the baselines of the row's own file:

- ``mae_mean/hold_last`` = mae_mean / hold_last.mae_mean (a point forecast should be < 1),
- ``mae_best/hold_last`` = mae_best / hold_last.mae_mean,
- ``energy/random_walk`` = energy_score / random_walk.energy_score (< 1: a better distribution).
"""

from __future__ import annotations

import glob
import json
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


def main(argv=None) -> None:
    """The command line: a bad argument or input exits with ``error: <one line>`` (status 1)."""
    p = OneLineArgumentParser(prog="python -m eval.compare",
                                description="Compare forecast evaluation JSONs in one markdown table.")
    p.add_argument("runs", nargs="+", help="evaluation JSONs from python -m eval.forecast, or folders holding them")
    p.add_argument("--units", choices=("minmax", "raw"), default="minmax")
    p.add_argument("--out", default="", help="also write the table to this markdown file")
    a = p.parse_args(argv)
    try:
        if a.out:
            check_output_path(a.out, "--out")
        text = markdown([(f, load(f, a.units)) for f in expand(a.runs)], a.units)
    except UsageError as e:
        raise fail(e) from None
    print(text, end="")
    if a.out:
        os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
        with open(a.out, "w") as f:
            f.write(text)


if __name__ == "__main__":
    main()
