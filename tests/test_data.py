"""Clip folders, splits, windows and synthetic data (kpflow.data). Fast, no shared data needed."""

import os

import ml_collections
import numpy as np
import pytest

import kpflow.data as kd
from kpflow.keypoints import keypoints_to_vector


def _clip(rng, t, k=10):
    value = rng.uniform(-1, 1, (t, k, 2)).astype(np.float32)
    jacobian = rng.normal(size=(t, k, 2, 2)).astype(np.float32)
    return value, jacobian


def _clipset(names_lengths, dim=12):
    return kd.ClipSet({n: np.zeros((t, dim), np.float32) for n, t in names_lengths}, source="mem")


# -- load_folder ----------------------------------------------------------------------------------
def test_save_clip_then_load_folder_round_trips(tmp_path):
    rng = np.random.default_rng(0)
    written = {}
    for name, t in [("spkB#vid#0#9", 9), ("spkA#vid#3#20", 17)]:
        value, jacobian = _clip(rng, t)
        kd.save_clip(str(tmp_path / f"{name}.npz"), value, jacobian)
        written[name] = keypoints_to_vector(value, jacobian)
    (tmp_path / "notes.txt").write_text("not a clip")  # other files are ignored

    clips = kd.load_folder(str(tmp_path))
    assert clips.names == sorted(written)
    assert clips.dim == 60 and len(clips) == 2 and clips.num_frames == 26
    assert clips.speakers() == ["spkA", "spkB"]
    for name, series in written.items():
        assert clips.clips[name].dtype == np.float32
        np.testing.assert_array_equal(clips.clips[name], series)


def test_load_folder_reads_write_synthetic_folder(tmp_path):
    paths = kd.write_synthetic_folder(str(tmp_path / "syn"), num_clips=3, num_speakers=2, min_frames=10, max_frames=12, seed=3)
    assert len(paths) == 3 and all(os.path.isfile(p) for p in paths)
    clips = kd.load_folder(str(tmp_path / "syn"))
    expected = kd.synthetic_clips(num_clips=3, num_speakers=2, min_frames=10, max_frames=12, seed=3)
    assert clips.names == sorted(expected)
    for name, series in expected.items():
        np.testing.assert_array_equal(clips.clips[name], series)


def test_load_folder_missing_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist.*--data_dir"):
        kd.load_folder(str(tmp_path / "nowhere"))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        kd.load_folder("")


def test_load_folder_empty_folder(tmp_path):
    (tmp_path / "readme.txt").write_text("no clips here")
    with pytest.raises(FileNotFoundError, match="has no .npz files"):
        kd.load_folder(str(tmp_path))


def test_load_folder_corrupt_file_names_it(tmp_path):
    value, jacobian = _clip(np.random.default_rng(1), 5)
    kd.save_clip(str(tmp_path / "good.npz"), value, jacobian)
    (tmp_path / "x.npz").write_bytes(np.random.default_rng(2).bytes(256))
    with pytest.raises(ValueError, match=r"x\.npz: a file with no zip header, not an \.npz archive; expected a keypoint clip"):
        kd.load_folder(str(tmp_path))


def test_load_folder_truncated_file_names_it(tmp_path):
    value, jacobian = _clip(np.random.default_rng(1), 5)
    kd.save_clip(str(tmp_path / "cut.npz"), value, jacobian)
    data = (tmp_path / "cut.npz").read_bytes()
    (tmp_path / "cut.npz").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"cut\.npz: truncated or damaged \.npz"):
        kd.load_folder(str(tmp_path))


@pytest.mark.parametrize(
    "arrays, message",
    [
        ({"value": np.zeros((5, 10, 3)), "jacobian": np.zeros((5, 10, 2, 2))}, r"'value' must be \[T, K, 2\]"),
        ({"value": np.zeros((5, 10, 2)), "jacobian": np.zeros((5, 10, 4))}, r"'jacobian' must be \[T, K, 2, 2\]"),
        ({"value": np.zeros((5, 10, 2)), "jacobian": np.zeros((5, 9, 2, 2))}, r"'jacobian' must be"),
        ({"value": np.zeros((5, 10, 2))}, r"needs arrays 'value'.*'jacobian'"),
    ],
)
def test_load_folder_wrong_arrays_names_file(tmp_path, arrays, message):
    np.savez(tmp_path / "bad_clip.npz", **arrays)
    with pytest.raises(ValueError, match=r"bad_clip\.npz: " + message):
        kd.load_folder(str(tmp_path))


def test_load_clip_rejects_nan_naming_frame(tmp_path):
    value, jacobian = _clip(np.random.default_rng(3), 6)
    value[4, 2, 0] = np.nan
    kd.save_clip(str(tmp_path / "nan.npz"), value, jacobian)
    with pytest.raises(ValueError, match=r"nan\.npz: contains NaN.*frame 4"):
        kd.load_clip(str(tmp_path / "nan.npz"))


def test_clipset_rejects_mixed_dimensions():
    with pytest.raises(ValueError, match="disagree"):
        kd.ClipSet({"a": np.zeros((3, 12)), "b": np.zeros((3, 18))})


# -- splits ---------------------------------------------------------------------------------------
def test_speaker_of():
    assert kd.speaker_of("id10283#x6M3KQ8-gM4#005643#006041") == "id10283"
    assert kd.speaker_of("plainname") == "plainname"


def test_split_by_speaker_keeps_each_speaker_on_one_side():
    clips = _clipset([(f"s{i % 4}#c{i}", 5) for i in range(12)])
    train, hold = kd.split_by_speaker(clips, ["s1", "s3"])
    assert hold.speakers() == ["s1", "s3"]
    assert train.speakers() == ["s0", "s2"]
    assert sorted(train.names + hold.names) == clips.names
    assert not set(train.names) & set(hold.names)


def test_split_by_speaker_errors():
    clips = _clipset([("a#1", 5), ("b#1", 5)])
    with pytest.raises(ValueError, match=r"held-out speakers \['zz'\] have no clips"):
        kd.split_by_speaker(clips, ["zz"])
    with pytest.raises(ValueError, match="leaves no training clips"):
        kd.split_by_speaker(clips, ["a", "b"])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_split_by_fraction_holds_out_whole_speakers(seed):
    clips = _clipset([(f"s{i % 5}#c{i}", 5) for i in range(20)])
    train, hold = kd.split_by_fraction(clips, 0.4, seed=seed)
    assert len(hold.speakers()) == 2
    assert not set(train.speakers()) & set(hold.speakers())
    assert sorted(train.names + hold.names) == clips.names
    again, _ = kd.split_by_fraction(clips, 0.4, seed=seed)
    assert again.names == train.names


def test_split_by_list(tmp_path):
    clips = _clipset([("a#1", 5), ("a#2", 5), ("b#1", 5)])
    listing = tmp_path / "val.txt"
    listing.write_text("# held out\na#2.npz\n\nb#1\n")
    train, hold = kd.split_by_list(clips, str(listing))
    assert hold.names == ["a#2", "b#1"]
    assert train.names == ["a#1"]
    listing.write_text("nope#1\n")
    with pytest.raises(ValueError, match="unknown clips"):
        kd.split_by_list(clips, str(listing))
    with pytest.raises(FileNotFoundError, match="not found"):
        kd.split_by_list(clips, str(tmp_path / "missing.txt"))


# -- windows --------------------------------------------------------------------------------------
def _ramp(t, d=6):
    """``[t, d]`` whose frame i holds i everywhere, so a window's first value is its start frame."""
    return np.repeat(np.arange(t, dtype=np.float32)[:, None], d, axis=1)


def test_evaluation_windows_are_non_overlapping_from_zero():
    series = _ramp(53)
    w = kd.evaluation_windows(series, 6, 6)
    assert w.shape == (4, 12, 6)  # 53 // 12; the 5-frame remainder is dropped
    np.testing.assert_array_equal(w[:, 0, 0], [0, 12, 24, 36])
    np.testing.assert_array_equal(w.reshape(-1, 6), series[:48])
    w = kd.evaluation_windows(series, 12, 12)
    np.testing.assert_array_equal(w[:, 0, 0], [0, 24])


def test_evaluation_windows_of_short_clip_is_empty():
    assert kd.evaluation_windows(_ramp(11), 6, 6).shape == (0, 12, 6)


def test_observed_frames_of_windows():
    obs = kd.observed_frames_of_windows(_ramp(30), 5, 5)
    # Windows start at 0, 10, 20; each contributes its first 5 frames.
    np.testing.assert_array_equal(obs[:, 0], [0, 1, 2, 3, 4, 10, 11, 12, 13, 14, 20, 21, 22, 23, 24])
    assert obs.shape == (15, 6)


@pytest.mark.parametrize("t, length, stride, count", [(20, 12, 1, 9), (20, 12, 3, 3), (12, 12, 1, 1), (11, 12, 1, 0)])
def test_sliding_windows_count(t, length, stride, count):
    w = kd.sliding_windows(_ramp(t), length, stride)
    assert w.shape == (count, length, 6)
    if count:
        np.testing.assert_array_equal(w[:, 0, 0], np.arange(count) * stride)
        np.testing.assert_array_equal(w[:, -1, 0], np.arange(count) * stride + length - 1)


def test_stack_windows_skips_short_clips():
    w = kd.stack_windows({"a": _ramp(14), "b": _ramp(5), "c": _ramp(13)}, 12, 1)
    assert w.shape == (3 + 2, 12, 6) and w.dtype == np.float32


def test_check_long_enough():
    kd.check_long_enough({"a": _ramp(5), "b": _ramp(24)}, 24, "train")
    with pytest.raises(ValueError, match=r"train: every clip is shorter than one window of 24 frames \(longest: b, 20"):
        kd.check_long_enough({"a": _ramp(5), "b": _ramp(20)}, 24, "train")
    with pytest.raises(ValueError, match="no clips"):
        kd.check_long_enough({}, 24, "val")


def test_parse_horizon():
    assert kd.parse_horizon("12-12") == (12, 12)
    for bad in ("12", "a-b", "1-5", "6-0"):
        with pytest.raises(ValueError, match="horizon"):
            kd.parse_horizon(bad)


def test_epoch_batches_draw_each_window_once_per_pass():
    windows = np.arange(12)[:, None, None] * np.ones((1, 3, 2))
    stream = kd.epoch_batches(windows, 4, seed=0, epoch=0)
    passes = [np.concatenate([next(stream)[:, 0, 0] for _ in range(3)]) for _ in range(2)]
    for seen in passes:
        assert sorted(seen.tolist()) == list(range(12))  # a permutation: every window once
    assert passes[0].tolist() != passes[1].tolist()  # reshuffled on the next pass
    ten = kd.epoch_batches(windows[:10], 4, seed=0, epoch=0)
    assert [len(next(ten)) for _ in range(3)] == [4, 4, 4]  # the remainder is dropped, never short
    few = next(kd.epoch_batches(windows[:3], 4, seed=0, epoch=0))  # fewer than a batch: all of them
    assert sorted(few[:, 0, 0].tolist()) == [0, 1, 2]


# -- synthetic ------------------------------------------------------------------------------------
def test_synthetic_clips_shapes_and_names():
    clips = kd.synthetic_clips(num_clips=5, num_speakers=2, min_frames=20, max_frames=30, num_keypoints=4, seed=0)
    assert len(clips) == 5
    for name, series in clips.items():
        assert "#" in name
        assert series.dtype == np.float32 and series.shape[1] == 24 and 20 <= len(series) <= 30
        assert np.all(np.isfinite(series))
    assert len({kd.speaker_of(n) for n in clips}) == 2


def test_synthetic_clips_deterministic_per_seed_and_differs_across_seeds():
    kw = {"num_clips": 3, "num_speakers": 2, "min_frames": 15, "max_frames": 15}
    a, b, c = kd.synthetic_clips(seed=7, **kw), kd.synthetic_clips(seed=7, **kw), kd.synthetic_clips(seed=8, **kw)
    assert list(a) == list(b) == list(c)
    for name in a:
        np.testing.assert_array_equal(a[name], b[name])
        assert not np.allclose(a[name], c[name])


def test_synthetic_clips_rejects_bad_arguments():
    with pytest.raises(ValueError, match="synthetic_clips"):
        kd.synthetic_clips(num_clips=0)
    with pytest.raises(ValueError, match="synthetic_clips"):
        kd.synthetic_clips(min_frames=30, max_frames=20)


# -- configs --------------------------------------------------------------------------------------
def _synthetic_config(**overrides):
    c = ml_collections.ConfigDict()
    c.kind = "synthetic"
    c.dir = ""
    c.holdout_speakers = []
    c.split_file = ""
    c.val_fraction = 0.25
    c.seed = 0
    c.synthetic = ml_collections.ConfigDict({"num_clips": 8, "num_speakers": 4, "min_frames": 20, "max_frames": 30, "seed": 1})
    c.update(overrides)
    return c


def test_load_splits_synthetic_by_fraction():
    train, val = kd.load_splits(_synthetic_config())
    assert len(val.speakers()) == 1 and len(train.speakers()) == 3
    assert not set(train.speakers()) & set(val.speakers())
    assert len(train) + len(val) == 8 and train.dim == 60


def test_load_splits_synthetic_by_speaker_and_list(tmp_path):
    train, val = kd.load_splits(_synthetic_config(holdout_speakers=["synth00", "synth02"]))
    assert val.speakers() == ["synth00", "synth02"]
    assert train.speakers() == ["synth01", "synth03"]
    listing = tmp_path / "val.txt"
    listing.write_text("synth01#clip001\n")
    train, val = kd.load_splits(_synthetic_config(split_file=str(listing), holdout_speakers=["synth00"]))
    assert val.names == ["synth01#clip001"] and len(train) == 7  # the list file takes precedence


def test_load_splits_npz_folder(tmp_path):
    kd.write_synthetic_folder(str(tmp_path), num_clips=4, num_speakers=2, min_frames=10, max_frames=10, seed=0)
    train, val = kd.load_splits(_synthetic_config(kind="npz", dir=str(tmp_path), holdout_speakers=["synth01"]))
    assert val.speakers() == ["synth01"] and train.speakers() == ["synth00"]
    with pytest.raises(FileNotFoundError, match="does not exist"):
        kd.load_splits(_synthetic_config(kind="npz", dir=str(tmp_path / "missing")))
    with pytest.raises(ValueError, match="data.kind"):
        kd.load_clips(_synthetic_config(kind="tfrecord"))
