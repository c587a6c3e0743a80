"""Training run directories: config, data split, orbax checkpoints, and loading a trained forecaster.

Layout of a run directory ``DIR`` (written by ``python -m train.forecaster``)::

    DIR/config.json     the full config (ml_collections ConfigDict as JSON)
    DIR/split.json      {"train": [clip names], "val": [clip names], "dim": D, "data": {config.data}}
    DIR/checkpoints/    orbax CheckpointManager, the latest ``keep`` training states, one per epoch
    DIR/best/           orbax CheckpointManager holding the single state with the best validation score
    DIR/metrics.jsonl   one JSON line per epoch (kpflow.training.runlog)
    DIR/loss.png        training loss and validation scores per epoch
    DIR/.lock           while a run trains here: its pid, host and start (kpflow.workdir)

Each step directory also holds ``kpflow_manifest.json``, the size and sha256 of its files, written
once orbax committed the step and checked before every restore (:mod:`kpflow.run_store`): a
damaged checkpoint is a one-line error naming the step directory, never weights loaded silently.

Each checkpoint step holds three items: ``variables`` (all Flax collections: ``params``, the
``scaler`` collection with the causal input scaler, ``batch_stats`` if any), ``train``
(``opt_state`` and ``rng``; only in ``checkpoints/``, so ``best/`` stays small) and ``meta`` (JSON:
step, epoch, best score so far, the epoch's validation scores).

Evaluation code uses :func:`load_trained`::

    trained = load_trained("runs/vrnn_vox", which="best")
    samples = trained.forecaster.sample(trained.variables, context, 6, rng, num_samples=100)
"""

from __future__ import annotations

import dataclasses
import json
import os

import jax
import jax.numpy as jnp
import ml_collections

from kpflow import forecast, run_store
from kpflow.data import ClipSet, load_clips, load_splits
from kpflow.run_store import BEST_DIR, CHECKPOINT_DIR, write_json  # noqa: F401  (re-exported)
from kpflow.run_store import CheckpointStore as _Store

CONFIG_FILE = "config.json"
SPLIT_FILE = "split.json"
PLOT_FILE = "loss.png"

TRAIN_HINT = "train one with `python -m train.forecaster --config configs/<model>_<dataset>.py --workdir DIR`"


# -- config and split files -----------------------------------------------------------------------


def build_forecaster(config: ml_collections.ConfigDict, dim: int) -> forecast.Forecaster:
    """The forecaster a config describes, for series of ``dim`` numbers per frame.

    ``config.model.name`` picks the registry entry; every other field of ``config.model`` is a
    hyper-parameter. Raises ValueError for an unknown model or hyper-parameter.
    """
    hparams = dict(config.model)
    name = hparams.pop("name", None)
    if not name:
        raise ValueError("config.model.name is not set; pick one of: " + ", ".join(forecast.MODELS))
    return forecast.create(
        name, dim=int(dim), num_observed=int(config.num_observed), horizon=int(config.num_predicted), **hparams
    )


def save_config(workdir: str, config: ml_collections.ConfigDict) -> None:
    run_store.save_config(workdir, config, CONFIG_FILE)


def load_config(workdir: str) -> ml_collections.ConfigDict:
    """``DIR/config.json`` as a ConfigDict. FileNotFoundError (one line) if the run does not exist,
    ValueError if ``DIR`` holds a FOMM model instead."""
    config = run_store.read_config(workdir, CONFIG_FILE, "training run", TRAIN_HINT)
    if "model" in config and "kp_detector" in config.model:
        raise ValueError(f"{workdir!r} holds a FOMM model, not a forecaster run; {TRAIN_HINT}")
    return config


def save_split(workdir: str, train: ClipSet, val: ClipSet, data_config) -> None:
    os.makedirs(workdir, exist_ok=True)
    data = json.loads(ml_collections.ConfigDict(dict(data_config)).to_json_best_effort())
    write_json(
        os.path.join(workdir, SPLIT_FILE), {"train": train.names, "val": val.names, "dim": train.dim, "data": data}
    )


def load_split(workdir: str) -> dict:
    path = os.path.join(workdir, SPLIT_FILE)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path!r} is missing: the run directory is incomplete; {TRAIN_HINT}")
    with open(path) as f:
        return json.load(f)


# -- checkpoints ----------------------------------------------------------------------------------


class CheckpointStore(_Store):
    """:class:`kpflow.run_store.CheckpointStore` whose errors say how to train a forecaster."""

    def __init__(self, workdir: str, keep: int = 2, read_only: bool = False):
        super().__init__(workdir, keep=keep, read_only=read_only, hint=TRAIN_HINT)


# -- loading a trained forecaster -----------------------------------------------------------------


def _training_clips(data_config, names: list[str], workdir: str) -> ClipSet:
    """The training clips ``names`` of a run, reloaded through ``load_splits(data_config)``.

    When the data changed since training (a folder with more clips, say), the split is rebuilt from
    the names saved in ``split.json`` instead, as long as the data holds every one of them.
    """
    try:
        train, _ = load_splits(data_config)
        if train.names == names:
            return train
        clips = load_clips(data_config)
    except FileNotFoundError:
        raise FileNotFoundError(
            f"the training data of {workdir!r} is not at {data_config.get('dir')!r} any more: pass the "
            f"keypoint folder (load_trained(..., data_dir=PATH), --data_dir) or fix data.dir in "
            f"{os.path.join(workdir, CONFIG_FILE)}"
        ) from None
    except ValueError:  # the split recipe no longer applies to this data (e.g. no held-out speaker)
        clips = load_clips(data_config)
    missing = sorted(set(names) - set(clips.names))
    if missing:
        raise ValueError(
            f"the data at {data_config.get('dir')!r} lacks {len(missing)} training clip(s) of {workdir!r} "
            f"(e.g. {missing[0]!r}); pass the folder it was trained on"
        )
    return clips.subset(names)


@dataclasses.dataclass
class Trained:
    """A trained forecaster restored from a run directory (see :func:`load_trained`)."""

    forecaster: forecast.Forecaster
    variables: dict  # Flax variables: params, scaler (loc/scale/step_scale [D]), batch_stats if any
    config: ml_collections.ConfigDict
    train_clips: ClipSet  # the training split, reloaded from config.data
    val_names: list[str]
    step: int
    workdir: str
    meta: dict = dataclasses.field(default_factory=dict)  # epoch, validation scores of this state


def load_trained(workdir: str, which: str = "best", data_dir: str | None = None) -> Trained:
    """Restore the forecaster trained in ``workdir``.

    Args:
      workdir: a run directory written by ``python -m train.forecaster``.
      which: ``"best"`` (the state with the best validation score) or ``"latest"`` (the newest).
      data_dir: the keypoint folder to use instead of the saved ``config.data.dir`` (a moved
        dataset). Ignored for synthetic data, which is regenerated from the saved config.

    Returns:
      :class:`Trained` with the forecaster rebuilt through ``kpflow.forecast.create`` from the saved
      config, its variables (``jax.Array`` leaves, including the ``scaler`` collection), the config,
      the training ClipSet, the validation clip names and the checkpoint's step.

    Raises:
      FileNotFoundError: (one line) no such run directory, no checkpoint yet, or the training data
        is no longer where the config says.
      ValueError: (one line) ``which`` is neither "best" nor "latest", or the data no longer holds
        the saved training clips.
    """
    if which not in ("best", "latest"):
        raise ValueError(f"which must be 'best' or 'latest', got {which!r}")
    config = load_config(workdir)
    split = load_split(workdir)

    data_config = ml_collections.ConfigDict(config.data.to_dict())
    if data_dir:
        data_config.dir = data_dir
    train_clips = _training_clips(data_config, split["train"], workdir)
    dim = int(split.get("dim", train_clips.dim))
    if train_clips.dim != dim:
        raise ValueError(
            f"the data at {data_config.get('dir')!r} has {train_clips.dim} numbers per frame, the run of "
            f"{workdir!r} was trained on {dim}"
        )
    forecaster = build_forecaster(config, dim)
    length = int(config.num_observed) + int(config.num_predicted)
    target = jax.eval_shape(forecaster.init, jax.random.key(0), jnp.zeros((1, length, dim), jnp.float32))

    with CheckpointStore(workdir, read_only=True) as store:
        variables, _, meta = store.restore(which, target)
    variables = jax.tree.map(jnp.asarray, variables)
    return Trained(
        forecaster=forecaster,
        variables=variables,
        config=config,
        train_clips=train_clips,
        val_names=list(split["val"]),
        step=int(meta["step"]),
        workdir=workdir,
        meta=meta,
    )
