"""Build the train / validation clip sets that a config's ``data`` block describes."""

from __future__ import annotations

import os

from kpflow.data.clips import (
    ClipSet,
    load_folder,
    split_by_fraction,
    split_by_list,
    split_by_speaker,
)
from kpflow.data.synthetic import synthetic_clips


def load_clips(data_config) -> ClipSet:
    """All clips of ``data_config``: ``kind='npz'`` reads ``dir``; ``kind='tfds'`` reads every split of
    the prepared dataset ``tfds_name`` in ``tfds_data_dir``; ``kind='synthetic'`` generates them.

    A TFDS dataset's own train/validation splits serve plain TFDS users; the trainers split its
    clips by the config's rule (:func:`load_splits`), so one config splits a folder and the
    dataset prepared from it alike."""
    kind = data_config.get("kind", "npz")
    if kind == "synthetic":
        syn = dict(data_config.get("synthetic", {}))
        return ClipSet(synthetic_clips(**syn), source=f"synthetic({syn})")
    if kind == "npz":
        return load_folder(os.path.expanduser(data_config.get("dir", "")))
    if kind == "tfds":
        from kpflow.data.tfds import load_keypoint_clips

        if not data_config.get("tfds_data_dir"):
            raise ValueError("data.kind='tfds' needs --config.data.tfds_data_dir (prepare a dataset with "
                             "`python -m kpflow.data.prepare --kind keypoints --src DIR --data_dir OUT`)")
        return load_keypoint_clips(data_config.get("tfds_name") or "kpflow_keypoints",
                                   os.path.expanduser(data_config.tfds_data_dir))
    raise ValueError(f"data.kind must be 'npz', 'tfds' or 'synthetic', got {kind!r}")


def load_splits(data_config) -> tuple[ClipSet, ClipSet]:
    """(train, validation). Validation is, in order of precedence: the clips named in
    ``split_file``; the clips of ``holdout_speakers``; a ``val_fraction`` of speakers drawn with ``seed``.
    """
    clips = load_clips(data_config)
    if data_config.get("split_file"):
        return split_by_list(clips, data_config.split_file)
    speakers = list(data_config.get("holdout_speakers", []) or [])
    if speakers:
        return split_by_speaker(clips, speakers)
    return split_by_fraction(clips, float(data_config.get("val_fraction", 0.2)), int(data_config.get("seed", 0)))
