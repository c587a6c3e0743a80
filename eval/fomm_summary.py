"""One line on a trained FOMM's test reconstruction against copying the source frame.

    python -m eval.fomm_summary WORKDIR

Reads the last evaluation record of ``WORKDIR/metrics.jsonl`` (written by ``python -m train.fomm``:
mean absolute pixel error over the first ``train.eval_frames`` frames of the first
``train.eval_clips`` test clips, each driven from its first frame; the last record is the state
of the ``latest`` checkpoint, which ``kpflow.fomm.load`` loads) and prints, e.g.::

    FOMM test reconstruction (first 60 frames of up to 4 test clips, source = first frame), step 340:
    mean absolute error 0.0332 vs 0.0518 copying the source frame -> FOMM 36% lower (better)

on one line. ``make demo`` ends with it. Numbers in [0, 1] pixel units; nothing is recomputed.
"""

from __future__ import annotations

import json
import os

from kpflow.cli import OneLineArgumentParser, fail
from kpflow.training import runlog


def summary_line(workdir: str) -> str:
    """The line for ``workdir``; a one-line ValueError when it holds no evaluation."""
    records = runlog.read_records(os.path.join(workdir, runlog.METRICS_FILE))
    evals = [r for r in records if r.get("kind") == "eval" and r.get("copy_source_l1") is not None]
    if not evals:
        raise ValueError(f"{workdir}: no test evaluation in {runlog.METRICS_FILE} (train with test/ clips)")
    last = evals[-1]
    fomm, copy = float(last["test_l1"]), float(last["copy_source_l1"])
    what = ""
    config_path = os.path.join(workdir, "config.json")
    if os.path.isfile(config_path):
        with open(config_path) as f:
            t = json.load(f).get("train", {})
        what = f"first {t.get('eval_frames')} frames of up to {t.get('eval_clips')} test clips, "
    change = (copy - fomm) / copy * 100 if copy > 0 else 0.0
    verdict = (f"FOMM {change:.0f}% lower (better)" if fomm < copy
               else f"FOMM {-change:.0f}% higher (worse: it has not learned the motion)")
    return (f"FOMM test reconstruction ({what}source = first frame), step {last['step']}: mean absolute "
            f"error {fomm:.4f} vs {copy:.4f} copying the source frame -> {verdict}")


def main(argv: list[str] | None = None) -> None:
    p = OneLineArgumentParser(prog="python -m eval.fomm_summary", description=__doc__.splitlines()[0])
    p.add_argument("workdir", help="a FOMM run folder (python -m train.fomm --workdir)")
    a = p.parse_args(argv)
    try:
        print(summary_line(a.workdir))
    except (OSError, ValueError) as e:
        raise fail(e) from None


if __name__ == "__main__":
    main()
