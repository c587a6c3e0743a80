"""Training pairs from a FOMM-layout folder (kpflow.data.video_pairs): splits, identity
sampling, frame pairs in time order, and batches that are the same per (seed, epoch)."""

from __future__ import annotations

import imageio.v3 as iio
import numpy as np
import pytest
from conftest import VIDEO_FRAMES, VIDEO_SIZE, VIDEO_TEST, VIDEO_TRAIN

from kpflow.data.video_pairs import PairBatches, VideoFolder
from kpflow.data.videos import NoVideosError

SIZE, FRAMES, TRAIN, TEST = VIDEO_SIZE, VIDEO_FRAMES, VIDEO_TRAIN, VIDEO_TEST


@pytest.fixture(scope="module")
def datasets(video_datasets):
    return video_datasets


def _random_frames(shape, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def test_splits_and_id_sampling_group_by_identity(datasets, tmp_path):
    root, written = datasets["mp4"]
    train = VideoFolder(root, "train", frame_shape=(SIZE, SIZE))
    assert len(train) == train.num_videos == TRAIN
    assert train.names == sorted(p.stem for p in written["train"])
    assert len(VideoFolder(root, "test", frame_shape=None)) == TEST

    by_id = VideoFolder(root, "train", frame_shape=(SIZE, SIZE), id_sampling=True)
    assert len(by_id) == 2 and by_id.ids == ["id0000", "id0001"]
    rng = np.random.default_rng(0)
    for index, identity in enumerate(by_id.ids):
        names = {by_id.sample_pair(index, rng)["name"] for _ in range(20)}
        # Every video of the identity is drawn, and only those.
        assert names == {n for n in by_id.names if n.startswith(identity + "#")}
        assert len(names) == TRAIN // 2
    with pytest.raises(IndexError):
        by_id.sample_pair(2, rng)

    # A flat folder (no train/ or test/) is used as it is, for any split.
    flat = VideoFolder(root / "test", split="train", frame_shape=None)
    assert flat.folder == root / "test" and len(flat) == TEST
    # A FOMM layout with a split missing is an error, not a silent fallback to root.
    (tmp_path / "train").mkdir()
    with pytest.raises(NoVideosError, match="no test/ folder"):
        VideoFolder(tmp_path, "test")


def test_sample_pair_draws_two_distinct_frames_in_time_order(datasets):
    root, _ = datasets["png"]  # lossless, so drawn frames can be matched exactly
    ds = VideoFolder(root, "train", frame_shape=(SIZE, SIZE))
    rng = np.random.default_rng(1)
    for index in range(len(ds)):
        name, frames = ds.video(index)
        assert name == ds.names[index] and frames.shape == (FRAMES, SIZE, SIZE, 3)
        for _ in range(5):
            pair = ds.sample_pair(index, rng)
            assert pair["name"] == name
            assert pair["source"].shape == pair["driving"].shape == (SIZE, SIZE, 3)
            assert pair["source"].dtype == np.float32
            i = [t for t in range(FRAMES) if np.array_equal(frames[t], pair["source"])]
            j = [t for t in range(FRAMES) if np.array_equal(frames[t], pair["driving"])]
            assert len(i) == len(j) == 1 and i[0] < j[0]


def test_one_frame_video_gives_the_frame_twice(tmp_path):
    frame = _random_frames((8, 8, 3))
    iio.imwrite(tmp_path / "id1#single.png", frame)
    ds = VideoFolder(tmp_path, split=None, frame_shape=(8, 8), cache=False)
    pair = ds.sample_pair(0, np.random.default_rng(0))
    np.testing.assert_array_equal(pair["source"], frame / np.float32(255))
    np.testing.assert_array_equal(pair["driving"], pair["source"])


def test_pair_batches_are_deterministic_per_seed_and_epoch(datasets):
    root, _ = datasets["png"]
    ds = VideoFolder(root, "train", frame_shape=(SIZE, SIZE))
    batches = PairBatches(ds, batch_size=3, num_repeats=5, seed=7)
    assert batches.steps_per_epoch == len(ds) * 5 // 3 == 6
    epoch0 = list(batches.epoch(0))
    assert len(epoch0) == batches.steps_per_epoch
    for batch in epoch0:
        assert set(batch) == {"source", "driving"}
        assert batch["source"].shape == batch["driving"].shape == (3, SIZE, SIZE, 3)
        assert batch["source"].dtype == np.float32

    def stacked(epoch):
        epoch = list(epoch)
        return np.stack([b["source"] for b in epoch] + [b["driving"] for b in epoch])

    again = PairBatches(ds, batch_size=3, num_repeats=5, seed=7)
    np.testing.assert_array_equal(stacked(again.epoch(0)), stacked(epoch0))
    assert not np.array_equal(stacked(batches.epoch(1)), stacked(epoch0))
    other = PairBatches(ds, batch_size=3, num_repeats=5, seed=8)
    assert not np.array_equal(stacked(other.epoch(0)), stacked(epoch0))
    # Iterating runs epoch after epoch: batch steps_per_epoch is the first of epoch 1, as resumed.
    stream = iter(batches)
    for _ in range(batches.steps_per_epoch):
        next(stream)
    np.testing.assert_array_equal(next(stream)["source"], next(batches.epoch(1))["source"])

    ragged = PairBatches(ds, batch_size=3, num_repeats=5, seed=7, drop_last=False)
    sizes = [len(b["source"]) for b in ragged.epoch(0)]
    assert ragged.steps_per_epoch == 7 and sizes == [3] * 6 + [2]
    with pytest.raises(ValueError, match="batch_size 9 exceeds the 4 pairs"):
        PairBatches(ds, batch_size=9, num_repeats=1, seed=0)


def test_pair_batches_cover_every_item_num_repeats_times(datasets, monkeypatch):
    root, _ = datasets["png"]
    ds = VideoFolder(root, "train", frame_shape=(SIZE, SIZE))
    drawn = []
    original = ds.plan_pair  # every pair of an epoch is planned (drawn) before it is decoded

    def recording(i, rng, aug):
        drawn.append(i)
        return original(i, rng, aug)

    monkeypatch.setattr(ds, "plan_pair", recording)
    list(PairBatches(ds, batch_size=2, num_repeats=3, seed=0).epoch(0))
    assert sorted(drawn) == sorted(list(range(len(ds))) * 3)
    assert drawn != sorted(drawn)  # shuffled
