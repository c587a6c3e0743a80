"""Keypoint-series data: clip folders, splits, windows and the synthetic default. Imports no model."""

from kpflow.data.clips import (
    MISSING_DATA_HINT,
    ClipSet,
    load_clip,
    load_folder,
    save_clip,
    speaker_of,
    split_by_fraction,
    split_by_list,
    split_by_speaker,
)
from kpflow.data.config import load_clips, load_splits
from kpflow.data.synthetic import synthetic_clips, write_synthetic_folder
from kpflow.data.windows import (
    AUGMENTATIONS,
    augment,
    check_long_enough,
    epoch_batches,
    evaluation_windows,
    observed_frames_of_windows,
    parse_horizon,
    sliding_windows,
    stack_windows,
)

__all__ = [
    "AUGMENTATIONS",
    "MISSING_DATA_HINT",
    "ClipSet",
    "augment",
    "check_long_enough",
    "epoch_batches",
    "evaluation_windows",
    "load_clip",
    "load_clips",
    "load_folder",
    "load_splits",
    "observed_frames_of_windows",
    "parse_horizon",
    "save_clip",
    "sliding_windows",
    "speaker_of",
    "split_by_fraction",
    "split_by_list",
    "split_by_speaker",
    "stack_windows",
    "synthetic_clips",
    "write_synthetic_folder",
]
