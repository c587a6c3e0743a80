"""grain input pipelines for both trainers: the forecaster's augmented window batches and FOMM's
(source, driving) pairs, sharded per JAX process and resumable from a checkpoint.

The unit a pipeline hands out is one process's rows of one *global* batch, so a batch's meaning
does not depend on how many processes or workers there are:

- A :class:`WindowBatchSource` or :class:`PairBatchSource` is a grain random-access source whose
  record ``s`` is global batch ``s`` of the run (epoch after epoch). Every random choice of an
  epoch (order, frames, augmentation) is drawn in one fixed sequence from
  ``np.random.default_rng([seed, epoch])`` exactly as the in-process iterators
  (:func:`kpflow.data.windows.epoch_batches`, :class:`kpflow.data.video_pairs.PairBatches`) draw
  it, so the same seed gives the same batches whatever loads them.
- Process ``i`` of ``n`` builds only rows ``[i B/n, (i+1) B/n)`` of each global batch (the rows
  :func:`kpflow.parallel.process_slice` would keep): each process decodes a slice, and the slices
  concatenated in process order are the global batch.
- :class:`Loader` runs a source through a ``grain.DataLoader`` (``worker_count`` processes decode
  batches in parallel; batches still arrive in order) and saves its position as a small JSON dict
  (grain's own iterator state plus the next batch index) that the trainers keep in each orbax
  checkpoint's meta, so a resumed run continues with the exact next batch.

grain shards by record across processes (``ShardByJaxProcess``); that would give each process
different *batches*. Sharding rows inside the source instead keeps the global batch as it is.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
from absl import flags

from kpflow.data.video_pairs import PairBatches, PairPlan
from kpflow.data.windows import apply_augmentation, draw_augmentation

# absl's global flags, where grain defines its own (held here: tests swap flags.FLAGS for a fresh set).
_ABSL_FLAGS = flags.FLAGS
# The checkpoint meta key that holds a Loader's position (Loader.state()).
STATE_KEY = "data_iterator"
# Batches each grain worker prepares ahead, and batches read ahead in-process (worker_count 0).
WORKER_BUFFER = 2
READ_AHEAD = 2


def _process_rows(size: int, process_index: int, process_count: int) -> slice:
    """This process's rows of a global batch of ``size`` rows (as kpflow.parallel.process_slice)."""
    if process_count == 1:
        return slice(0, size)
    per = size // process_count
    return slice(process_index * per, (process_index + 1) * per)


def _check_process(process_index: int, process_count: int) -> None:
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index {process_index} is outside 0..{process_count - 1}")


def window_epoch_plan(num_windows: int, batch_size: int, seed: int, epoch: int, steps: int,
                      augmentations: Sequence[str] = ()) -> list[tuple[np.ndarray, np.ndarray]]:
    """The first ``steps`` batches of ``epoch`` as ``(window indices [b], flags [b, A])``, drawn as
    :func:`kpflow.data.windows.epoch_batches` draws them (a new permutation whenever one is used
    up; the whole set as one batch when it holds at most ``batch_size`` windows)."""
    if num_windows < 1:
        raise ValueError("no training windows: every clip is shorter than one window")
    rng = np.random.default_rng([seed, epoch])
    plan: list[tuple[np.ndarray, np.ndarray]] = []
    while len(plan) < steps:
        order = rng.permutation(num_windows)
        if num_windows <= batch_size:
            groups = [order]
        else:
            groups = [order[i: i + batch_size] for i in range(0, num_windows - batch_size + 1, batch_size)]
        for idx in groups:
            plan.append((idx, draw_augmentation(rng, len(idx), augmentations)))
            if len(plan) == steps:
                break
    return plan


class WindowBatchSource:
    """The forecaster's training stream as a grain source: record ``s`` is this process's rows of
    global batch ``s`` (``[b, N+M, D]`` float32), batch ``i`` of epoch ``first_epoch + s //
    steps_per_epoch``, shuffled and augmented exactly as :func:`kpflow.data.windows.epoch_batches`
    with the same seed."""

    def __init__(self, windows: np.ndarray, batch_size: int, seed: int, steps_per_epoch: int,
                 num_epochs: int, augmentations: Sequence[str] = (), first_epoch: int = 1,
                 process_index: int = 0, process_count: int = 1):
        if batch_size < 1 or steps_per_epoch < 1 or num_epochs < 0:
            raise ValueError(f"batch_size and steps_per_epoch must be >= 1 and num_epochs >= 0, got "
                             f"{batch_size}, {steps_per_epoch}, {num_epochs}")
        _check_process(process_index, process_count)
        self.windows = np.asarray(windows, np.float32)
        self.batch_size, self.seed = int(batch_size), int(seed)
        self.steps_per_epoch, self.num_epochs = int(steps_per_epoch), int(num_epochs)
        self.augmentations = tuple(augmentations)
        self.first_epoch = int(first_epoch)
        self.process_index, self.process_count = int(process_index), int(process_count)
        self._plans: dict[int, list] = {}

    def __len__(self) -> int:
        return self.num_epochs * self.steps_per_epoch

    def __repr__(self) -> str:  # grain keeps it in the iterator state; no addresses
        return (f"WindowBatchSource(windows={self.windows.shape}, batch_size={self.batch_size}, seed={self.seed}, "
                f"steps_per_epoch={self.steps_per_epoch}, augmentations={self.augmentations}, "
                f"first_epoch={self.first_epoch}, process={self.process_index}/{self.process_count})")

    def epoch_plan(self, epoch: int) -> list[tuple[np.ndarray, np.ndarray]]:
        if epoch not in self._plans:
            self._plans = {epoch: window_epoch_plan(len(self.windows), self.batch_size, self.seed, epoch,
                                                    self.steps_per_epoch, self.augmentations)}
        return self._plans[epoch]

    def __getitem__(self, s: int) -> np.ndarray:
        if not 0 <= s < len(self):
            raise IndexError(f"batch {s} out of range: the run has {len(self)} batches")
        epoch, i = divmod(int(s), self.steps_per_epoch)
        idx, flags = self.epoch_plan(self.first_epoch + epoch)[i]
        rows = _process_rows(len(idx), self.process_index, self.process_count)
        return apply_augmentation(self.windows[idx[rows]], self.augmentations, flags[rows])


class PairBatchSource:
    """FOMM's training stream as a grain source: record ``s`` is this process's rows of global batch
    ``s`` of ``batches`` (epoch ``s // steps_per_epoch``, from 0), ``{"source", "driving"}`` ``[b, H,
    W, 3]`` float32, the same pairs as ``batches.epoch`` yields. Epochs are planned in whichever
    process reads them (numbers only); the frames are decoded and augmented there too."""

    def __init__(self, batches: PairBatches, num_steps: int, process_index: int = 0, process_count: int = 1):
        _check_process(process_index, process_count)
        self.batches = batches
        self.num_steps = int(num_steps)
        self.process_index, self.process_count = int(process_index), int(process_count)
        self._plans: dict[int, list[list[PairPlan]]] = {}

    def __len__(self) -> int:
        return self.num_steps

    def __repr__(self) -> str:
        b = self.batches
        return (f"PairBatchSource({b.dataset.description!r}, {b.dataset.num_videos} videos, batch_size={b.batch_size}, "
                f"num_repeats={b.num_repeats}, seed={b.seed}, process={self.process_index}/{self.process_count})")

    def __getitem__(self, s: int) -> dict[str, np.ndarray]:
        if not 0 <= s < len(self):
            raise IndexError(f"batch {s} out of range: the run has {len(self)} batches")
        epoch, i = divmod(int(s), self.batches.steps_per_epoch)
        if epoch not in self._plans:
            self._plans = {epoch: self.batches.epoch_plan(epoch)}
        plans = self._plans[epoch][i]
        return self.batches.make_batch(plans[_process_rows(len(plans), self.process_index, self.process_count)])


class Loader:
    """Batches ``start, start+1, ...`` of a source, read by a ``grain.DataLoader`` with
    ``worker_count`` worker processes (0: read in this process), in order.

    ``state()`` is a JSON-able dict of the position; ``Loader.resume(source, state, worker_count)``
    continues from it with grain's own iterator state when the worker count is the one saved, else
    from the saved next batch index (grain refuses a state saved with another worker count).
    """

    def __init__(self, source, worker_count: int = 0, start: int = 0):
        if worker_count < 0:
            raise ValueError(f"worker_count must be >= 0, got {worker_count}")
        if not 0 <= start <= len(source):
            raise ValueError(f"start batch {start} is outside the run's {len(source)} batches")
        import grain

        if not _ABSL_FLAGS.is_parsed():  # grain reads its absl flags; argparse CLIs parse none
            _ABSL_FLAGS.mark_as_parsed()
        self.source, self.worker_count, self.start = source, int(worker_count), int(start)
        self.next_batch = self.start
        self._loader = grain.DataLoader(
            data_source=_Offset(source, self.start),
            sampler=grain.samplers.SequentialSampler(len(source) - self.start, grain.sharding.NoSharding()),
            worker_count=self.worker_count,
            worker_buffer_size=WORKER_BUFFER,
            read_options=grain.ReadOptions(num_threads=1, prefetch_buffer_size=READ_AHEAD),
        )
        self._iterator = iter(self._loader)

    @classmethod
    def resume(cls, source, state: dict[str, Any] | None, worker_count: int = 0) -> Loader:
        """A loader at the position ``state`` (a :meth:`state` dict; None: the first batch)."""
        if not state:
            return cls(source, worker_count)
        try:
            start, next_batch = int(state["start"]), int(state["next_batch"])
        except (KeyError, TypeError, ValueError):
            raise ValueError(f"the checkpoint's input-pipeline state is malformed: {str(state)[:200]}") from None
        if int(state.get("worker_count", -1)) != int(worker_count) or not state.get("grain"):
            return cls(source, worker_count, start=next_batch)
        loader = cls(source, worker_count, start=start)
        try:
            loader._iterator.set_state(state["grain"].encode())
        except ValueError:  # grain's check: the run's length or source changed (e.g. more epochs)
            return cls(source, worker_count, start=next_batch)
        loader.next_batch = next_batch
        return loader

    def __iter__(self) -> Iterator:
        return self

    def __next__(self):
        batch = next(self._iterator)
        self.next_batch += 1
        return batch

    def state(self) -> dict[str, Any]:
        """The position after the last batch handed out (JSON-able)."""
        return {"start": self.start, "next_batch": self.next_batch, "worker_count": self.worker_count,
                "grain": self._iterator.get_state().decode()}


class _Offset:
    """Records ``start, start+1, ...`` of ``source`` as ``0, 1, ...`` (a resumed run's sampler
    counts from 0)."""

    def __init__(self, source, start: int):
        self.source, self.start = source, int(start)

    def __len__(self) -> int:
        return len(self.source) - self.start

    def __getitem__(self, i: int):
        return self.source[self.start + int(i)]

    def __repr__(self) -> str:
        return f"{self.source!r}[{self.start}:]"

