"""Loading what the trainers wrote, for every command line: a FOMM directory, a forecaster workdir.

Each loader turns every failure a user can fix (missing folder, incomplete run, moved data, a
corrupt or foreign checkpoint) into one :class:`kpflow.cli.UsageError` line that names the flag.
Checkpoints are checked against the digests the trainers recorded when saving them
(:mod:`kpflow.run_store`), so a flipped byte is reported as damage, not loaded as weights.
"""

from __future__ import annotations

import json
import os
import re

from kpflow.cli import UsageError, one_line

# Characters of a storage library's error kept in the one-line message (its one line can be pages).
_MAX_DETAIL = 200
# ValueErrors from decoding a damaged file, and tensorstore's (they start with a status code such
# as ``DATA_LOSS:``): unlike kpflow's own, their message says nothing a user can act on.
_UNDECODABLE = (json.JSONDecodeError, UnicodeDecodeError)
_STATUS_CODE = re.compile(r"[A-Z][A-Z_]+: ")


def _usage_error(what: str, error: Exception) -> UsageError:
    """kpflow's own FileNotFoundError or ValueError as it is (one actionable line naming the folder);
    anything else, such as a damaged checkpoint, as ``cannot load <what> (<type>: <start of message>)``;
    a checkpoint that fails its digest check as ``cannot load <what>: <which step, what to do>``."""
    from kpflow.run_store import CorruptCheckpoint

    if isinstance(error, CorruptCheckpoint):
        return UsageError(f"cannot load {what}: {one_line(error)}")
    if isinstance(error, FileNotFoundError | ValueError) and not (
        isinstance(error, _UNDECODABLE) or _STATUS_CODE.match(str(error))
    ):
        return UsageError(one_line(error))
    return UsageError(f"cannot load {what} ({type(error).__name__}: {one_line(error)[:_MAX_DETAIL]})")


def load_fomm_config(directory: str, flag: str = "--fomm"):
    """The config of a FOMM directory, read without its weights (a cheap first check of ``flag``);
    UsageError (one line) when the folder is missing or holds no FOMM."""
    from kpflow.fomm.model import load_config

    if not os.path.isdir(directory):
        raise UsageError(
            f"{flag} {directory!r} does not exist (a FOMM directory from train.fomm or kpflow.fomm.convert)"
        )
    try:
        return load_config(directory)
    except Exception as e:  # noqa: BLE001 -- a damaged config.json: one line, not a traceback
        raise _usage_error(f"FOMM from {directory!r}", e) from None


def load_fomm(directory: str, flag: str = "--fomm", dtype=None):
    """``kpflow.fomm.load(directory)`` -> ``FOMM``; UsageError (one line) when it cannot be loaded."""
    import kpflow.fomm

    load_fomm_config(directory, flag)  # a wrong directory fails before any weights are read
    try:
        return kpflow.fomm.load(directory) if dtype is None else kpflow.fomm.load(directory, dtype=dtype)
    except Exception as e:  # noqa: BLE001 -- orbax / tensorstore failures: one line, not a traceback
        raise _usage_error(f"FOMM from {directory!r}", e) from None


def load_forecaster(workdir: str, which: str = "best", data_dir: str | None = None, flag: str = "--workdir"):
    """``kpflow.checkpoint.load_trained`` with every failure one UsageError line naming ``flag``.

    The training split is reloaded from where the run's config says (baselines are fitted on it);
    when that data has moved and ``data_dir`` is given, ``data_dir`` is tried in its place.
    """
    from kpflow import checkpoint

    if not os.path.isdir(workdir):
        raise UsageError(f"{flag} {workdir!r} does not exist (pass the folder a train.forecaster run wrote)")
    what = f"the forecaster in {workdir!r}"
    try:
        return checkpoint.load_trained(workdir, which=which)
    except FileNotFoundError as first:
        if data_dir is None:
            raise _usage_error(what, first) from None
        try:  # the training data moved: maybe the evaluation folder holds it
            return checkpoint.load_trained(workdir, which=which, data_dir=data_dir)
        except (FileNotFoundError, ValueError, TypeError):
            raise _usage_error(what, first) from None
    except Exception as e:  # noqa: BLE001 -- orbax / tensorstore failures: one line, not a traceback
        raise _usage_error(what, e) from None


def check_forecaster_fits(trained, dim: int, num_observed: int, horizon: int, flag: str = "--forecaster") -> None:
    """UsageError unless ``trained`` forecasts ``dim`` numbers per frame at ``num_observed``-``horizon``
    (a model whose module has ``any_horizon`` may forecast any horizon)."""
    from kpflow.keypoints import FEATURES_PER_KEYPOINT

    f = trained.forecaster
    if f.dim != dim:
        raise UsageError(
            f"{flag} {trained.workdir!r} forecasts {f.dim} numbers per frame; this FOMM has {dim // FEATURES_PER_KEYPOINT} keypoints "
            f"({dim} numbers): train the forecaster on keypoints extracted with this FOMM (python -m eval.extract_keypoints)"
        )
    if f.num_observed != num_observed or (f.horizon != horizon and not type(f.module).any_horizon):
        raise UsageError(
            f"{flag} {trained.workdir!r} was trained for {f.num_observed}-{f.horizon}; pass --horizon "
            f"{f.num_observed}-{f.horizon} or a forecaster trained for {num_observed}-{horizon}"
        )
