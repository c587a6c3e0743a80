"""``kpflow_videos``: a FOMM-layout video folder as a TFDS dataset, and :class:`TfdsVideos` to read it.

The source is FOMM's layout, ``root/train/`` and ``root/test/`` (either may be absent) of videos in
any format :func:`kpflow.data.videos.decode_video` reads (mp4, gif, png frame strips, frame
folders). Each *frame* becomes one example: the frame resized to ``S x S`` as
``decode_video(path, (S, S))`` resizes it (so :class:`kpflow.data.video_pairs.VideoFolder` with
``frame_shape=(S, S)`` reads the same pixels) and stored as one encoded image (PNG, lossless, by
default), with its clip's name, identity, frame index and frame count. A training pair then reads
two small records: one record per video would make a reader load every frame of a clip (tens of
megabytes at 256x256) to decode two. Records follow the sorted name order of ``VideoFolder`` and
frame order within a clip, and the dataset's metadata holds every split's names, frame counts and
first records, so a reader plans pairs without reading a record and finds a frame directly.

Configs ``64``, ``128`` and ``256`` (the default): the frame size. Prepare with
``python -m kpflow.data.prepare --kind videos --src ROOT --data_dir OUT --frame_size 256``.
"""

from __future__ import annotations

import dataclasses
import io
import os
from collections.abc import Sequence
from pathlib import Path
from typing import ClassVar

import numpy as np
from PIL import Image

from kpflow.data.tfds import (
    FOMM_CITATION,
    FOMM_HOMEPAGE,
    SOURCES_KEY,
    open_prepared,
    require_tfds,
    source_digest,
)
from kpflow.data.tfds.keypoints import manual_folder
from kpflow.data.video_pairs import VideoSet
from kpflow.data.videos import (
    NO_VIDEOS_HINT,
    VideoReadError,
    decode_video,
    identity_of,
    list_videos,
    video_name,
)
from kpflow.progress import progress

tfds = require_tfds()

NAME = "kpflow_videos"
SPLITS = ("train", "test")
FRAME_SIZES = (64, 128, 256)
DEFAULT_FRAME_SIZE = 256
ENCODINGS = ("png", "jpeg")
# The dataset's metadata key holding {split: {"names": [...], "num_frames": [...], "starts": [...]}}
# (starts: each clip's first record).
INDEX_KEY = "videos"
MANUAL_DOWNLOAD_INSTRUCTIONS = """\
A video dataset in the layout of the First Order Motion Model: ROOT/train/ and ROOT/test/ (either
may be missing) holding videos as .mp4/.mov/.avi/.gif files, .png/.jpg frame strips (frames side by
side) or folders of frame images, named <identity>#...; e.g. VoxCeleb as FOMM's
load_videos.py writes it, or `python -m kpflow.data.synthetic_video --out ROOT`.
Pass ROOT as the manual dir: `python -m kpflow.data.prepare --kind videos --src ROOT --data_dir OUT`.
"""
WHAT_TO_PUT = f"give a folder with train/ and/or test/ sub-folders of videos ({NO_VIDEOS_HINT})"


def prepare_command(name: str = NAME, data_dir: str = "OUT") -> str:
    """The command that prepares ``name`` (for the messages)."""
    config = name.split("/", 1)[1].split(":", 1)[0] if "/" in name else str(DEFAULT_FRAME_SIZE)
    size, _, encoding = config.partition("-")
    flags = f" --frame_size {size}" if size.isdigit() else ""
    flags += f" --encoding {encoding}" if encoding else ""
    return f"`python -m kpflow.data.prepare --kind videos --src ROOT --data_dir {data_dir}{flags}`"


@dataclasses.dataclass(eq=False)
class KpflowVideosConfig(tfds.core.BuilderConfig):
    """Frames resized to ``frame_size`` x ``frame_size`` and stored as ``encoding`` images."""

    frame_size: int = DEFAULT_FRAME_SIZE
    encoding: str = "png"


def videos_config(frame_size: int = DEFAULT_FRAME_SIZE, encoding: str = "png") -> KpflowVideosConfig:
    """The config of ``frame_size`` and ``encoding``, named ``<size>`` for PNG and
    ``<size>-jpeg`` for JPEG. Raises a one-line ValueError for a size < 1 or another encoding."""
    frame_size = int(frame_size)
    if frame_size < 1:
        raise ValueError(f"frame_size must be >= 1, got {frame_size}")
    if encoding not in ENCODINGS:
        raise ValueError(f"encoding must be one of {', '.join(ENCODINGS)}, got {encoding!r}")
    lossless = "lossless PNG" if encoding == "png" else "JPEG (lossy)"
    return KpflowVideosConfig(
        name=str(frame_size) if encoding == "png" else f"{frame_size}-{encoding}",
        description=f"frames resized to {frame_size}x{frame_size}, stored as {lossless} images",
        frame_size=frame_size, encoding=encoding)


def _checked_8bit(frames: np.ndarray, path: Path) -> np.ndarray:
    """``frames`` if 8-bit; VideoReadError otherwise: a deeper video's values cannot be stored in 8-bit
    images without rounding, and the folder reader would not round them."""
    if frames.dtype != np.uint8:
        raise VideoReadError(f"{path}: frames are not 8-bit (decoded as {frames.dtype}); kpflow_videos "
                             "stores 8-bit images: convert the video to 8-bit, or train from the folder")
    return frames


class KpflowVideos(tfds.core.GeneratorBasedBuilder):
    """FOMM-layout videos at a fixed frame size, one example per frame, clip after clip."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES: ClassVar[dict[str, str]] = {
        "1.0.0": "First release: one example per frame (PNG), train and test splits."}
    BUILDER_CONFIGS: ClassVar[list] = [videos_config(size) for size in FRAME_SIZES]
    DEFAULT_CONFIG_NAME = str(DEFAULT_FRAME_SIZE)
    MANUAL_DOWNLOAD_INSTRUCTIONS = MANUAL_DOWNLOAD_INSTRUCTIONS
    # See KpflowKeypoints.code_path: TFDS's own lookup needs the importlib_resources backport.
    code_path = tfds.core.Path(__file__)

    def _info(self):
        size, encoding = self.builder_config.frame_size, self.builder_config.encoding
        return tfds.core.DatasetInfo(
            builder=self,
            description=(
                "Videos in the layout of the First Order Motion Model (train/ and test/ folders), "
                f"one example per frame, resized to {size}x{size} and stored as a {encoding.upper()} "
                "image, with its clip's name, identity (the name's prefix before the first #), the "
                "frame's index and the clip's frame count; clips in sorted name order, frames in order."),
            features=tfds.features.FeaturesDict({
                "image": tfds.features.Image(shape=(size, size, 3), encoding_format=encoding,
                                             doc="the frame [S, S, 3] uint8"),
                "name": tfds.features.Text(doc="the clip name (the file name without its extension)"),
                "identity": tfds.features.Text(doc="the clip name's prefix before the first #"),
                "frame": tfds.features.Scalar(dtype=np.int32, doc="the frame's index in its clip"),
                "num_frames": tfds.features.Scalar(dtype=np.int32, doc="the clip's frame count T"),
            }),
            disable_shuffling=True,  # records in sorted name order, as VideoFolder lists them
            metadata=tfds.core.MetadataDict(),
            homepage=FOMM_HOMEPAGE,
            citation=FOMM_CITATION,
        )

    def _split_generators(self, dl_manager):
        root = Path(manual_folder(dl_manager, WHAT_TO_PUT))
        splits = [s for s in SPLITS if (root / s).is_dir()]
        if not splits:
            raise FileNotFoundError(f"{root} has no train/ or test/ folder; {WHAT_TO_PUT}")
        self.info.metadata[INDEX_KEY] = {}
        self.info.metadata[SOURCES_KEY] = {}
        self._root = root
        return {split: self._generate_examples(split, list_videos(root / split)) for split in splits}

    def _generate_examples(self, split: str, paths: list[Path]):
        size = self.builder_config.frame_size
        index = self.info.metadata[INDEX_KEY][split] = {"names": [], "num_frames": [], "starts": []}
        key = 0
        for path in progress(paths, desc=f"writing {split}", unit="video", delay=1):
            frames = _checked_8bit(decode_video(path, (size, size)), path)
            self.info.metadata[SOURCES_KEY][os.path.relpath(path, self._root)] = source_digest(path)
            name = video_name(path)
            index["names"].append(name)
            index["num_frames"].append(len(frames))
            index["starts"].append(key)
            for t, frame in enumerate(frames):
                # Integer keys: with disable_shuffling, records are written in key order.
                yield key, {"image": frame, "name": name, "identity": identity_of(name), "frame": np.int32(t),
                            "num_frames": np.int32(len(frames))}
                key += 1


class _KeepEncoded(tfds.decode.Decoder):
    """Leaves an image encoded (PNG/JPEG bytes), for NumPy data sources too; decoded by
    :func:`decode_image`, in the process that reads it."""

    def decode_example(self, serialized_example):
        return serialized_example

    def decode_example_np(self, serialized_example):
        return serialized_example

    def decode_batch_example_np(self, serialized_examples):
        return list(serialized_examples)


def decode_image(data: bytes) -> np.ndarray:
    """One stored frame (PNG or JPEG bytes) -> ``[H, W, 3]`` uint8."""
    with Image.open(io.BytesIO(data)) as image:
        return np.asarray(image.convert("RGB"))


class TfdsVideos(VideoSet):
    """One split of a prepared ``kpflow_videos`` dataset, read as FOMM training pairs and videos.

    Video ``i`` is the split's ``i``-th example: the same clip, frames and order as
    :class:`kpflow.data.video_pairs.VideoFolder` gives for the folder it was prepared from, with
    ``frame_shape`` the dataset's frame size. Frame counts come from the dataset's metadata, and
    :meth:`frames_at` decodes only the frames asked for, so a training pair costs two image
    decodes and two small reads. Picklable (for grain worker processes): the reader is reopened
    lazily in each process.

    Args:
      name: ``kpflow_videos/<config>`` (e.g. ``kpflow_videos/256``), optionally ``:<version>``.
      data_dir: the TFDS data dir it was prepared in.
      split: ``"train"`` or ``"test"``.
      id_sampling: FOMM's ``id_sampling`` (see ``VideoFolder``).

    Raises:
      FileNotFoundError: one line, when the dataset is not prepared in ``data_dir``.
      ValueError: one line listing the splits there, when ``split`` is not one of them.
    """

    def __init__(self, name: str, data_dir: str | os.PathLike, split: str = "train", id_sampling: bool = False):
        self.name = name
        self.data_dir = os.fspath(data_dir)
        self.split = split
        self.id_sampling = bool(id_sampling)
        builder = open_prepared(name, self.data_dir, prepare_command(name, self.data_dir))
        splits = sorted(builder.info.splits)
        if split not in splits:
            raise ValueError(f"{name} in {self.data_dir} has no {split!r} split; its splits: {', '.join(splits)}")
        index = (builder.info.metadata or {}).get(INDEX_KEY, {}).get(split)
        if index is None:
            raise ValueError(f"{name} in {self.data_dir} has no video index in its metadata; "
                             f"is it a kpflow_videos dataset? Prepare one: {prepare_command(name, self.data_dir)}")
        self.frame_shape = tuple(int(s) for s in builder.info.features["image"].shape[:2])
        self.description = f"tfds:{name} [{split}] in {self.data_dir}"
        self._num_frames = [int(n) for n in index["num_frames"]]
        self._starts = [int(n) for n in index["starts"]]
        self._builder = builder
        self._source = None
        self._index(index["names"])

    def __repr__(self) -> str:
        return (f"TfdsVideos({self.name!r}, {self.data_dir!r}, {self.split!r}, {len(self.names)} videos, "
                f"{len(self.ids)} ids, frame_shape={self.frame_shape}, id_sampling={self.id_sampling})")

    def __getstate__(self) -> dict:
        """Pickled without the open reader: each process opens its own."""
        state = dict(self.__dict__)
        state["_builder"] = state["_source"] = None
        return state

    def _record(self, video_index: int, t: int) -> bytes:
        """Frame ``t`` of video ``video_index``, still encoded."""
        if self._source is None:
            if self._builder is None:
                self._builder = open_prepared(self.name, self.data_dir, prepare_command(self.name, self.data_dir))
            self._source = self._builder.as_data_source(split=self.split, decoders={"image": _KeepEncoded()})
        if not 0 <= t < self._num_frames[video_index]:
            raise IndexError(f"{self.description}: frame {t} of {self.names[video_index]!r} is outside its "
                             f"{self._num_frames[video_index]} frames")
        record = self._source[self._starts[video_index] + t]
        name, frame = record["name"].decode("utf-8"), int(record["frame"])
        if (name, frame) != (self.names[video_index], t):
            raise ValueError(f"{self.description}: record {self._starts[video_index] + t} is frame {frame} of "
                             f"{name!r} but the metadata says frame {t} of {self.names[video_index]!r}; "
                             "prepare the dataset again")
        return record["image"]

    def num_frames(self, video_index: int) -> int:
        return self._num_frames[video_index]

    def _frames(self, video_index: int) -> np.ndarray:
        """Video ``video_index``: ``[T, S, S, 3]`` uint8."""
        return self.frames_at(video_index, range(self._num_frames[video_index]))

    def frames_at(self, video_index: int, indices: Sequence[int]) -> np.ndarray:
        """Frames ``indices`` of video ``video_index``, ``[len(indices), S, S, 3]`` uint8; only those
        are read and decoded."""
        return np.stack([decode_image(self._record(video_index, int(t))) for t in indices])
