"""kpflow.io: padding, batched keypoint detection (with a fake detector), finding videos and
checking where outputs go. Generated data only; no model, no video decoding."""

from __future__ import annotations

import os
import types

import numpy as np
import pytest

from kpflow import io
from kpflow.cli import UsageError

NUM_KP = 3


# -- pad_rows ------------------------------------------------------------------------------------


def test_pad_rows_repeats_the_last_row():
    x = np.arange(6.0).reshape(3, 2)
    padded = io.pad_rows(x, 5)
    assert padded.shape == (5, 2)
    np.testing.assert_array_equal(padded[:3], x)
    np.testing.assert_array_equal(padded[3:], np.stack([x[-1], x[-1]]))
    assert io.pad_rows(x, 3) is x  # a full batch is left alone


@pytest.mark.parametrize("rows, size", [(0, 4), (5, 4)])
def test_pad_rows_refuses_empty_or_oversized_input(rows, size):
    with pytest.raises(ValueError, match=f"cannot pad {rows} rows to {size}"):
        io.pad_rows(np.zeros((rows, 2)), size)


# -- extract_keypoints ---------------------------------------------------------------------------


class FakeDetector:
    """``detect(frames [B, H, W, 3])``: keypoint k of a frame sits at (frame's mean colour, k); records
    every batch size it is called with."""

    def __init__(self):
        self.batch_sizes = []

    def detect(self, frames):
        self.batch_sizes.append(len(frames))
        level = frames.mean(axis=(1, 2, 3))  # [B]
        value = np.stack([np.broadcast_to(level[:, None], (len(frames), NUM_KP)),
                          np.broadcast_to(np.arange(NUM_KP, dtype=np.float64), (len(frames), NUM_KP))], axis=-1)
        jacobian = np.broadcast_to(np.eye(2), (len(frames), NUM_KP, 2, 2)) * level[:, None, None, None]
        return types.SimpleNamespace(value=value, jacobian=jacobian)


def frames_of(num_frames: int) -> np.ndarray:
    """``[T, 4, 4, 3]``: frame t has the constant colour t / T."""
    return np.broadcast_to((np.arange(num_frames) / num_frames)[:, None, None, None], (num_frames, 4, 4, 3)).copy()


@pytest.mark.parametrize("num_frames, batch_size, calls", [(7, 3, 3), (7, 7, 1), (2, 8, 1), (1, 1, 1)])
def test_extract_keypoints_batches_pads_and_trims(num_frames, batch_size, calls):
    detector = FakeDetector()
    frames = frames_of(num_frames)
    value, jacobian = io.extract_keypoints(detector, frames, batch_size)
    assert detector.batch_sizes == [batch_size] * calls  # every call a full batch: one compilation
    assert value.shape == (num_frames, NUM_KP, 2) and jacobian.shape == (num_frames, NUM_KP, 2, 2)
    assert value.dtype == jacobian.dtype == np.float32
    level = np.arange(num_frames) / num_frames
    np.testing.assert_allclose(value[:, :, 0], np.broadcast_to(level[:, None], (num_frames, NUM_KP)), rtol=1e-6)
    np.testing.assert_allclose(jacobian[:, 0, 1, 1], level, rtol=1e-6)  # padded rows were dropped


def test_extract_keypoints_rejects_bad_input():
    with pytest.raises(ValueError, match=r"\[T, H, W, 3\]"):
        io.extract_keypoints(FakeDetector(), np.zeros((4, 4, 3)))
    with pytest.raises(ValueError, match=r"T >= 1"):
        io.extract_keypoints(FakeDetector(), np.zeros((0, 4, 4, 3)))
    with pytest.raises(ValueError, match="batch_size"):
        io.extract_keypoints(FakeDetector(), frames_of(2), batch_size=0)


def test_keypoint_series_is_one_vector_per_frame():
    series = io.keypoint_series(FakeDetector(), frames_of(5), batch_size=2)
    assert series.shape == (5, 6 * NUM_KP)


# -- video_paths ---------------------------------------------------------------------------------


def test_video_paths_errors_are_one_usage_line(tmp_path):
    with pytest.raises(UsageError, match="does not exist") as e:
        io.video_paths(tmp_path / "nowhere", "test", "--videos")
    assert "--videos" in str(e.value) and "\n" not in str(e.value)
    (tmp_path / "empty").mkdir()
    with pytest.raises(UsageError, match="no videos") as e:
        io.video_paths(tmp_path / "empty", "test", "--fit_dir")
    assert "\n" not in str(e.value)


def test_video_paths_finds_a_split_of_a_fomm_layout(tmp_path):
    for split in ("train", "test"):
        (tmp_path / split).mkdir()
        (tmp_path / split / f"{split}_clip.mp4").write_bytes(b"")  # listed, not read
    assert [p.name for p in io.video_paths(tmp_path, "test")] == ["test_clip.mp4"]
    assert [p.name for p in io.video_paths(tmp_path, "train")] == ["train_clip.mp4"]


def test_read_frames_of_an_unreadable_video_is_one_usage_line(tmp_path):
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(np.random.default_rng(0).bytes(512))
    with pytest.raises(UsageError, match="bad.mp4") as e:
        io.read_frames(bad, (8, 8))
    assert "\n" not in str(e.value)


# -- check_output_path ---------------------------------------------------------------------------


def test_check_output_path_accepts_new_and_existing_places(tmp_path):
    assert io.check_output_path(tmp_path / "a" / "b" / "out.json") == tmp_path / "a" / "b" / "out.json"
    assert not (tmp_path / "a").exists()  # nothing is created
    (tmp_path / "old.json").write_text("{}")
    io.check_output_path(tmp_path / "old.json")  # overwriting a file is fine
    io.check_output_path(tmp_path, folder=True)
    io.check_output_path(tmp_path / "new" / "folder", folder=True)
    io.check_output_path("relative.json")


def test_check_output_path_refuses_what_cannot_be_written(tmp_path):
    a_file = tmp_path / "a_file"
    a_file.write_text("")
    cases = [
        ({"path": a_file / "x.json"}, "is a file, not a folder"),
        ({"path": a_file / "deeper" / "x.json"}, "is a file, not a folder"),
        ({"path": tmp_path}, "is a folder; give a file name"),
        ({"path": a_file, "folder": True}, "is a file; give a folder"),
        ({"path": a_file / "sub", "folder": True}, "is a file, not a folder"),
    ]
    for kwargs, message in cases:
        with pytest.raises(UsageError, match=message) as e:
            io.check_output_path(flag="--where", **kwargs)
        assert str(e.value).startswith("--where ") and "\n" not in str(e.value)


def test_check_output_path_refuses_a_folder_without_write_permission(tmp_path, monkeypatch):
    # Simulated: root (as in many containers) may write anywhere, so chmod alone proves nothing.
    locked = str(tmp_path / "locked")
    os.mkdir(locked)
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: False if str(p) == locked else real_access(p, mode))
    with pytest.raises(UsageError, match="is not writable"):
        io.check_output_path(os.path.join(locked, "sub", "x.json"))
    with pytest.raises(UsageError, match="is not writable"):
        io.check_output_path(locked, folder=True)


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="needs a user that file permissions apply to")
def test_check_output_path_reads_real_permissions(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        with pytest.raises(UsageError, match="is not writable"):
            io.check_output_path(locked / "x.json")
    finally:
        locked.chmod(0o700)
