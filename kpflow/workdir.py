"""A run directory's safety: one training per workdir at a time, and files that are never half written.

**The lock.** Both trainers hold ``WORKDIR/.lock`` while they run (:func:`run_lock`): an advisory
``fcntl.flock`` on that file, which names its owner inside (pid, host, start time). A second run on
the same workdir is refused with one line naming the owner. The kernel drops a flock when its
process ends, however it ends (``kill -9`` included), so a ``.lock`` file left behind by a dead run
is not a lock: the next run takes it over with a note (:class:`RunWarning`). A run that ends
normally, or with an error, removes the file. In a multi-process job (``jax.distributed``) process
0 holds the lock and the other processes learn whether it got it, so they all go on or all stop.

What it cannot guard:

- object-store workdirs (``gs://...``, ``s3://...``): there is no file to lock; such a path is
  left unlocked with a :class:`RunWarning`;
- NFS (or another network filesystem) without working ``flock``: where ``flock`` fails the run
  goes on unlocked with a :class:`RunWarning`, and where it silently locks only on this host,
  two hosts both "hold" it;
- two hosts sharing a directory without lock support in general, and any writer that does not
  take the lock (a script of your own writing into the workdir);
- Windows (no ``fcntl``): unlocked, with a :class:`RunWarning`.

**Atomic files.** :func:`write_atomically` writes a whole file beside its destination and renames
it over it, so a kill leaves the old file or the new one, never half of one. It guards against a
killed process, not against power loss (nothing is fsynced).
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import json
import os
import socket
import warnings
from collections.abc import Iterator

from typing_extensions import Self

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None

LOCK_FILE = ".lock"
# Errors of flock on a filesystem that does not support it (rather than "someone holds it").
_NO_LOCK_SUPPORT = {errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL}


class RunWarning(UserWarning):
    """Something about a run directory worth knowing that does not stop the run (a stale lock taken
    over, a checkpoint without a digest manifest, a torn last metrics line dropped)."""


class WorkdirInUse(OSError):
    """Another live run holds the workdir's lock (the message names it and says how to proceed)."""


def write_atomically(path: str, data: str | bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file beside it and ``os.replace``: readers (and
    a later resume) see the old content or the new, never a torn file. The folder must exist."""
    tmp = f"{path}.{os.getpid()}.tmp"
    try:
        with open(tmp, "wb" if isinstance(data, bytes) else "w") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise


def check_workdir_path(workdir: str, flag: str = "--workdir") -> None:
    """Raise NotADirectoryError (one line) when ``workdir`` is a file or lies under one."""
    path = os.path.abspath(workdir)
    if os.path.exists(path) and not os.path.isdir(path):
        raise NotADirectoryError(f"{flag} {workdir!r} is a file, not a folder; pass a folder for the run (it is created if missing)")
    parent = os.path.dirname(path)
    while not os.path.exists(parent) and os.path.dirname(parent) != parent:
        parent = os.path.dirname(parent)
    if os.path.exists(parent) and not os.path.isdir(parent):
        raise NotADirectoryError(f"{flag} {workdir!r} lies under the file {parent!r}; pass a folder path for the run")


def is_object_store(path: str) -> bool:
    """``gs://bucket/x``-style paths, which no filesystem lock covers."""
    return "://" in path


def _owner_text(info: dict) -> str:
    return f"pid {info.get('pid', '?')} on {info.get('host', '?')}, since {info.get('started', '?')}"


class WorkdirLock:
    """The advisory lock ``WORKDIR/.lock`` (see the module docstring); a context manager.

    ``acquire()`` creates the workdir if needed, then takes the lock or raises
    :class:`WorkdirInUse` (one line naming the owner: pid, host, since when). ``release()`` removes
    the file, and the workdir too when this lock created it and nothing else was written there
    (a run that failed on its config leaves no empty folder behind).
    """

    def __init__(self, workdir: str, flag: str = "--workdir"):
        self.workdir = workdir
        self.flag = flag
        self.path = os.path.join(workdir, LOCK_FILE)
        self._fd: int | None = None
        self._created = False

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> Self:
        if self.held:
            return self
        if is_object_store(self.workdir):
            warnings.warn(f"{self.flag} {self.workdir!r} is an object store: no lock guards it against a second run", RunWarning, stacklevel=2)
            return self
        check_workdir_path(self.workdir, self.flag)
        if not os.path.isdir(self.workdir):
            try:
                os.makedirs(self.workdir)
                self._created = True
            except FileExistsError:
                pass
            except OSError as e:
                raise OSError(f"cannot create {self.flag} {self.workdir!r}: {e.strerror}") from None
        if fcntl is None:
            warnings.warn("no fcntl on this system: the workdir is not locked against a second run", RunWarning, stacklevel=2)
            return self
        for _ in range(10):  # retried only while a releasing owner removes the file under us
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                info = _read_info(fd)
                os.close(fd)
                raise WorkdirInUse(
                    f"{self.flag} {self.workdir!r} is in use by another run ("
                    + (_owner_text(info) if info else "owner still starting")
                    + f"; lock {self.path}): wait for it to finish or stop it, or pass another {self.flag}"
                ) from None
            except OSError as e:
                os.close(fd)
                if e.errno in _NO_LOCK_SUPPORT:
                    warnings.warn(f"cannot lock {self.path} ({e.strerror}: a filesystem without flock?): "
                                  "nothing stops a second run on this workdir", RunWarning, stacklevel=2)
                    return self
                raise
            if _same_file(fd, self.path):
                break
            os.close(fd)  # the previous owner removed the file between our open and flock
        else:
            raise WorkdirInUse(f"{self.flag} {self.workdir!r}: could not take {self.path} (it keeps being replaced); is another run starting?")
        stale = _read_info(fd)
        if stale:
            here = stale.get("host") == socket.gethostname()
            warnings.warn(
                f"{self.flag} {self.workdir!r}: took over the lock left by {_owner_text(stale)}, which ended without "
                "releasing it" + ("" if here else " (on another host: if that host shares this folder without "
                                  "working flock, make sure that run has stopped)"),
                RunWarning, stacklevel=2,
            )
        info = {"pid": os.getpid(), "host": socket.gethostname(),
                "started": datetime.datetime.now().astimezone().isoformat(timespec="seconds")}
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(info) + "\n").encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        """Remove the lock file (while still holding it, so nobody locks a file about to vanish), then unlock."""
        if self._fd is None:
            return
        with contextlib.suppress(OSError):
            os.remove(self.path)
        os.close(self._fd)
        self._fd = None
        if self._created:
            with contextlib.suppress(OSError):
                os.rmdir(self.workdir)  # only succeeds when the run wrote nothing there
            self._created = False

    def __enter__(self) -> Self:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def _read_info(fd: int) -> dict:
    """The owner record in an open lock file; empty when there is none (or only part of one)."""
    try:
        text = os.pread(fd, 4096, 0).decode(errors="replace")
        info = json.loads(text) if text.strip() else {}
    except (OSError, ValueError):
        return {}
    return info if isinstance(info, dict) else {}


def _same_file(fd: int, path: str) -> bool:
    try:
        a, b = os.fstat(fd), os.stat(path)
    except FileNotFoundError:
        return False
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


@contextlib.contextmanager
def run_lock(workdir: str, flag: str = "--workdir") -> Iterator[WorkdirLock | None]:
    """Hold ``workdir``'s lock for a training run (the ``with`` body), released however it ends.

    In a multi-process JAX job process 0 takes the lock, then the processes share whether each
    could start: a refused job stops on every process (the others raise :class:`WorkdirInUse`
    pointing at the failed one's output) instead of waiting for a peer that left. An empty ``workdir`` is not locked (the
    trainer's own check reports it).
    """
    if not workdir:
        yield None
        return
    import jax

    lock = WorkdirLock(workdir, flag)
    error: OSError | None = None
    try:
        if jax.process_index() == 0:
            lock.acquire()
        else:
            check_workdir_path(workdir, flag)
    except OSError as e:
        error = e
    if jax.process_count() > 1:  # every process learns whether all of them may go on
        import numpy as np
        from jax.experimental import multihost_utils

        ok = np.asarray(multihost_utils.process_allgather(np.int32(error is None)))
        if not ok.all() and error is None:
            failed = ", ".join(str(i) for i in np.flatnonzero(ok == 0))
            error = WorkdirInUse(f"{flag} {workdir!r}: process {failed} of the job could not start the run (its output says why)")
    if error is not None:
        lock.release()
        raise error
    try:
        yield lock
    finally:
        lock.release()
