"""Orbax run-directory storage shared by the forecaster and FOMM trainers.

``DIR/checkpoints/`` keeps the latest ``keep`` training states and ``DIR/best/`` the best one;
each step holds the items ``variables`` (Flax collections), ``train`` (optimizer state, rng) and
``meta`` (JSON; :data:`BEST_STEP_KEY` names the step of the best state so far).

Training resumes bit-exactly from a step, so the state stored at a step *is* the state a run
reaches there. Two rules follow, kept here once for both trainers (see :class:`CheckpointStore`):
saving a step a directory already holds keeps the stored copy, and resuming drops ``best/``
states newer than the resumed step (they belong to a future the run lost).

Every step a writable store saves is sealed: once orbax has committed it, a background thread
writes ``<step>/kpflow_manifest.json`` (:data:`MANIFEST_FILE`: the size and sha256 of every file
of the step directory). :meth:`CheckpointStore.restore` checks the step against it before loading,
so a flipped bit or a truncated file is a one-line :class:`CorruptCheckpoint` naming the step
directory and what to do, for evaluation and resume alike. A step without a manifest (written
before kpflow recorded them, or killed in the milliseconds between commit and seal) still loads,
with a :class:`kpflow.workdir.RunWarning` once per directory.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import threading
import warnings
from typing import Any

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from absl import logging as absl_logging
from typing_extensions import Self

from kpflow.cli import one_line
from kpflow.workdir import RunWarning, write_atomically

CHECKPOINT_DIR = "checkpoints"
BEST_DIR = "best"
# The meta key holding the step of the best state so far (a trainer writes it with every save).
BEST_STEP_KEY = "best_step"
# In each step directory: {"format": 1, "algorithm": "sha256", "files": {relative path: {"bytes", "sha256"}}}.
MANIFEST_FILE = "kpflow_manifest.json"
MANIFEST_FORMAT = 1
# Step directories already warned about lacking a manifest (one warning per directory and process).
_UNVERIFIED_WARNED: set[str] = set()
# Storage-library errors that mean damaged files (tensorstore's start with a status code such as
# ``DATA_LOSS:``), not a wrong restore target.
_STATUS_CODE = re.compile(r"[A-Z][A-Z_]+: ")
# Characters of a storage library's error kept in a one-line message (its one line can be pages).
_MAX_DETAIL = 200


class CorruptCheckpoint(ValueError):
    """A checkpoint step whose files are damaged (one line: the step directory, what is wrong, what to do)."""


def save_config(directory: str, config: ml_collections.ConfigDict, filename: str = "config.json") -> None:
    """``directory/filename``: the config as JSON."""
    os.makedirs(directory, exist_ok=True)
    write_json(os.path.join(directory, filename), json.loads(config.to_json_best_effort()))


def read_config(directory: str, filename: str, kind: str, hint: str) -> ml_collections.ConfigDict:
    """``directory/filename`` as a ConfigDict; a one-line FileNotFoundError naming ``kind`` and ``hint``
    when it is missing, a ValueError naming the file when it is not a JSON object."""
    path = os.path.join(directory, filename)
    if not os.path.isfile(path):
        what = "does not exist" if not os.path.isdir(directory) else f"holds no {kind} ({filename} missing)"
        raise FileNotFoundError(f"{directory!r} {what}; {hint}")
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:  # a truncated or overwritten file
        raise ValueError(f"cannot load {kind} {directory!r}: {path} is damaged ({type(e).__name__}: {e}); "
                         f"restore the file or {hint}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path} holds a JSON {type(data).__name__}, not a config; is {directory!r} a {kind}?")  # noqa: TRY004
    return ml_collections.ConfigDict(data)


def write_json(path: str, obj: Any) -> None:
    """Write then rename (:func:`kpflow.workdir.write_atomically`), so a crash never leaves half a file."""
    write_atomically(path, json.dumps(obj, indent=1))


# -- step manifests ---------------------------------------------------------------------------------


def _file_digest(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _step_files(step_dir: str) -> list[str]:
    """Every file under ``step_dir`` (relative, sorted) except the manifest and its temporaries."""
    out = []
    for root, _, files in os.walk(step_dir):
        for name in files:
            if not name.startswith(MANIFEST_FILE):
                out.append(os.path.relpath(os.path.join(root, name), step_dir))
    return sorted(out)


def write_manifest(step_dir: str) -> None:
    """Seal a committed step directory: the size and sha256 of each of its files, in :data:`MANIFEST_FILE`."""
    files = {}
    for rel in _step_files(step_dir):
        path = os.path.join(step_dir, rel)
        files[rel] = {"bytes": os.path.getsize(path), "sha256": _file_digest(path)}
    write_atomically(os.path.join(step_dir, MANIFEST_FILE),
                     json.dumps({"format": MANIFEST_FORMAT, "algorithm": "sha256", "files": files}, indent=0))


def verify_step(step_dir: str) -> bool:
    """Check ``step_dir`` against its manifest: True when it matches, False when it has none (an
    older checkpoint); a one-line :class:`CorruptCheckpoint` (without the advice, see
    :meth:`CheckpointStore.restore`) naming the first damaged file otherwise."""
    path = os.path.join(step_dir, MANIFEST_FILE)
    if not os.path.isfile(path):
        return False
    try:
        with open(path) as f:
            files = json.load(f)["files"]
        entries = [(rel, int(e["bytes"]), str(e["sha256"])) for rel, e in files.items()]
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        raise CorruptCheckpoint(f"its manifest {MANIFEST_FILE} is damaged") from None
    for rel, size, digest in entries:
        file = os.path.join(step_dir, rel)
        if not os.path.isfile(file):
            raise CorruptCheckpoint(f"{rel} is missing")
        actual = os.path.getsize(file)
        if actual != size:
            raise CorruptCheckpoint(f"{rel} has {actual} bytes, {size} when saved" + (" (truncated)" if actual < size else ""))
        if _file_digest(file) != digest:
            raise CorruptCheckpoint(f"{rel} differs from the saved file (sha256 mismatch)")
    return True


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

    Each saved step is sealed with a manifest once committed, and each restored step is checked
    against its manifest (see the module docstring).
    """

    def __init__(self, workdir: str, keep: int = 2, read_only: bool = False, hint: str = ""):
        self.workdir = workdir
        self.hint = hint
        self.keep = max(1, int(keep))
        self.read_only = read_only
        self._managers: dict[str, ocp.CheckpointManager] = {}
        # The thread sealing the last step each manager saved (it waits for orbax's commit).
        self._sealers: dict[str, threading.Thread] = {}
        self._seal_errors: list[str] = []

    def directory(self, which: str) -> str:
        """The folder of ``which`` ("latest": ``checkpoints/``, "best": ``best/``), absolute."""
        return os.path.abspath(os.path.join(self.workdir, BEST_DIR if which == "best" else CHECKPOINT_DIR))

    def step_dir(self, which: str, step: int) -> str:
        """The folder orbax writes ``step`` of ``which`` to."""
        return os.path.join(self.directory(which), str(step))

    def _manager(self, which: str) -> ocp.CheckpointManager:
        """The manager of ``which`` ("latest" or "best"), opened on first use."""
        if which not in ("latest", "best"):
            raise ValueError(f"which must be 'best' or 'latest', got {which!r}")
        if which not in self._managers:
            path = self.directory(which)
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
            # The previous step's seal must end first: this save's commit may delete that step.
            self._join_sealer(which)
            manager.save(step, args=ocp.args.Composite(**items), force=True)
            self._seal_after_commit(which, step)

    def _seal_after_commit(self, which: str, step: int) -> None:
        """Write ``step``'s manifest once orbax has committed it: in a background thread after an
        asynchronous save, right away after a synchronous one (a multi-process job, where process
        0 writes it)."""
        if jax.process_index() != 0:
            return
        manager, step_dir = self._manager(which), self.step_dir(which, step)

        def seal() -> None:
            try:
                manager.wait_until_finished()  # orbax lets other threads wait on its commit
                write_manifest(step_dir)
            except FileNotFoundError:  # the step is gone already (deleted, or its save failed)
                pass
            except Exception as e:  # noqa: BLE001 -- a failed seal must not stop training; warned in wait()
                self._seal_errors.append(f"{step_dir}: {type(e).__name__}: {e}")

        if jax.process_count() > 1:
            seal()
            return
        thread = threading.Thread(target=seal, name=f"kpflow-seal-{which}-{step}", daemon=True)
        thread.start()
        self._sealers[which] = thread

    def _join_sealer(self, which: str) -> None:
        thread = self._sealers.pop(which, None)
        if thread is not None:
            thread.join()

    def _damaged(self, which: str, step_dir: str, detail: str) -> CorruptCheckpoint:
        """The one-line error of a damaged step, with what to do about it."""
        if which == "latest":
            todo = "delete that folder to resume from the checkpoint before it, or restore it from a backup"
        else:
            todo = "load the 'latest' checkpoint instead, or restore that folder from a backup"
        return CorruptCheckpoint(f"checkpoint {step_dir!r} is damaged ({detail}): {todo}")

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
        step_dir = self.step_dir(which, step)
        self._join_sealer(which)  # this store may have just saved the step
        try:
            verified = verify_step(step_dir)
        except CorruptCheckpoint as e:
            raise self._damaged(which, step_dir, str(e)) from None
        if not verified and self.directory(which) not in _UNVERIFIED_WARNED:
            _UNVERIFIED_WARNED.add(self.directory(which))
            warnings.warn(f"{step_dir!r} has no {MANIFEST_FILE} (saved before kpflow recorded checkpoint digests): "
                          "loading it without checking its files", RunWarning, stacklevel=2)
        try:
            restored = manager.restore(step, args=ocp.args.Composite(**args))
        except (json.JSONDecodeError, UnicodeDecodeError, FileNotFoundError) as e:
            raise self._damaged(which, step_dir, f"{type(e).__name__}: {one_line(e)[:_MAX_DETAIL]}") from None
        except ValueError as e:
            if not _STATUS_CODE.match(str(e)):
                raise
            raise self._damaged(which, step_dir, one_line(e)[:_MAX_DETAIL]) from None
        variables, meta = restored["variables"], dict(restored["meta"])
        if which == "latest" and not self.read_only:
            self._reconcile_best(step, variables, meta)
        return variables, (restored["train"] if train_target is not None else None), meta

    def _reconcile_best(self, step: int, variables: Any, meta: dict) -> None:
        """On resuming at ``step``: drop ``best/`` states of a lost future, restore a best state
        that a kill between the two saves of ``step`` kept out of ``best/``."""
        best = self._manager("best")
        self._join_sealer("best")
        for lost in [s for s in best.all_steps() if s > step]:
            best.delete(lost)
        if meta.get(BEST_STEP_KEY) == step and step not in best.all_steps():
            self._save_new("best", step, {"variables": ocp.args.StandardSave(variables), "meta": ocp.args.JsonSave(meta)})

    def wait(self) -> None:
        """Block until pending asynchronous saves are on disk and sealed."""
        for manager in self._managers.values():
            manager.wait_until_finished()
        for which in list(self._sealers):
            self._join_sealer(which)
        if self._seal_errors:
            warnings.warn(f"could not write the manifest of {len(self._seal_errors)} checkpoint(s) (they load "
                          f"unverified): {self._seal_errors[0]}", RunWarning, stacklevel=2)
            self._seal_errors = []

    def close(self) -> None:
        self.wait()
        for manager in self._managers.values():
            manager.close()
        self._managers = {}

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
