"""One run log for both trainers, in the manner of the original FOMM's ``logger.py``: the training
loops report numbers and pictures, this module writes them.

- ``WORKDIR/metrics.jsonl`` (:class:`MetricsLog`): one JSON record per line, each holding its
  ``step``. The file is rewritten whole through :func:`kpflow.workdir.write_atomically` (a
  temporary file and ``os.replace``, the one way every run-log file is written), so a kill never
  leaves half a line; a resumed run keeps only the records at or before the step of the
  checkpoint it restored (later ones belong to a future it lost), one per ``(kind, step)`` (a
  step logged again replaces its record), and drops with a :class:`kpflow.workdir.RunWarning` a
  torn last line of a file written otherwise.
- Curves (:class:`Line`, :class:`Panel`, :func:`plot_panels`): named series against step or
  epoch, one panel per quantity, saved as one PNG.
- Sample grids (:func:`draw_keypoints`, :func:`image_grid`, :func:`save_image`): rows of images,
  enlarged when small, as PNG files.
- :class:`TrainingDiverged` (:func:`check_finite`): the one error of a loss that became NaN or
  infinite; :func:`check_same_run`: whether a config may continue the run saved in a workdir.
"""

from __future__ import annotations

import dataclasses
import io
import json
import math
import os
import warnings
from collections.abc import Iterable, Mapping, Sequence

import ml_collections
import numpy as np

from kpflow.workdir import RunWarning, write_atomically

METRICS_FILE = "metrics.jsonl"
# A curve plot is redrawn when this many seconds passed since the last drawing (a drawing costs
# about a second), and always at the end of a run.
PLOT_INTERVAL_S = 30.0
PLOT_DPI = 90
# Sample images smaller than this many pixels are enlarged (nearest neighbour) until they are not.
SAMPLE_MIN_SIZE = 128
KEYPOINT_COLOURS = np.array([[230, 25, 75], [60, 180, 75], [255, 225, 25], [0, 130, 200], [245, 130, 48],
                             [145, 30, 180], [70, 240, 240], [240, 50, 230], [210, 245, 60], [250, 190, 212]]) / 255.0


class TrainingDiverged(FloatingPointError):
    """The training loss became NaN or infinite (a one-line message says where, and what to lower)."""


def check_finite(loss: float, where: str, hint: str) -> None:
    """Raise :class:`TrainingDiverged` unless ``loss`` is finite: ``where`` ("in epoch 3") and
    ``hint`` (the knob to turn) complete the message."""
    if not math.isfinite(loss):
        raise TrainingDiverged(f"training loss became {loss} {where}; {hint}")


# -- metrics.jsonl ---------------------------------------------------------------------------------


def read_records(path: str) -> list[dict]:
    """The JSON records of ``path`` (none if it does not exist).

    A last line that does not parse was torn by a kill mid-write and is dropped with a
    :class:`~kpflow.workdir.RunWarning`; any other bad line is a one-line ValueError.
    """
    if not os.path.isfile(path):
        return []
    with open(path) as f:
        lines = [ln for ln in f.read().splitlines() if ln.strip()]
    records = []
    for i, line in enumerate(lines):
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            if i == len(lines) - 1:
                warnings.warn(f"{path}: dropped its last line, torn by a kill mid-write: {line[:60]!r}",
                              RunWarning, stacklevel=2)
                break
            raise ValueError(f"{path}: line {i + 1} is not a JSON record; delete that line (or the file) to resume") from None
    return records


class MetricsLog:
    """The records of a run's ``metrics.jsonl``, kept in memory and rewritten atomically on each change.

    ``write=False`` (every process but the main one of a multi-process job) keeps the records
    without touching the file.
    """

    def __init__(self, workdir: str, resumed_step: int | None, write: bool = True):
        """Open the log of ``workdir``: a run resumed at ``resumed_step`` keeps the records of steps
        <= it, a fresh run (``None``) none; the file is rewritten to match right away."""
        self.path = os.path.join(workdir, METRICS_FILE)
        self.write = write
        old = read_records(self.path) if resumed_step is not None else []
        self.records: list[dict] = unique_records([r for r in old if r["step"] <= resumed_step], self.path)
        self._flush()

    def append(self, record: dict) -> None:
        """Add ``record``, replacing an earlier one of the same ``(kind, step)`` (a step logged again)."""
        key = _record_key(record)
        self.records = [r for r in self.records if _record_key(r) != key] + [record]
        self._flush()

    def _flush(self) -> None:
        if not self.write:
            return
        os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
        write_atomically(self.path, "".join(json.dumps(r) + "\n" for r in self.records))


def unique_records(records: list[dict], path: str = METRICS_FILE) -> list[dict]:
    """``records`` with one record per ``(kind, step)``, the last written (older kpflow appended the
    steps a resumed run trained again; the later copy matches the checkpoints). Warns when any went."""
    last = {_record_key(r): i for i, r in enumerate(records)}
    if len(last) == len(records):
        return records
    warnings.warn(f"{path}: dropped {len(records) - len(last)} duplicate record(s) of steps logged twice",
                  RunWarning, stacklevel=2)
    return [r for i, r in enumerate(records) if last[_record_key(r)] == i]


def _record_key(record: dict) -> tuple:
    return record.get("kind"), record["step"]


# -- curves ----------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Line:
    """One named series: ``y`` against ``x``, drawn in matplotlib ``style`` (``"-"``, ``"--"``, ``"o-"``)."""

    label: str
    x: Sequence[float]
    y: Sequence[float]
    style: str = "-"
    marker: str | None = None


def series(records: Iterable[dict], key: str, x: str = "step") -> tuple[list[float], list[float]]:
    """``(record[x], record[key])`` of ``records``; NaN where a record lacks ``key`` (a gap in the curve)."""
    records = list(records)
    return [r[x] for r in records], [r.get(key, math.nan) for r in records]


@dataclasses.dataclass(frozen=True)
class Panel:
    """One plot: ``lines`` against ``xlabel``, with optional reference lines ``(value, label)``."""

    title: str
    lines: Sequence[Line]
    xlabel: str = "step"
    log_y: bool = False
    hline: tuple[float, str] | None = None  # a level to beat, e.g. a baseline's score
    vline: tuple[float, str] | None = None  # a marked x, e.g. the best epoch


def plot_panels(panels: Sequence[Panel], path: str, panel_size: tuple[float, float] = (4.3, 3.8)) -> None:
    """Draw ``panels`` side by side into the PNG ``path`` (written atomically)."""
    from matplotlib.figure import Figure  # no pyplot: no global figure state, no GUI backend

    fig = Figure(figsize=(panel_size[0] * len(panels), panel_size[1]))
    axes = np.atleast_1d(fig.subplots(1, len(panels)))
    for ax, panel in zip(axes, panels):
        for line in panel.lines:
            ax.plot(line.x, line.y, line.style, marker=line.marker, label=line.label)
        if panel.hline is not None:
            ax.axhline(panel.hline[0], color="grey", linestyle="--", label=panel.hline[1])
        if panel.vline is not None:
            ax.axvline(panel.vline[0], color="grey", linestyle=":", label=panel.vline[1])
        if panel.log_y:
            ax.set_yscale("log")
        ax.set_title(panel.title)
        ax.set_xlabel(panel.xlabel)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    fig.subplots_adjust(left=0.05, right=0.99, bottom=0.13, top=0.92, wspace=0.22)  # tight_layout costs a redraw
    png = io.BytesIO()
    fig.savefig(png, format="png", dpi=PLOT_DPI)
    write_atomically(path, png.getvalue())


# -- sample grids ----------------------------------------------------------------------------------


def draw_keypoints(image: np.ndarray, value: np.ndarray, radius: int | None = None) -> np.ndarray:
    """``image [H, W, 3]`` with the keypoints ``value [K, 2]`` (x, y in [-1, 1]) drawn as coloured dots."""
    out = np.array(image, copy=True)
    h, w = out.shape[:2]
    radius = radius or max(1, round(min(h, w) / 64))
    yy, xx = np.mgrid[0:h, 0:w]
    for k, (x, y) in enumerate(np.asarray(value)):
        cx, cy = (x + 1) / 2 * (w - 1), (y + 1) / 2 * (h - 1)
        disc = (xx - cx) ** 2 + (yy - cy) ** 2 <= radius**2
        out[disc] = KEYPOINT_COLOURS[k % len(KEYPOINT_COLOURS)]
    return out


def image_grid(rows: Sequence[Sequence[np.ndarray]]) -> np.ndarray:
    """Rows of equal-sized cells ``[H, W, 3]`` in [0, 1] as one ``[H', W', 3]`` uint8 image, enlarged
    by a whole factor until it is :data:`SAMPLE_MIN_SIZE` pixels high per row (small training
    frames are hard to see otherwise)."""
    grid = np.concatenate([np.concatenate(list(cells), axis=1) for cells in rows], axis=0)
    grid = (np.clip(grid, 0, 1) * 255).round().astype(np.uint8)
    zoom = max(1, SAMPLE_MIN_SIZE // rows[0][0].shape[0])
    return np.repeat(np.repeat(grid, zoom, axis=0), zoom, axis=1)


def save_image(path: str, image: np.ndarray) -> None:
    """``image [H, W, 3]`` uint8 as the PNG ``path`` (written atomically; its folder is created)."""
    import imageio.v3 as iio

    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    write_atomically(path, iio.imwrite("<bytes>", image, extension=".png"))


# -- the same run? ---------------------------------------------------------------------------------


def _plain(value):
    """A config value as plain JSON data, so tuples and lists (and ConfigDicts and dicts) compare equal."""
    if isinstance(value, ml_collections.ConfigDict):
        return json.loads(value.to_json_best_effort())
    return json.loads(json.dumps(value, default=str))


def check_same_run(saved: ml_collections.ConfigDict, config: ml_collections.ConfigDict, workdir: str,
                   also: Mapping[str, Sequence[str]] | None = None) -> None:
    """Raise ValueError (one line) if ``config`` cannot continue the run whose config ``saved`` holds.

    The model section (its ``name``, then every hyper-parameter) must match, and so must the
    top-level fields of each entry of ``also`` (``{"horizon": ("num_observed", "num_predicted")}``:
    the message shows the ``horizon`` field). Training-loop settings such as the number of
    epochs may change between a run and its resumption.
    """
    old_model, new_model = _plain(saved.get("model", {})), _plain(config.get("model", {}))
    diff = None
    if old_model.get("name") != new_model.get("name"):
        diff = f"model ({old_model.get('name')!r} there, {new_model.get('name')!r} now)"
    elif old_model != new_model:
        keys = sorted(k for k in set(old_model) | set(new_model) if old_model.get(k) != new_model.get(k))
        diff = "model (" + ", ".join(f"{k}: {old_model.get(k)!r} there, {new_model.get(k)!r} now" for k in keys) + ")"
    else:
        for label, keys in (also or {}).items():
            if [_plain(saved.get(k)) for k in keys] != [_plain(config.get(k)) for k in keys]:
                diff = f"{label} ({saved.get(label)!r} there, {config.get(label)!r} now)"
                break
    if diff:
        raise ValueError(f"{workdir!r} holds a run with a different {diff}; use a new --workdir, or the same config to resume")
