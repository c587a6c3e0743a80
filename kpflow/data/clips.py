"""Keypoint-series datasets: a folder of per-clip ``.npz`` files and its splits.

On-disk format (also what kpflow's keypoint extraction writes), one file per clip named after it,
float32 arrays ``value [T, K, 2]`` and ``jacobian [T, K, 2, 2]``. VoxCeleb clip names look like
``<speaker>#<youtube id>#<start>#<end>``; the speaker is the prefix before the first ``#``.

Every clip read is checked (:func:`check_keypoints`): at least one frame and one keypoint, finite,
positions within +-:data:`MAX_ABS_VALUE` and Jacobian entries within +-:data:`MAX_ABS_JACOBIAN`.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterable, Sequence

import numpy as np

from kpflow.keypoints import check_series, keypoints_to_vector

MISSING_DATA_HINT = (
    "point --config.data.dir (or --data_dir) at a folder of per-clip .npz keypoint files "
    "(value [T,K,2], jacobian [T,K,2,2]), e.g. ../shared/data/vox_keypoints, write a synthetic one "
    "with `python -m kpflow.data.make_synthetic --out DIR`, or use configs/demo.py"
)


# Plausible keypoints: FOMM's positions are in [-1, 1] (the image's normalised coordinates) and its
# Jacobians are local affine maps near the identity. The bounds leave ample room (keypoints may sit
# outside the frame, warps may be strong) while refusing data in another unit (pixels) or corrupt
# numbers (3e38), which would otherwise train to NaN scores without a word.
MAX_ABS_VALUE = 10.0
MAX_ABS_JACOBIAN = 100.0
_ENTRY_NAMES = ("x", "y", "jacobian[0,0]", "jacobian[0,1]", "jacobian[1,0]", "jacobian[1,1]")


def check_keypoints(value: np.ndarray, jacobian: np.ndarray, name: str) -> None:
    """Raise a one-line ValueError naming ``name`` (a file) unless ``value [T, K, 2]`` and
    ``jacobian [T, K, 2, 2]`` hold at least one frame and one keypoint, all finite, positions within
    +-MAX_ABS_VALUE and Jacobian entries within +-MAX_ABS_JACOBIAN. The message gives the first
    offending frame, keypoint, entry and value."""
    if value.dtype.kind not in "fiu" or jacobian.dtype.kind not in "fiu":
        raise ValueError(f"{name}: 'value' and 'jacobian' must hold real numbers, got {value.dtype} and {jacobian.dtype}")
    if value.shape[0] == 0:
        raise ValueError(f"{name}: has no frames (value {value.shape}); drop the file or extract its keypoints again")
    if value.shape[1] == 0:
        raise ValueError(f"{name}: has no keypoints (value {value.shape}); drop the file or extract its keypoints again")
    per_keypoint = np.concatenate([value, jacobian.reshape(jacobian.shape[:2] + (4,))], axis=-1)  # [T, K, 6]
    limits = np.array([MAX_ABS_VALUE] * 2 + [MAX_ABS_JACOBIAN] * 4)
    # ~(|x| <= limit) is true for NaN and inf as well as for values out of range.
    bad = ~(np.abs(per_keypoint) <= limits)
    if not bad.any():
        return
    t, k, e = (int(i) for i in np.argwhere(bad)[0])
    v = per_keypoint[t, k, e]
    where = f"frame {t} keypoint {k} {_ENTRY_NAMES[e]} = {v:g}"
    if not np.isfinite(v):
        raise ValueError(f"{name}: contains NaN or inf (first at {where}); clean or drop the clip")
    what = "keypoint positions (FOMM's coordinates are in [-1, 1])" if e < 2 else "Jacobian entries"
    raise ValueError(f"{name}: {where} is outside +-{limits[e]:g}, the plausible range of {what}; "
                     "is the file in another unit, or corrupt?")


def speaker_of(clip_name: str) -> str:
    """``id10283#x6M3KQ8-gM4#005643#006041`` -> ``id10283`` (the whole name if it has no ``#``)."""
    return clip_name.split("#", 1)[0]


def load_clip(path: str) -> np.ndarray:
    """Read one clip file -> ``[T, 6K]`` float32. Raises ValueError naming the file if malformed,
    empty or implausible (:func:`check_keypoints`)."""
    from kpflow.io import load_npz

    everything = load_npz(path, "a keypoint clip (arrays value and jacobian)")
    names = sorted(everything)
    arrays = {k: everything[k] for k in ("value", "jacobian") if k in everything}
    if len(arrays) < 2:
        raise ValueError(f"{path}: needs arrays 'value' [T,K,2] and 'jacobian' [T,K,2,2], has {names}")
    value, jacobian = arrays["value"], arrays["jacobian"]
    if value.ndim != 3 or value.shape[-1] != 2:
        raise ValueError(f"{path}: 'value' must be [T, K, 2], got {value.shape}")
    if jacobian.shape != value.shape + (2,):
        raise ValueError(f"{path}: 'jacobian' must be [T, K, 2, 2] matching value {value.shape}, got {jacobian.shape}")
    check_keypoints(value, jacobian, path)
    return check_series(keypoints_to_vector(value, jacobian), name=os.path.basename(path))


def save_clip(path: str, value: np.ndarray, jacobian: np.ndarray) -> None:
    """Write one clip in the shared format (float32 ``value``, ``jacobian``)."""
    np.savez(path, value=np.asarray(value, np.float32), jacobian=np.asarray(jacobian, np.float32))


@dataclasses.dataclass
class ClipSet:
    """Named keypoint series ``{clip name: [T, 6K] float32}``, in sorted name order."""

    clips: dict[str, np.ndarray]
    source: str = ""

    def __post_init__(self):
        self.clips = dict(sorted(self.clips.items()))
        dims = {v.shape[-1] for v in self.clips.values()}
        if len(dims) > 1:
            raise ValueError(f"{self.source or 'clips'}: clips disagree on keypoints per frame: {sorted(dims)}")

    def __len__(self) -> int:
        return len(self.clips)

    @property
    def names(self) -> list[str]:
        return list(self.clips)

    @property
    def dim(self) -> int:
        return next(iter(self.clips.values())).shape[-1]

    @property
    def num_frames(self) -> int:
        return int(sum(len(v) for v in self.clips.values()))

    def series(self) -> list[np.ndarray]:
        return list(self.clips.values())

    def subset(self, names: Iterable[str]) -> ClipSet:
        names = list(names)
        missing = [n for n in names if n not in self.clips]
        if missing:
            raise ValueError(f"{self.source}: unknown clips {missing[:3]}{' ...' if len(missing) > 3 else ''}")
        return ClipSet({n: self.clips[n] for n in names}, source=self.source)

    def speakers(self) -> list[str]:
        return sorted({speaker_of(n) for n in self.clips})


def load_folder(path: str) -> ClipSet:
    """Every ``*.npz`` in ``path`` -> ClipSet. Missing or empty folders give an actionable error."""
    if not path or not os.path.isdir(path):
        raise FileNotFoundError(f"keypoint folder {path!r} does not exist: {MISSING_DATA_HINT}")
    files = sorted(f for f in os.listdir(path) if f.endswith(".npz"))
    if not files:
        raise FileNotFoundError(f"keypoint folder {path!r} has no .npz files: {MISSING_DATA_HINT}")
    clips = {f[: -len(".npz")]: load_clip(os.path.join(path, f)) for f in files}
    return ClipSet(clips, source=path)


def split_by_speaker(clips: ClipSet, holdout_speakers: Sequence[str]) -> tuple[ClipSet, ClipSet]:
    """(train, holdout): every clip of a held-out speaker goes to holdout, so no speaker is in both."""
    holdout_speakers = list(holdout_speakers)
    known = set(clips.speakers())
    unknown = [s for s in holdout_speakers if s not in known]
    if unknown:
        raise ValueError(f"held-out speakers {unknown} have no clips in {clips.source}; speakers there: {sorted(known)}")
    hold = [n for n in clips.names if speaker_of(n) in holdout_speakers]
    train = [n for n in clips.names if speaker_of(n) not in holdout_speakers]
    if not train:
        raise ValueError(f"holding out {holdout_speakers} leaves no training clips in {clips.source}")
    return clips.subset(train), clips.subset(hold)


def split_by_list(clips: ClipSet, list_file: str) -> tuple[ClipSet, ClipSet]:
    """(train, holdout) where holdout is the clip names listed one per line in ``list_file``."""
    if not os.path.isfile(list_file):
        raise FileNotFoundError(f"split list {list_file!r} not found (one clip name per line)")
    with open(list_file) as f:
        names = [ln.strip().removesuffix(".npz") for ln in f if ln.strip() and not ln.startswith("#")]
    hold = clips.subset(names)
    train = clips.subset([n for n in clips.names if n not in set(names)])
    return train, hold


def split_by_fraction(clips: ClipSet, fraction: float, seed: int = 0) -> tuple[ClipSet, ClipSet]:
    """(train, holdout) with about ``fraction`` of the *speakers* held out (whole speakers only).

    With a single speaker, whole clips are held out instead (and the split says so by name).
    """
    speakers = clips.speakers()
    rng = np.random.default_rng(seed)
    if len(speakers) > 1:
        n_hold = min(len(speakers) - 1, max(1, round(fraction * len(speakers))))
        return split_by_speaker(clips, sorted(rng.choice(speakers, n_hold, replace=False).tolist()))
    names = clips.names
    n_hold = min(len(names) - 1, max(1, round(fraction * len(names))))
    if n_hold < 1:
        raise ValueError(f"{clips.source}: need at least two clips to make a validation split")
    hold = sorted(rng.choice(names, n_hold, replace=False).tolist())
    return clips.subset([n for n in names if n not in hold]), clips.subset(hold)

