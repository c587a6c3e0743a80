"""(source, driving) frame pairs from a FOMM-layout video folder, for stage-1 FOMM training.

``VideoFolder`` samples pairs of frames of one video (or one identity, with ``id_sampling``) and
hands out whole videos for keypoint extraction; ``PairBatches`` batches the pairs epoch by epoch,
as FOMM's ``DatasetRepeater`` + shuffled ``DataLoader`` do. Videos are read by
:mod:`kpflow.data.videos`, augmented by :class:`kpflow.data.video_augment.Augmentation`.
No jax, no torch.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from kpflow.data.video_augment import Augmentation
from kpflow.data.videos import (
    NO_VIDEOS_HINT,
    NoReadableVideosError,
    NoVideosError,
    VideoSkips,
    decode_video,
    frame_size,
    frames_to_float,
    identity_of,
    iter_readable,
    list_videos,
    video_name,
)


@dataclasses.dataclass(frozen=True)
class PairPlan:
    """Every random choice of one training pair, drawn apart from decoding (:meth:`VideoSet.plan_pair`):
    the video, its two frame indices in time order, and the augmentation's draw (or None)."""

    video: int
    frames: tuple[int, int]
    augment: dict[str, Any] | None


class VideoSet:
    """Named videos with random access, the base of every source of FOMM training pairs.

    A subclass (:class:`VideoFolder` for files, :class:`kpflow.data.tfds.TfdsVideos` for a prepared
    TFDS dataset) sets ``names`` (sorted clip names), ``frame_shape`` ((H, W) or None),
    ``id_sampling`` and ``description`` (a path or dataset name for messages) through
    :meth:`_index`, and implements :meth:`_frames` (a whole video) and :meth:`num_frames`; it may
    override :meth:`frames_at` to decode only the frames asked for.
    """

    names: list[str]
    ids: list[str]
    frame_shape: tuple[int, int] | None
    id_sampling: bool
    description: str

    def _index(self, names: list[str]) -> None:
        """Identities and their videos for ``names`` (the i-th name is video i)."""
        self.names = list(names)
        groups: dict[str, list[int]] = {}
        for i, name in enumerate(self.names):
            groups.setdefault(identity_of(name), []).append(i)
        self.ids = sorted(groups)
        self._videos_of_id = groups

    def _frames(self, video_index: int) -> np.ndarray:
        """Video ``video_index`` decoded: ``[T, H, W, 3]`` uint8 (float32 for non-8-bit files)."""
        raise NotImplementedError

    def num_frames(self, video_index: int) -> int:
        """The frame count of video ``video_index``."""
        return len(self._frames(video_index))

    def frames_at(self, video_index: int, indices: Sequence[int]) -> np.ndarray:
        """Frames ``indices`` of video ``video_index``, ``[len(indices), H, W, 3]`` as stored."""
        return self._frames(video_index)[np.asarray(indices)]

    def __len__(self) -> int:
        return len(self.ids) if self.id_sampling else len(self.names)

    @property
    def num_videos(self) -> int:
        return len(self.names)

    def video(self, i: int) -> tuple[str, np.ndarray]:
        """Video ``i`` (whatever ``id_sampling``): ``(name, frames [T, H, W, 3] float32 in [0, 1])``,
        for testing, evaluation and keypoint extraction."""
        if not -len(self.names) <= i < len(self.names):
            raise IndexError(f"video {i} out of range: {self.description} has {len(self.names)} videos")
        i %= len(self.names)  # one cache entry per video, whichever sign the index has
        return self.names[i], frames_to_float(self._frames(i))

    def plan_pair(self, index: int, rng: np.random.Generator,
                  augment: Augmentation | None = None) -> PairPlan:
        """The random choices of one training pair, as FOMM's ``FramesDataset.__getitem__`` in train
        mode: item ``index`` (an identity with ``id_sampling``, else a video), two distinct frames
        drawn uniformly without replacement in time order (the same frame twice for a 1-frame
        video), then ``augment``'s draw. Needs frame counts only, no pixels."""
        if not 0 <= index < len(self):
            raise IndexError(f"item {index} out of range: the dataset has {len(self)} items")
        if self.id_sampling:
            choices = self._videos_of_id[self.ids[index]]
            video_index = choices[int(rng.integers(len(choices)))]
        else:
            video_index = index
        count = self.num_frames(video_index)
        idx = np.sort(rng.choice(count, size=2, replace=count < 2))
        drawn = None
        if augment is not None:
            drawn = augment.draw(rng, self.pair_shape(video_index))
        return PairPlan(int(video_index), (int(idx[0]), int(idx[1])), drawn)

    def pair_shape(self, video_index: int) -> tuple[int, int]:
        """``(H, W)`` of video ``video_index``'s frames."""
        if self.frame_shape is not None:
            return tuple(self.frame_shape)
        return tuple(self.frames_at(video_index, [0]).shape[1:3])

    def make_pair(self, plan: PairPlan, augment: Augmentation | None = None) -> dict[str, Any]:
        """Decode and augment the pair ``plan`` describes: ``{"source", "driving"}`` ``[H, W, 3]``
        float32 in [0, 1] and ``"name"``, the video's clip name."""
        pair = frames_to_float(self.frames_at(plan.video, plan.frames))
        if plan.augment is not None:
            if augment is None:
                raise ValueError("this pair's plan holds an augmentation draw: pass the Augmentation")
            pair = augment.apply(pair, plan.augment)
        return {"source": pair[0], "driving": pair[1], "name": self.names[plan.video]}

    def sample_pair(self, index: int, rng: np.random.Generator,
                    augment: Augmentation | None = None) -> dict[str, Any]:
        """One training pair: :meth:`plan_pair` then :meth:`make_pair`.

        Returns:
          ``{"source": [H, W, 3], "driving": [H, W, 3]}`` float32 in [0, 1], and ``"name"``, the
          video's clip name.
        """
        return self.make_pair(self.plan_pair(index, rng, augment), augment)


class VideoFolder(VideoSet):
    """The videos of one split of a FOMM-layout folder, for pair sampling and extraction.

    Layout: ``root/train/`` and ``root/test/`` hold the videos (any format ``read_video`` takes).
    ``split=None`` reads ``root`` itself, and so does any split when ``root`` has neither a
    ``train/`` nor a ``test/`` sub-folder (a flat folder of videos).

    Args:
      root: the dataset folder.
      split: ``"train"``, ``"test"`` or None.
      frame_shape: ``(H, W[, 3])`` every frame is resized to; None keeps the files' sizes.
      id_sampling: FOMM's ``id_sampling``: an item is an identity (the name prefix before the first
        ``#``), and each pair comes from a random video of that identity, so identities with many
        videos are not over-sampled. ``len`` is then the number of identities.
      cache: keep decoded videos in memory (uint8 when the files are 8-bit), so each video is
        decoded once. The datasets used here are small (the 28 VoxCeleb train clips of
        ``shared/data/vox_videos``, 9,330 frames at 256x256, take 1.8 GB as uint8); pass False for
        larger ones.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        split: str | None = "train",
        frame_shape: Sequence[int] | None = (256, 256, 3),
        id_sampling: bool = False,
        cache: bool = True,
    ):
        root = Path(root)
        if split not in ("train", "test", None):
            raise ValueError(f"split must be 'train', 'test' or None, got {split!r}")
        folder = root
        if split is not None:
            if (root / split).is_dir():
                folder = root / split
            elif (root / "train").is_dir() or (root / "test").is_dir():
                raise NoVideosError(
                    f"{root} has the FOMM layout but no {split}/ folder; {NO_VIDEOS_HINT}"
                )
        self.root = root
        self.folder = folder
        self.split = split
        self.frame_shape = frame_size(frame_shape)
        self.id_sampling = bool(id_sampling)
        self.cache = bool(cache)
        self.skipped: list[tuple[Path, str]] = []  # (video, reason): dropped by drop_unreadable
        self._cache: dict[int, np.ndarray] = {}
        self.description = str(folder)
        self._lengths: dict[int, int] = {}  # video index -> frame count, once decoded
        self._index_paths(list_videos(folder))

    def _index_paths(self, paths: list[Path]) -> None:
        """Names, identities and their videos for ``paths``."""
        self.paths: list[Path] = paths
        self._index([video_name(p) for p in self.paths])

    def drop_unreadable(
        self,
        report: Callable[[str], None] | None = None,
        progress: Callable[[Iterable], Iterable] | None = None,
    ) -> list[tuple[Path, str]]:
        """Decode every video once and drop those that cannot be read, so that training never meets
        one (the :class:`kpflow.data.videos.VideoSkips` policy: each is reported as one line
        through ``report``, default stderr). With ``cache`` the decoded videos are kept.

        Args:
          report: where each skip's line goes.
          progress: wraps the iteration over the videos, e.g. ``kpflow.progress.progress``.

        Returns:
          ``self.skipped``: ``(video, reason)`` of every video dropped.

        Raises:
          NoReadableVideosError: one line, when no video of the folder can be read.
        """
        skips = VideoSkips(report)
        kept, cache, lengths = [], {}, {}
        paths = self.paths if progress is None else progress(self.paths)
        try:
            for path, frames in iter_readable(paths, lambda p: decode_video(p, self.frame_shape), skips):
                if self.cache:
                    cache[len(kept)] = frames
                lengths[len(kept)] = len(frames)
                kept.append(path)
        except NoReadableVideosError as e:
            raise NoReadableVideosError(f"no video in {self.folder} can be read: {e}") from None
        self.skipped += skips.skipped
        self._cache, self._lengths = cache, lengths
        self._index_paths(kept)
        return self.skipped

    def __repr__(self) -> str:
        return (
            f"VideoFolder({str(self.folder)!r}, {len(self.paths)} videos, {len(self.ids)} ids, "
            f"frame_shape={self.frame_shape}, id_sampling={self.id_sampling})"
        )

    def _frames(self, video_index: int) -> np.ndarray:
        """Video ``video_index`` decoded: ``[T, H, W, 3]`` uint8, or float32 for non-8-bit files."""
        if video_index in self._cache:
            return self._cache[video_index]
        frames = decode_video(self.paths[video_index], self.frame_shape)
        self._lengths[video_index] = len(frames)
        if self.cache:
            self._cache[video_index] = frames
        return frames

    def num_frames(self, video_index: int) -> int:
        if video_index not in self._lengths:
            self._lengths[video_index] = len(self._frames(video_index))
        return self._lengths[video_index]

    def __getstate__(self) -> dict:
        """Pickled without the decoded videos (an input pipeline's worker processes decode their
        own), but with the frame counts, so planning needs no decoding."""
        state = dict(self.__dict__)
        state["_cache"] = {}
        return state


class PairBatches:
    """Shuffled batches of training pairs, epoch by epoch (FOMM's ``DatasetRepeater`` + shuffled,
    ``drop_last`` ``DataLoader``).

    An epoch is ``num_repeats`` passes over the dataset: a permutation of ``num_repeats *
    len(dataset)`` item slots. Epoch ``e`` draws everything (order, frames, augmentation) from
    ``np.random.default_rng([seed, e])``, so a run resumed at epoch ``e`` sees the same batches.
    Iterating the object itself runs epochs 0, 1, 2, ... forever.

    Yields:
      ``{"source": [B, H, W, 3], "driving": [B, H, W, 3]}`` float32 in [0, 1] numpy arrays (the
      last batch is smaller when ``drop_last`` is False).
    """

    def __init__(
        self,
        dataset: VideoFolder,
        batch_size: int,
        num_repeats: int = 1,
        seed: int = 0,
        augment: Augmentation | None = None,
        drop_last: bool = True,
    ):
        if batch_size < 1 or num_repeats < 1:
            raise ValueError(
                f"batch_size and num_repeats must be >= 1, got {batch_size}, {num_repeats}"
            )
        self.dataset = dataset
        self.batch_size = int(batch_size)
        self.num_repeats = int(num_repeats)
        self.seed = int(seed)
        self.augment = augment
        self.drop_last = bool(drop_last)
        if self.steps_per_epoch == 0:
            raise ValueError(
                f"batch_size {batch_size} exceeds the {self.items_per_epoch} pairs of an epoch "
                f"({len(dataset)} items x {num_repeats} repeats); "
                "lower batch_size or raise num_repeats"
            )

    @property
    def items_per_epoch(self) -> int:
        return len(self.dataset) * self.num_repeats

    @property
    def steps_per_epoch(self) -> int:
        full, rest = divmod(self.items_per_epoch, self.batch_size)
        return full if self.drop_last or not rest else full + 1

    def epoch_plan(self, e: int) -> list[list[PairPlan]]:
        """The pairs of epoch ``e``'s batches as plans (no pixels): everything is drawn from
        ``np.random.default_rng([seed, e])`` in batch order, so the plan is the same on every call
        and in every process."""
        rng = np.random.default_rng([self.seed, int(e)])
        order = rng.permutation(self.items_per_epoch) % len(self.dataset)
        return [[self.dataset.plan_pair(int(i), rng, self.augment)
                 for i in order[step * self.batch_size: (step + 1) * self.batch_size]]
                for step in range(self.steps_per_epoch)]

    def make_batch(self, plans: Sequence[PairPlan]) -> dict[str, np.ndarray]:
        """Decode and augment ``plans`` into ``{"source", "driving"}`` ``[len(plans), H, W, 3]``."""
        pairs = [self.dataset.make_pair(p, self.augment) for p in plans]
        shapes = sorted({p["source"].shape for p in pairs})
        if len(shapes) > 1:
            raise ValueError(
                f"videos in {self.dataset.description} differ in frame size {shapes[:3]}; "
                "give the dataset a frame_shape to resize them"
            )
        return {
            "source": np.stack([p["source"] for p in pairs]),
            "driving": np.stack([p["driving"] for p in pairs]),
        }

    def epoch(self, e: int) -> Iterator[dict[str, np.ndarray]]:
        """The batches of epoch ``e`` (``steps_per_epoch`` of them), the same on every call."""
        for plans in self.epoch_plan(e):
            yield self.make_batch(plans)

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        e = 0
        while True:
            yield from self.epoch(e)
            e += 1
