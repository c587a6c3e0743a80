"""Loading what the trainers wrote, for every command line: a FOMM directory, a forecaster workdir.

Each loader turns every failure a user can fix (missing folder, incomplete run, moved data, a
corrupt or foreign checkpoint) into one :class:`kpflow.cli.UsageError` line that names the flag.
"""

from __future__ import annotations

import os

from kpflow.cli import UsageError, one_line

_MAX_DETAIL = 200


def load_fomm(directory: str, flag: str = "--fomm", dtype=None):
    """``kpflow.fomm.load(directory)`` -> ``FOMM``; UsageError (one line) when it cannot be loaded."""
    import kpflow.fomm
    from kpflow.fomm.model import load_config

    if not os.path.isdir(directory):
        raise UsageError(
            f"{flag} {directory!r} does not exist (a FOMM directory from train.fomm or kpflow.fomm.convert)"
        )
    try:
        load_config(directory)  # cheap: a wrong directory fails before any weights are read
        return kpflow.fomm.load(directory) if dtype is None else kpflow.fomm.load(directory, dtype=dtype)
    except (FileNotFoundError, ValueError) as e:
        raise UsageError(one_line(e)) from None
    except Exception as e:  # noqa: BLE001 -- orbax / tensorstore failures: one line, not a traceback
        raise UsageError(
            f"cannot load FOMM from {directory!r} ({type(e).__name__}: {one_line(e)[:_MAX_DETAIL]})"
        ) from None


def load_forecaster(workdir: str, which: str = "best", data_dir: str | None = None, flag: str = "--workdir"):
    """``kpflow.checkpoint.load_trained`` with every failure one UsageError line naming ``flag``.

    The training split is reloaded from where the run's config says (baselines are fitted on it);
    when that data has moved and ``data_dir`` is given, ``data_dir`` is tried in its place.
    """
    from kpflow import checkpoint

    if not os.path.isdir(workdir):
        raise UsageError(f"{flag} {workdir!r} does not exist (pass the folder a train.forecaster run wrote)")
    try:
        return checkpoint.load_trained(workdir, which=which)
    except FileNotFoundError as first:
        if data_dir is None:
            raise UsageError(one_line(first)) from None
        try:  # the training data moved: maybe the evaluation folder holds it
            return checkpoint.load_trained(workdir, which=which, data_dir=data_dir)
        except (FileNotFoundError, ValueError, TypeError):
            raise UsageError(one_line(first)) from None
    except (ValueError, KeyError) as e:
        raise UsageError(f"cannot load the forecaster in {workdir!r}: {one_line(e)}") from None
    except Exception as e:  # noqa: BLE001 -- orbax / tensorstore failures
        raise UsageError(
            f"cannot load the forecaster in {workdir!r} ({type(e).__name__}: {one_line(e)[:_MAX_DETAIL]})"
        ) from None


def check_forecaster_fits(trained, dim: int, num_observed: int, horizon: int, flag: str = "--forecaster") -> None:
    """UsageError unless ``trained`` forecasts ``dim`` numbers per frame at ``num_observed``-``horizon``
    (a model whose module has ``any_horizon`` may forecast any horizon)."""
    f = trained.forecaster
    if f.dim != dim:
        raise UsageError(
            f"{flag} {trained.workdir!r} forecasts {f.dim} numbers per frame; this FOMM has {dim // 6} keypoints "
            f"({dim} numbers): train the forecaster on keypoints extracted with this FOMM (python -m eval.extract_keypoints)"
        )
    if f.num_observed != num_observed or (f.horizon != horizon and not type(f.module).any_horizon):
        raise UsageError(
            f"{flag} {trained.workdir!r} was trained for {f.num_observed}-{f.horizon}; pass --horizon "
            f"{f.num_observed}-{f.horizon} or a forecaster trained for {num_observed}-{horizon}"
        )
