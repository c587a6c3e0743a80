"""Reading videos in FOMM's formats and layouts, and their errors (kpflow.data.videos), and the
synthetic videos (kpflow.data.synthetic_video). Pairs and batches: test_video_pairs.py;
augmentation: test_video_augment.py."""

from __future__ import annotations

import imageio.v3 as iio
import numpy as np
import pytest
from conftest import VIDEO_FRAMES, VIDEO_SIZE, VIDEO_TEST, VIDEO_TRAIN

from kpflow.data import synthetic_video
from kpflow.data.synthetic_video import make_synthetic_videos
from kpflow.data.video_pairs import VideoFolder
from kpflow.data.videos import (
    NoVideosError,
    VideoReadError,
    list_videos,
    read_video,
    resolve_videos,
)

SIZE, FRAMES, TRAIN, TEST = VIDEO_SIZE, VIDEO_FRAMES, VIDEO_TRAIN, VIDEO_TEST


@pytest.fixture(scope="module")
def datasets(video_datasets):
    return video_datasets


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


def test_the_bold_scene_is_deterministic_moves_and_differs_from_the_textured_one(tmp_path):
    args = {"num_train": 1, "num_test": 0, "num_frames": 12, "size": 32, "fmt": "png"}
    a = read_video(make_synthetic_videos(tmp_path / "a", scene="bold", **args)["train"][0])
    b = read_video(make_synthetic_videos(tmp_path / "b", scene="bold", **args)["train"][0])
    textured = read_video(make_synthetic_videos(tmp_path / "t", **args)["train"][0])
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, textured)
    assert np.abs(a[1:] - a[:1]).mean() > 0.01  # the ellipses move: copying frame 0 is no match
    with pytest.raises(ValueError, match="scene must be one of"):
        make_synthetic_videos(tmp_path / "x", scene="nope", **args)


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
    paths = make_synthetic_videos(tmp_path / "root", num_train=1, num_test=2, num_frames=4, size=16, fmt="gif")
    assert resolve_videos(tmp_path / "root") == sorted(paths["test"])
    assert resolve_videos(tmp_path / "root", "train") == paths["train"]
    assert resolve_videos(paths["test"][0]) == [paths["test"][0]]
    with pytest.raises(NoVideosError, match="--videos '.*nope' does not exist"):
        resolve_videos(tmp_path / "nope", flag="--videos")
    (tmp_path / "empty").mkdir()
    with pytest.raises(NoVideosError, match="no videos"):
        resolve_videos(tmp_path / "empty")
