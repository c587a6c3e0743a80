"""Orbax run-directory storage shared by the forecaster and FOMM trainers.

``DIR/checkpoints/`` keeps the latest ``keep`` training states and ``DIR/best/`` the best one;
each step holds the items ``variables`` (Flax collections), ``train`` (optimizer state, rng) and
``meta`` (JSON; :data:`BEST_STEP_KEY` names the step of the best state so far).

Training resumes bit-exactly from a step, so the state stored at a step *is* the state a run
reaches there. Two rules follow, kept here once for both trainers (see :class:`CheckpointStore`):
saving a step a directory already holds keeps the stored copy, and resuming drops ``best/``
states newer than the resumed step (they belong to a future the run lost).
"""

from __future__ import annotations

import json
import os
from typing import Any

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from absl import logging as absl_logging
from typing_extensions import Self

CHECKPOINT_DIR = "checkpoints"
BEST_DIR = "best"
# The meta key holding the step of the best state so far (a trainer writes it with every save).
BEST_STEP_KEY = "best_step"


def save_config(directory: str, config: ml_collections.ConfigDict, filename: str = "config.json") -> None:
    """``directory/filename``: the config as JSON."""
    os.makedirs(directory, exist_ok=True)
    write_json(os.path.join(directory, filename), json.loads(config.to_json_best_effort()))


def read_config(directory: str, filename: str, kind: str, hint: str) -> ml_collections.ConfigDict:
    """``directory/filename`` as a ConfigDict; a one-line FileNotFoundError naming ``kind`` and ``hint``."""
    path = os.path.join(directory, filename)
    if not os.path.isfile(path):
        what = "does not exist" if not os.path.isdir(directory) else f"holds no {kind} ({filename} missing)"
        raise FileNotFoundError(f"{directory!r} {what}; {hint}")
    with open(path) as f:
        return ml_collections.ConfigDict(json.load(f))


def write_json(path: str, obj: Any) -> None:
    """Write then rename, so a crash never leaves half a file."""
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=1)
    os.replace(tmp, path)


def abstract_like(tree: Any, sharding=None) -> Any:
    """Shape/dtype/sharding skeleton of ``tree`` (arrays or ShapeDtypeStructs), the orbax restore target."""
    sharding = sharding or jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(np.shape(x), x.dtype, sharding=sharding), tree)


class CheckpointStore:
    """The two orbax managers of a run directory: the latest ``keep`` states and the best one.

    Saves are asynchronous in a single process: :meth:`save` returns while orbax writes in the
    background, and every later save (and :meth:`close`) first waits for the previous one. In a
    multi-process job they are synchronous (see ``_manager``). Always ``close()`` (or use it as
    a context manager) before the process exits, or the last checkpoint may be incomplete.

    The latest and the best state are two saves, and a run may be killed between them, or lose
    its newest latest states (a deleted or unfinished step). A writable store therefore keeps
    the two directories consistent itself:

    - :meth:`save` skips a directory that already holds ``step`` (a finished run's final
      evaluation saves its restored step again);
    - restoring ``"latest"`` (resuming) deletes ``best/`` steps newer than the restored one, and
      writes the restored state to ``best/`` when its meta names it the best
      (:data:`BEST_STEP_KEY`) but ``best/`` lacks it (killed between the two saves).
    """

    def __init__(self, workdir: str, keep: int = 2, read_only: bool = False, hint: str = ""):
        self.workdir = workdir
        self.hint = hint
        self.keep = max(1, int(keep))
        self.read_only = read_only
        self._managers: dict[str, ocp.CheckpointManager] = {}

    def _manager(self, which: str) -> ocp.CheckpointManager:
        """The manager of ``which`` ("latest" or "best"), opened on first use."""
        if which not in ("latest", "best"):
            raise ValueError(f"which must be 'best' or 'latest', got {which!r}")
        if which not in self._managers:
            path = os.path.abspath(os.path.join(self.workdir, BEST_DIR if which == "best" else CHECKPOINT_DIR))
            if self.read_only and not os.path.isdir(path):
                raise FileNotFoundError(f"{path!r} does not exist: the run saved no {which} checkpoint" + (f"; {self.hint}" if self.hint else ""))
            if self.read_only:  # the settings orbax would otherwise override, with a warning each
                options = ocp.CheckpointManagerOptions(read_only=True, create=False, save_interval_steps=0, max_to_keep=None)
            else:
                # Several processes: synchronous saves. The two managers' asynchronous finalisations
                # each run coordination-service barriers under the same key, and when they overlap one
                # process fails ("Barrier ... is already ongoing") while the other waits for ever.
                options = ocp.CheckpointManagerOptions(
                    max_to_keep=self.keep if which == "latest" else 1, create=True,
                    enable_async_checkpointing=jax.process_count() == 1,
                )
            verbosity = absl_logging.get_verbosity()
            if self.read_only:  # orbax warns that a read-only directory is read-only
                absl_logging.set_verbosity(absl_logging.ERROR)
            try:
                self._managers[which] = ocp.CheckpointManager(
                    path, options=options, item_names=("variables", "train", "meta")
                )
            finally:
                absl_logging.set_verbosity(verbosity)
        return self._managers[which]

    def latest_step(self, which: str = "latest") -> int | None:
        return self._manager(which).latest_step()

    def save(self, step: int, variables: Any, train: Any, meta: dict, is_best: bool) -> None:
        """Save one state at ``step``; also as the best state when ``is_best``.

        ``variables``: Flax variables (all collections); ``train``: ``{"opt_state", "rng"}`` pytree
        (None for an inference-only directory); ``meta``: JSON-serialisable dict (step, epoch,
        scores, :data:`BEST_STEP_KEY`). A directory that already holds ``step`` keeps its copy.
        """
        items = {"variables": ocp.args.StandardSave(variables), "meta": ocp.args.JsonSave(meta)}
        if train is not None:
            items["train"] = ocp.args.StandardSave(train)
        self._save_new("latest", step, items)
        if is_best:
            self._save_new("best", step, {"variables": items["variables"], "meta": items["meta"]})

    def _save_new(self, which: str, step: int, items: dict) -> None:
        manager = self._manager(which)
        if step not in manager.all_steps():
            manager.save(step, args=ocp.args.Composite(**items), force=True)

    def restore(self, which: str, variables_target: Any, train_target: Any = None, sharding=None):
        """-> ``(variables, train or None, meta)`` of the newest step of ``which`` ("latest" or "best").

        ``*_target``: pytrees of arrays or ShapeDtypeStructs with the expected structure (e.g. from
        ``jax.eval_shape(forecaster.init, ...)``; None restores the saved tree as it is); restored leaves are ``jax.Array`` placed with
        ``sharding`` (default: this process's first device). ``train_target`` None skips the
        optimizer state. Raises FileNotFoundError (one line) if there is no checkpoint. Restoring
        ``"latest"`` in a writable store resumes a run: see the class docstring for what it repairs.
        """
        manager = self._manager(which)
        step = manager.latest_step()
        if step is None:
            raise FileNotFoundError(
                f"{os.path.join(self.workdir, BEST_DIR if which == 'best' else CHECKPOINT_DIR)!r} holds no "
                f"checkpoint yet (a run saves one after its first epoch)" + (f"; {self.hint}" if self.hint else "")
            )
        args = {
            "variables": ocp.args.StandardRestore(
                None if variables_target is None else abstract_like(variables_target, sharding)
            ),
            "meta": ocp.args.JsonRestore(),
        }
        if train_target is not None:
            args["train"] = ocp.args.StandardRestore(abstract_like(train_target, sharding))
        restored = manager.restore(step, args=ocp.args.Composite(**args))
        variables, meta = restored["variables"], dict(restored["meta"])
        if which == "latest" and not self.read_only:
            self._reconcile_best(step, variables, meta)
        return variables, (restored["train"] if train_target is not None else None), meta

    def _reconcile_best(self, step: int, variables: Any, meta: dict) -> None:
        """On resuming at ``step``: drop ``best/`` states of a lost future, restore a best state
        that a kill between the two saves of ``step`` kept out of ``best/``."""
        best = self._manager("best")
        for lost in [s for s in best.all_steps() if s > step]:
            best.delete(lost)
        if meta.get(BEST_STEP_KEY) == step and step not in best.all_steps():
            self._save_new("best", step, {"variables": ocp.args.StandardSave(variables), "meta": ocp.args.JsonSave(meta)})

    def wait(self) -> None:
        """Block until pending asynchronous saves are on disk."""
        for manager in self._managers.values():
            manager.wait_until_finished()

    def close(self) -> None:
        self.wait()
        for manager in self._managers.values():
            manager.close()
        self._managers = {}

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
