"""Stage-1 training of FOMM (keypoint detector + dense motion + generator [+ discriminator]).

    python -m train.fomm --config configs/fomm_vox.py --workdir runs/fomm_vox \
        --config.data.dir=data/vox --config.train.vgg19_weights=vgg19-dcbb9e9d.pth
    python -m train.fomm --config configs/fomm_vox.py:tiny --workdir runs/fomm_tiny \
        --config.data.dir=../shared/data/vox_videos

Running the same command again resumes. A video of ``config.data.dir`` that cannot be read is
skipped and reported (one line each, and a count before training starts); the run trains on the
others and ends with one ``error:`` line and exit status 1, so a pipeline notices.

The training itself (losses, schedule, outputs) is :func:`kpflow.training.fomm.train_and_evaluate`;
this file only parses flags.
"""

from absl import app

from kpflow import parallel
from kpflow.cli import define_run_flags, fail, parse_absl_flags, run_flags
from kpflow.training import fomm


def define_flags() -> None:
    """--config and --workdir, defined when the CLI runs (importing this module defines none)."""
    define_run_flags(
        "FOMM config, e.g. configs/fomm_vox.py or configs/fomm_vox.py:tiny",
        "run directory (checkpoints, metrics, samples); re-run to resume",
    )


def main(argv: list[str]) -> None:
    config, workdir = run_flags(argv, "configs/fomm_vox.py:tiny", kind="fomm")
    parallel.initialize_distributed()
    try:
        result = fomm.train_and_evaluate(config, workdir)
    except (ValueError, OSError, FloatingPointError, ImportError) as e:  # TrainingDiverged is a FloatingPointError
        raise fail(e) from None
    parallel.finish_distributed()
    skipped = result.get("skipped_videos")
    if skipped:  # reported one by one at the start; the status tells a pipeline
        raise fail(f"{len(skipped)} videos of {config.data.dir} could not be read and were skipped "
                   f"(e.g. {skipped[0]}); the run trained without them")


if __name__ == "__main__":
    define_flags()
    app.run(main, flags_parser=parse_absl_flags)
