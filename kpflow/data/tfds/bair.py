"""TFDS's own ``bair_robot_pushing_small`` (BAIR robot pushing, 64x64) as FOMM training videos.

The user prepares it once, in the ArrayRecord format that random access needs::

    tfds build bair_robot_pushing_small --data_dir D --file_format array_record

(or ``tfds.builder("bair_robot_pushing_small", data_dir=D).download_and_prepare(
file_format="array_record")``); :class:`BairVideos` then reads it without downloading anything.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

from kpflow.data.tfds import BAIR_NAME, require_tfds
from kpflow.data.video_pairs import VideoSet

tfds = require_tfds()

FRAMES_KEY = "image_main"  # the main camera; image_aux1 is a second view


def prepare_command(data_dir: str = "D") -> str:
    """How to prepare BAIR for :class:`BairVideos` (for the messages)."""
    return (f"`tfds build {BAIR_NAME} --data_dir {data_dir} --file_format array_record` (in Python: "
            f"tfds.builder('{BAIR_NAME}', data_dir=...).download_and_prepare(file_format='array_record'))")


def _open_source(name: str, data_dir: str, split: str):
    """``(builder, data source)`` of ``split``; one-line errors saying how to prepare it."""
    try:
        builder = tfds.builder(name, data_dir=data_dir)
    except (tfds.core.registered.DatasetNotFoundError, ValueError, AssertionError):
        raise FileNotFoundError(f"{name} is not prepared in {data_dir}; prepare it: {prepare_command(data_dir)}") from None
    try:
        return builder, builder.as_data_source(split=split)
    except (NotImplementedError, ValueError, KeyError, AssertionError):
        pass  # what went wrong is told below (TFDS's messages run over several lines)
    if not builder.is_prepared():
        raise FileNotFoundError(f"{name} is not prepared in {data_dir}; prepare it: {prepare_command(data_dir)}")
    formats = {f.value for f in builder.info.available_file_formats()}
    if "array_record" not in formats:
        raise ValueError(f"{name} in {data_dir} is prepared as {', '.join(sorted(formats)) or 'tfrecord'}, "
                         f"which cannot be read at random; prepare it again: {prepare_command(data_dir)}")
    splits = sorted(builder.info.splits)
    raise ValueError(f"{name} in {data_dir} has no {split!r} split; its splits: {', '.join(splits)}")


class BairVideos(VideoSet):
    """One split of BAIR robot pushing (prepared by TFDS) read as FOMM training pairs and videos.

    Video ``i`` is example ``i`` of the split, named ``bair#<split>#<i:06d>`` (so the names sort in
    example order, and every video has the identity ``bair``); its frames are the main camera's
    ``image_main``, ``[30, 64, 64, 3]`` uint8. Picklable for grain worker processes: the reader is
    reopened lazily in each process.

    Args:
      name: ``bair_robot_pushing_small``, optionally ``:<version>``.
      data_dir: the TFDS data dir it was prepared in (ArrayRecord files).
      split: ``"train"`` or ``"test"``.
      id_sampling: FOMM's ``id_sampling`` (one identity here, so one item per epoch).

    Raises:
      FileNotFoundError: one line saying how to prepare it, when it is not prepared in ``data_dir``.
      ValueError: one line, when it is prepared as TFRecord (no random access) or lacks ``split``.
    """

    def __init__(self, name: str, data_dir: str | os.PathLike, split: str = "train", id_sampling: bool = False):
        if split not in ("train", "test"):
            raise ValueError(f"split must be 'train' or 'test', got {split!r}")
        self.name = name
        self.data_dir = os.fspath(data_dir)
        self.split = split
        self.id_sampling = bool(id_sampling)
        builder, self._source = _open_source(name, self.data_dir, split)
        shape = builder.info.features.shape[FRAMES_KEY]  # (30, 64, 64, 3)
        self._length = int(shape[0])
        self.frame_shape = (int(shape[1]), int(shape[2]))
        self.description = f"tfds:{name} [{split}] in {self.data_dir}"
        self._index([f"bair#{split}#{i:06d}" for i in range(len(self._source))])

    def __repr__(self) -> str:
        return (f"BairVideos({self.name!r}, {self.data_dir!r}, {self.split!r}, {len(self.names)} videos, "
                f"frame_shape={self.frame_shape})")

    def __getstate__(self) -> dict:
        """Pickled without the open reader: each process opens its own."""
        state = dict(self.__dict__)
        state["_source"] = None
        return state

    def num_frames(self, video_index: int) -> int:
        return self._length

    def _frames(self, video_index: int) -> np.ndarray:
        """Video ``video_index``: ``[30, 64, 64, 3]`` uint8."""
        if self._source is None:
            self._source = _open_source(self.name, self.data_dir, self.split)[1]
        return np.asarray(self._source[video_index][FRAMES_KEY])

    def frames_at(self, video_index: int, indices: Sequence[int]) -> np.ndarray:
        # An example is 30 small frames: decoding them all costs little next to a training step.
        return self._frames(video_index)[np.asarray(indices)]
