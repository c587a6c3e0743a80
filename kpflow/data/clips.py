"""Keypoint-series datasets: a folder of per-clip ``.npz`` files and its splits.

On-disk format (also what kpflow's keypoint extraction writes), one file per clip named after it,
float32 arrays ``value [T, K, 2]`` and ``jacobian [T, K, 2, 2]``. VoxCeleb clip names look like
``<speaker>#<youtube id>#<start>#<end>``; the speaker is the prefix before the first ``#``.
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


def speaker_of(clip_name: str) -> str:
    """``id10283#x6M3KQ8-gM4#005643#006041`` -> ``id10283`` (the whole name if it has no ``#``)."""
    return clip_name.split("#", 1)[0]


def load_clip(path: str) -> np.ndarray:
    """Read one clip file -> ``[T, 6K]`` float32. Raises ValueError naming the file if malformed."""
    try:
        with np.load(path, allow_pickle=False) as f:
            names = sorted(f.files)
            arrays = {k: f[k] for k in ("value", "jacobian") if k in f.files}
    except Exception as e:  # noqa: BLE001 -- not a zip, truncated, a pickle: all unreadable as keypoints
        raise ValueError(f"{path}: not a readable .npz keypoint file ({type(e).__name__}: {e})") from None
    if len(arrays) < 2:
        raise ValueError(f"{path}: needs arrays 'value' [T,K,2] and 'jacobian' [T,K,2,2], has {names}")
    value, jacobian = arrays["value"], arrays["jacobian"]
    if value.ndim != 3 or value.shape[-1] != 2:
        raise ValueError(f"{path}: 'value' must be [T, K, 2], got {value.shape}")
    if jacobian.shape != value.shape + (2,):
        raise ValueError(f"{path}: 'jacobian' must be [T, K, 2, 2] matching value {value.shape}, got {jacobian.shape}")
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

