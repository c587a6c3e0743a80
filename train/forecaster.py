"""Train a keypoint forecaster.

    python -m train.forecaster --config configs/grunf_vox.py:cpu,horizon=12-12 --workdir runs/grunf_vox \
        --config.data.dir=../shared/data/vox_keypoints [--config.train.num_epochs=3 ...]

Running the same command again resumes from the latest checkpoint. The training itself is
:func:`kpflow.training.forecaster.train_and_evaluate`; this file only parses flags.
"""

import os

from absl import app

from kpflow import checkpoint, parallel
from kpflow.cli import define_run_flags, fail, parse_absl_flags, run_flags
from kpflow.training import forecaster, runlog


def define_flags() -> None:
    """--config and --workdir, defined when the CLI runs (importing this module defines none)."""
    define_run_flags(
        "forecaster config file, e.g. configs/vrnn_vox.py:cpu",
        "run directory: checkpoints, metrics.jsonl, loss.png (resumed if present)",
        lock_config=True,
    )


def main(argv: list[str]) -> None:
    config, workdir = run_flags(argv, "configs/vrnn_vox.py:cpu", kind="forecaster")
    parallel.initialize_distributed()
    try:
        best = forecaster.train_and_evaluate(config, workdir)
    except (ValueError, OSError, runlog.TrainingDiverged) as e:
        raise fail(e) from None
    if parallel.is_main_process() and best:
        scores = ", ".join(f"{k} {v:.4f}" for k, v in best["val"].items())
        print(
            f"best checkpoint: {os.path.join(workdir, checkpoint.BEST_DIR)} (epoch {best['epoch']}, "
            f"step {best['step']}; val {config.train.select_metric} {best['score']:.4f}) | {scores}"
        )
    parallel.finish_distributed()


if __name__ == "__main__":
    define_flags()
    app.run(main, flags_parser=parse_absl_flags)
