"""One line on a trained FOMM's test reconstruction against copying the source frame.

    python -m eval.fomm_summary WORKDIR

Reads the last evaluation record of ``WORKDIR/metrics.jsonl`` (written by ``python -m train.fomm``:
mean absolute pixel error over the first ``train.eval_frames`` frames of the first
``train.eval_clips`` test clips, each driven from its first frame; the last record is the state
of the ``latest`` checkpoint, which ``kpflow.fomm.load`` loads) and prints, e.g.::

    FOMM test reconstruction (first 60 frames of up to 4 test clips, source = first frame), step 340:
    mean absolute error 0.0332 vs 0.0518 copying the source frame -> FOMM 36% lower (better)

on one line (``kpflow.training.fomm.reconstruction_summary``). ``make demo`` ends with it. Numbers
in [0, 1] pixel units; nothing is recomputed.
"""

from __future__ import annotations

from kpflow.cli import OneLineArgumentParser, fail


def main(argv: list[str] | None = None) -> None:
    from kpflow.training.fomm import reconstruction_summary

    p = OneLineArgumentParser(prog="python -m eval.fomm_summary", description=__doc__.splitlines()[0])
    p.add_argument("workdir", help="a FOMM run folder (python -m train.fomm --workdir)")
    a = p.parse_args(argv)
    try:
        print(reconstruction_summary(a.workdir))
    except (OSError, ValueError) as e:
        raise fail(e) from None


if __name__ == "__main__":
    main()
