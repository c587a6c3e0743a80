"""Video datasets in FOMM's layouts: reading every format, errors, pair sampling, batches and
augmentation (kpflow.data.videos), and the synthetic videos (kpflow.data.synthetic_video)."""

from __future__ import annotations

import colorsys

import imageio.v3 as iio
import ml_collections
import numpy as np
import pytest

from kpflow.data import synthetic_video
from kpflow.data.synthetic_video import make_synthetic_videos
from kpflow.data.videos import (
    Augmentation,
    NoVideosError,
    PairBatches,
    VideoFolder,
    VideoReadError,
    _hsv_to_rgb,
    _rgb_to_hsv,
    list_videos,
    read_video,
)

SIZE, FRAMES, TRAIN, TEST = 32, 12, 4, 2


@pytest.fixture(scope="module")
def datasets(tmp_path_factory):
    """The same synthetic dataset written in every format: ``{fmt: (root, {split: [paths]})}``."""
    out = {}
    for fmt in ("png", "mp4", "gif", "folder"):
        root = tmp_path_factory.mktemp(f"videos_{fmt}")
        written = make_synthetic_videos(
            root, num_train=TRAIN, num_test=TEST, num_frames=FRAMES, size=SIZE, seed=3, fmt=fmt
        )
        out[fmt] = (root, written)
    return out


def _random_frames(shape, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


# ---------------------------------------------------------------------------------------------
# Reading


@pytest.mark.parametrize("fmt, tolerance", [("folder", 0.0), ("gif", 0.03), ("mp4", 0.05)])
def test_every_format_round_trips_against_the_lossless_png_strips(datasets, fmt, tolerance):
    _, reference = datasets["png"]
    _, written = datasets[fmt]
    for split in ("train", "test"):
        assert len(written[split]) == len(reference[split])
        for path, ref_path in zip(written[split], reference[split], strict=True):
            assert path.stem == ref_path.stem or path.name == ref_path.stem
            frames, ref = read_video(path), read_video(ref_path)
            assert frames.shape == ref.shape == (FRAMES, SIZE, SIZE, 3)
            assert frames.dtype == np.float32 and frames.min() >= 0 and frames.max() <= 1
            # mp4 (yuv420 + x264) and gif (256-colour palette) are lossy; folders of PNGs are exact.
            assert np.abs(frames - ref).mean() <= tolerance, path.name
    # The clips are not blank: motion between frames and structure within them.
    ref = read_video(reference["train"][0])
    assert np.abs(np.diff(ref, axis=0)).mean() > 0.01 and ref.std() > 0.1


def test_png_strip_is_split_into_frames_exactly(tmp_path):
    frames = _random_frames((5, 16, 16, 3))
    iio.imwrite(tmp_path / "strip.png", np.concatenate(list(frames), axis=1))
    out = read_video(tmp_path / "strip.png")
    assert out.shape == (5, 16, 16, 3)
    np.testing.assert_array_equal(out, frames.astype(np.float32) / 255)
    np.testing.assert_array_equal(read_video(tmp_path / "strip.png", (16, 16, 3)), out)

    # Rectangular frames need frame_shape; without it a strip is read as square frames, as FOMM.
    wide = _random_frames((3, 10, 20, 3), seed=1)
    iio.imwrite(tmp_path / "wide.png", np.concatenate(list(wide), axis=1))
    expected = wide.astype(np.float32) / 255
    np.testing.assert_array_equal(read_video(tmp_path / "wide.png", (10, 20)), expected)
    assert read_video(tmp_path / "wide.png").shape == (6, 10, 10, 3)
    # A frame_shape of another size: frames of its aspect ratio, resized to it.
    assert read_video(tmp_path / "wide.png", (20, 40)).shape == (3, 20, 40, 3)
    with pytest.raises(VideoReadError, match="wide.png.*not a whole number of frames"):
        read_video(tmp_path / "wide.png", (10, 16))


def test_grey_and_rgba_images_become_rgb(tmp_path):
    grey = _random_frames((8, 24))  # a strip of 3 grey 8x8 frames
    iio.imwrite(tmp_path / "grey.png", grey)
    out = read_video(tmp_path / "grey.png")
    assert out.shape == (3, 8, 8, 3)
    np.testing.assert_array_equal(out[..., 0], out[..., 2])
    np.testing.assert_array_equal(out[1, ..., 1], grey[:, 8:16] / np.float32(255))

    rgba = _random_frames((8, 8, 4), seed=2)
    folder = tmp_path / "clip"
    folder.mkdir()
    for i in range(2):
        iio.imwrite(folder / f"{i:03d}.png", rgba)
    out = read_video(folder)
    assert out.shape == (2, 8, 8, 3)
    np.testing.assert_array_equal(out[0], rgba[..., :3] / np.float32(255))


def test_frames_are_resized_to_frame_shape(datasets):
    _, written = datasets["mp4"]
    full = read_video(written["train"][0])
    small = read_video(written["train"][0], frame_shape=(16, 24, 3))
    assert small.shape == (FRAMES, 16, 24, 3) and small.dtype == np.float32
    # Resizing keeps the picture: mean colours of each frame agree.
    np.testing.assert_allclose(small.mean(axis=(1, 2)), full.mean(axis=(1, 2)), atol=0.02)


def test_frame_folder_of_mixed_sizes_needs_frame_shape(tmp_path):
    folder = tmp_path / "mixed"
    folder.mkdir()
    iio.imwrite(folder / "0.png", _random_frames((8, 8, 3)))
    iio.imwrite(folder / "1.png", _random_frames((10, 8, 3)))
    with pytest.raises(VideoReadError, match="frames differ in size.*frame_shape"):
        read_video(folder)
    assert read_video(folder, frame_shape=(8, 8)).shape == (2, 8, 8, 3)


@pytest.mark.parametrize("name", ["x.mp4", "x.gif", "x.png", "x.avi"])
def test_corrupt_file_raises_one_line_error_naming_it(tmp_path, name):
    path = tmp_path / name
    path.write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(VideoReadError) as info:
        read_video(path)
    message = str(info.value)
    assert str(path) in message and "\n" not in message and len(message) < 400
    assert isinstance(info.value, ValueError)


def test_missing_unsupported_and_empty_inputs_raise_clear_errors(tmp_path):
    with pytest.raises(VideoReadError, match="nope.mp4.*no such file"):
        read_video(tmp_path / "nope.mp4")
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(VideoReadError, match=r"notes.txt: unsupported video extension '\.txt'"):
        read_video(tmp_path / "notes.txt")
    (tmp_path / "empty").mkdir()
    with pytest.raises(VideoReadError, match="empty.*no .png/.jpg frames"):
        read_video(tmp_path / "empty")
    with pytest.raises(NoVideosError, match="no videos in .*empty; expected .mp4/.gif/.png strips"):
        list_videos(tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match="does not exist"):  # NoVideosError is one
        list_videos(tmp_path / "absent")
    with pytest.raises(NoVideosError, match="no videos in"):
        VideoFolder(tmp_path / "empty", split="train")


def test_list_videos_finds_files_and_frame_folders(tmp_path):
    frames = _random_frames((2, 8, 8, 3))
    iio.imwrite(tmp_path / "b.gif", frames, duration=100)
    iio.imwrite(tmp_path / "c.png", np.concatenate(list(frames), axis=1))
    (tmp_path / "a").mkdir()
    iio.imwrite(tmp_path / "a" / "0.png", frames[0])
    (tmp_path / "not_a_video").mkdir()  # no frames inside
    (tmp_path / "readme.txt").write_text("x")
    (tmp_path / ".hidden.mp4").write_bytes(b"")
    assert [p.name for p in list_videos(tmp_path)] == ["a", "b.gif", "c.png"]


# ---------------------------------------------------------------------------------------------
# Datasets


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
    original = ds.sample_pair

    def recording(i, rng, aug):
        drawn.append(i)
        return original(i, rng, aug)

    monkeypatch.setattr(ds, "sample_pair", recording)
    list(PairBatches(ds, batch_size=2, num_repeats=3, seed=0).epoch(0))
    assert sorted(drawn) == sorted(list(range(len(ds))) * 3)
    assert drawn != sorted(drawn)  # shuffled


# ---------------------------------------------------------------------------------------------
# Augmentation


def _clip(seed=0, shape=(2, 12, 16, 3)) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0, 1, shape).astype(np.float32)


def test_horizontal_flip_happens_about_half_the_time_and_flips(datasets):
    aug = Augmentation({"flip_param": {"horizontal_flip": True, "time_flip": False}})
    clip = _clip()
    outcomes = []
    for seed in range(40):
        out = aug(clip, np.random.default_rng(seed))
        flipped = np.array_equal(out, clip[:, :, ::-1])
        assert flipped or np.array_equal(out, clip)
        outcomes.append(flipped)
    assert 8 <= sum(outcomes) <= 32  # both outcomes occur
    # Joint: in a batch, source and driving are both mirrored or neither is.
    ds = VideoFolder(datasets["png"][0], "train", frame_shape=(SIZE, SIZE))
    frames = np.concatenate([ds.video(i)[1] for i in range(ds.num_videos)])

    def mirrored(image):  # True/False: a (mirrored) frame of the dataset
        if any(np.array_equal(image, f) for f in frames):
            return False
        assert any(np.array_equal(image[:, ::-1], f) for f in frames)
        return True

    batch = next(PairBatches(ds, 4, num_repeats=4, seed=0, augment=aug).epoch(0))
    pairs = zip(batch["source"], batch["driving"], strict=True)
    flips = [(mirrored(s), mirrored(d)) for s, d in pairs]
    assert all(s == d for s, d in flips) and len({s for s, _ in flips}) == 2


def test_time_flip_reverses_the_clip():
    aug = Augmentation({"flip_param": {"time_flip": True}})
    clip = _clip(shape=(3, 4, 4, 3))
    outcomes = set()
    for seed in range(20):
        out = aug(clip, np.random.default_rng(seed))
        reversed_ = np.array_equal(out, clip[::-1])
        assert reversed_ or np.array_equal(out, clip)
        outcomes.add(reversed_)
    assert outcomes == {True, False}


def test_jitter_with_zero_parameters_is_the_identity():
    clip = _clip()
    zero = {"brightness": 0, "contrast": 0, "saturation": 0, "hue": 0}
    for params in ({}, {"jitter_param": zero}, {"flip_param": {}, "jitter_param": {}}):
        np.testing.assert_array_equal(Augmentation(params)(clip, np.random.default_rng(0)), clip)


def test_jitter_stays_in_range_and_is_one_draw_for_the_clip():
    aug = Augmentation(
        {"jitter_param": {"brightness": 0.8, "contrast": 0.8, "saturation": 0.8, "hue": 0.5}}
    )
    frame = _clip(shape=(1, 12, 16, 3))
    clip = np.concatenate([frame, frame, frame])
    changed = 0
    for seed in range(10):
        out = aug(clip, np.random.default_rng(seed))
        assert out.dtype == np.float32 and out.shape == clip.shape
        assert out.min() >= 0 and out.max() <= 1
        np.testing.assert_array_equal(out[0], out[2])  # the same factors for every frame
        changed += not np.allclose(out, clip, atol=1e-3)
    assert changed == 10


def test_each_jitter_matches_its_definition():
    rng = np.random.default_rng(0)
    clip = _clip() * 0.5
    out = Augmentation({"jitter_param": {"brightness": [1.5, 1.5]}})(clip, rng)
    np.testing.assert_allclose(out, clip * 1.5, atol=1e-6)
    grey = clip @ np.array([0.299, 0.587, 0.114], np.float32)
    out = Augmentation({"jitter_param": {"saturation": [0.0, 0.0]}})(clip, rng)
    np.testing.assert_allclose(out, np.repeat(grey[..., None], 3, -1), atol=1e-6)
    out = Augmentation({"jitter_param": {"contrast": [0.0, 0.0]}})(clip, rng)
    frame_means = grey.mean((1, 2))[:, None, None, None]
    np.testing.assert_allclose(out, np.broadcast_to(frame_means, clip.shape), atol=1e-6)
    red = np.zeros((1, 2, 2, 3), np.float32)
    red[..., 0] = 1
    out = Augmentation({"jitter_param": {"hue": [1 / 3, 1 / 3]}})(red, rng)
    np.testing.assert_allclose(out, np.roll(red, 1, axis=-1), atol=1e-6)  # red -> green
    hsv_round_trip = _hsv_to_rgb(_rgb_to_hsv(clip.astype(np.float64)))
    np.testing.assert_allclose(hsv_round_trip, clip, atol=1e-6)
    colours = np.concatenate([clip.reshape(-1, 3)[:50], np.eye(3), [[0, 0, 0], [1, 1, 1]]])
    reference = np.array([colorsys.rgb_to_hsv(*c) for c in colours])
    np.testing.assert_allclose(_rgb_to_hsv(colours), reference, atol=1e-6)
    with pytest.raises(ValueError, match="hue"):
        Augmentation({"jitter_param": {"hue": 0.7}})
    with pytest.raises(ValueError, match="rotation_param"):
        Augmentation({"rotation_param": {"degrees": 10}})


def test_crop_and_resize():
    clip = _clip(shape=(2, 12, 16, 3))
    rng = np.random.default_rng(0)
    out = Augmentation({"crop_param": {"size": [8, 10]}})(clip, rng)
    assert out.shape == (2, 8, 10, 3)
    windows = [clip[:, y: y + 8, x: x + 10] for y in range(5) for x in range(7)]
    assert any(np.array_equal(out, w) for w in windows)
    # Larger than the clip: zero padded around it.
    out = Augmentation({"crop_param": {"size": [14, 18]}})(clip, rng)
    assert out.shape == (2, 14, 18, 3)
    np.testing.assert_array_equal(out[:, 1:13, 1:17], clip)
    assert out[:, 0].max() == 0 and out[:, :, -1].max() == 0
    # A random resize keeps the clip's shape without crop_param, the crop's with it.
    resize = Augmentation({"resize_param": {"ratio": [0.7, 1.3]}})
    shapes = {resize(clip, np.random.default_rng(s)).shape for s in range(5)}
    assert shapes == {clip.shape}
    both = Augmentation({"resize_param": {"ratio": [2.0, 2.0]}, "crop_param": {"size": [24, 32]}})
    np.testing.assert_allclose(both(clip, rng)[:, ::2, ::2].mean(), clip.mean(), atol=0.02)


def test_augmentation_takes_a_config_dict():
    cfg = ml_collections.ConfigDict({"flip_param": {"horizontal_flip": True, "time_flip": True}})
    aug = Augmentation(cfg)
    assert aug.horizontal_flip and aug.time_flip and not aug.jitter


# ---------------------------------------------------------------------------------------------
# Synthetic videos


def test_synthetic_videos_are_deterministic_and_named_by_identity(tmp_path, capsys):
    args = ["--num_train", "2", "--num_test", "1", "--num_frames", "4", "--size", "16"]
    args += ["--fmt", "png"]
    synthetic_video.main(["--out", str(tmp_path / "a"), *args])
    synthetic_video.main(["--out", str(tmp_path / "b"), *args])
    synthetic_video.main(["--out", str(tmp_path / "c"), "--seed", "1", *args])
    printed = capsys.readouterr().out
    assert "wrote 2 train clips (4 frames, 16x16, png)" in printed
    assert "wrote 1 test clips" in printed
    names = [p.name for p in list_videos(tmp_path / "a" / "train")]
    assert names == ["id0000#synthetic#000000#000004.png", "id0001#synthetic#000004#000008.png"]
    test_names = [p.name for p in list_videos(tmp_path / "a" / "test")]
    assert test_names == ["id0000#synthetic#000008#000012.png"]
    a, b, c = (read_video(tmp_path / d / "train" / names[0]) for d in "abc")
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    with pytest.raises(ValueError, match="even for mp4"):
        make_synthetic_videos(tmp_path / "odd", size=15, fmt="mp4")


@pytest.mark.shared_data
def test_real_vox_videos_read_at_256(shared_dir):
    root = shared_dir.parent / "vox_videos"
    if not (root / "test").is_dir():
        pytest.skip(f"{root} not found")
    ds = VideoFolder(root, "test", frame_shape=(256, 256, 3), id_sampling=True, cache=False)
    assert len(ds) == len(ds.ids) >= 1 and ds.num_videos >= 1
    shortest = min(ds.paths, key=lambda p: p.stat().st_size)
    frames = read_video(shortest)
    assert frames.ndim == 4 and frames.shape[1:] == (256, 256, 3) and len(frames) > 1
    assert frames.dtype == np.float32 and 0 <= frames.min() and frames.max() <= 1
    assert frames.std() > 0.05
    pair = ds.sample_pair(0, np.random.default_rng(0))
    assert pair["source"].shape == (256, 256, 3)


def test_resolve_videos_reads_one_video_a_folder_or_a_layouts_split(tmp_path):
    from kpflow.data.videos import NoVideosError, resolve_videos

    paths = make_synthetic_videos(tmp_path / "root", num_train=1, num_test=2, num_frames=4, size=16, fmt="gif")
    assert resolve_videos(tmp_path / "root") == sorted(paths["test"])
    assert resolve_videos(tmp_path / "root", "train") == paths["train"]
    assert resolve_videos(paths["test"][0]) == [paths["test"][0]]
    with pytest.raises(NoVideosError, match="--videos '.*nope' does not exist"):
        resolve_videos(tmp_path / "nope", flag="--videos")
    (tmp_path / "empty").mkdir()
    with pytest.raises(NoVideosError, match="no videos"):
        resolve_videos(tmp_path / "empty")
