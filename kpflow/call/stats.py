"""What a call measures: the loopback reference hook, and the receiver's statistics file.

:class:`LoopbackReference` is a side channel between the two ends of a call that run in one process
(tests, ``--loopback``): the sender records, for every frame it reads, when it read it, the keypoints
its detector found and the datagram it sent; the receiver looks them up to score itself (keypoint
error against the detector, capture-to-display latency on one clock, which lost packets it missed).
It is no part of the protocol: a receiver in another process has no reference and reports those
numbers as null.
"""

from __future__ import annotations

import dataclasses
import json
import os
import threading
from pathlib import Path

import numpy as np


@dataclasses.dataclass(frozen=True)
class ReferenceFrame:
    """What the sender knew of frame ``index``: ``capture_time`` (``time.monotonic()`` when it was
    read), ``keypoints [D]`` (the detector's), ``datagram`` (sent for it, before any impairment;
    None when the codec sent nothing) and ``expected [D]`` (the frame the sender's codec expects
    the receiver to show when every packet arrives)."""

    index: int
    capture_time: float
    keypoints: np.ndarray
    datagram: bytes | None
    expected: np.ndarray


class LoopbackReference:
    """Frames recorded by a sender, looked up (and forgotten) by a receiver in the same process."""

    def __init__(self):
        self._frames: dict[int, ReferenceFrame] = {}
        self._lock = threading.Lock()

    def record(self, frame: ReferenceFrame) -> None:
        with self._lock:
            self._frames[frame.index] = frame

    def pop(self, index: int) -> ReferenceFrame | None:
        """The record of frame ``index``, removed (a long call keeps only the frames in flight)."""
        with self._lock:
            return self._frames.pop(index, None)

    def __len__(self) -> int:
        return len(self._frames)


def latency_summary(latencies_s: list[float]) -> dict | None:
    """``{"p50", "p95", "max"}`` in milliseconds, or None when nothing was measured."""
    if not latencies_s:
        return None
    ms = np.asarray(latencies_s, np.float64) * 1000.0
    return {"p50": float(np.percentile(ms, 50)), "p95": float(np.percentile(ms, 95)), "max": float(ms.max())}


def mean_or_none(total: float, count: int) -> float | None:
    return float(total / count) if count else None


def write_stats(path: str | os.PathLike, stats: dict) -> Path:
    """Write ``stats`` as indented JSON (via a temporary file, so a reader never sees half of it)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(stats, indent=2, sort_keys=True) + "\n")
    os.replace(partial, path)
    return path
