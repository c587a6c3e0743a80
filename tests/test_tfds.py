"""kpflow.data.tfds and ``python -m kpflow.data.prepare``: TFDS datasets of kpflow's data.

Every TFDS test is in this file, so TensorFlow (which TFDS imports to write a dataset) is imported
once per test process. Datasets are prepared from generated folders once per module:

- ``kpflow_keypoints`` reads back bit for bit what ``load_folder`` reads, with the splits
  ``load_splits`` makes under the same rule;
- ``kpflow_videos`` gives the same videos, frame counts and training pairs as ``VideoFolder`` on
  the folder it was prepared from, decoding only the frames a pair needs, and pickles;
- ``BairVideos`` reads TFDS's mocked ``bair_robot_pushing_small``;
- bad input is one line naming the file (exit status 2 from the command line);
- reading a prepared dataset does not import TensorFlow, and the package imports without TFDS.
"""

import json
import os
import pickle
import subprocess
import sys
import textwrap

import ml_collections
import numpy as np
import pytest
import tensorflow_datasets as tfds

from eval import extract_keypoints as ek
from kpflow.data import tfds as kp_tfds
from kpflow.data.clips import load_folder, save_clip, speaker_of
from kpflow.data.config import load_splits
from kpflow.data.prepare import main as prepare_main
from kpflow.data.prepare import prepare_keypoints, prepare_videos
from kpflow.data.synthetic import write_synthetic_folder
from kpflow.data.synthetic_video import make_synthetic_videos
from kpflow.data.video_pairs import VideoFolder

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FRAME_SIZE = 64  # the smallest documented config; the generated clips are 32x32, so frames are resized
SYNTHETIC = {"num_clips": 10, "num_speakers": 5, "min_frames": 6, "max_frames": 14, "num_keypoints": 3}


@pytest.fixture(scope="module")
def keypoint_folder(tmp_path_factory):
    path = tmp_path_factory.mktemp("keypoints")
    write_synthetic_folder(str(path), **SYNTHETIC)
    return str(path)


@pytest.fixture(scope="module")
def keypoint_data(keypoint_folder, tmp_path_factory):
    """A data dir holding the default config and a held-out-speakers one."""
    data_dir = str(tmp_path_factory.mktemp("tfds_keypoints"))
    default = prepare_keypoints(keypoint_folder, data_dir)
    holdout = prepare_keypoints(keypoint_folder, data_dir, holdout_speakers=["synth01", "synth03"])
    return data_dir, default, holdout


@pytest.fixture(scope="module")
def video_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("videos")
    make_synthetic_videos(root, num_train=4, num_test=2, num_frames=8, size=32, fmt="png")
    return str(root)


@pytest.fixture(scope="module")
def video_data(video_root, tmp_path_factory):
    data_dir = str(tmp_path_factory.mktemp("tfds_videos"))
    prepared = prepare_videos(video_root, data_dir, frame_size=FRAME_SIZE)
    return data_dir, prepared


def prepare(*args) -> int:
    """The CLI in-process; returns its exit status."""
    return prepare_main([str(a) for a in args])


def one_error_line(capsys) -> str:
    """stderr of the last command: exactly one line (no traceback), returned."""
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


def data_config(folder, **split) -> ml_collections.ConfigDict:
    rule = {"holdout_speakers": [], "split_file": "", "val_fraction": 0.2, "seed": 0, **split}
    return ml_collections.ConfigDict({"kind": "npz", "dir": folder, **rule})


# -- keypoints --------------------------------------------------------------------------------------


def test_keypoints_read_back_bit_for_bit(keypoint_folder, keypoint_data):
    data_dir, default, _ = keypoint_data
    assert default.name == "kpflow_keypoints/default"
    folder = load_folder(keypoint_folder)
    for name in ("kpflow_keypoints", "kpflow_keypoints/default", "kpflow_keypoints/default:1.0.0"):
        clips = kp_tfds.load_keypoint_clips(name, data_dir)
        assert clips.source == f"tfds:{name} in {data_dir}"
        assert clips.names == folder.names
        for clip in folder.names:
            got, want = clips.clips[clip], folder.clips[clip]
            assert got.dtype == want.dtype == np.float32
            assert got.tobytes() == want.tobytes(), clip  # bit for bit, NaN payloads and -0.0 included


def test_keypoint_records_keep_clip_order_and_speaker(keypoint_data):
    data_dir, _, _ = keypoint_data
    source = tfds.data_source("kpflow_keypoints/default", split="train", data_dir=data_dir, download=False)
    records = [source[i] for i in range(len(source))]
    clips = [r["clip"].decode() for r in records]
    assert clips == sorted(clips)
    assert [r["speaker"].decode() for r in records] == [speaker_of(c) for c in clips]
    assert all(r["value"].shape[1:] == (3, 2) and r["jacobian"].shape[1:] == (3, 2, 2) for r in records)


def test_keypoint_splits_are_load_splits(keypoint_folder, keypoint_data):
    data_dir, default, holdout = keypoint_data
    cases = [(default, data_config(keypoint_folder)),
             (holdout, data_config(keypoint_folder, holdout_speakers=["synth01", "synth03"]))]
    assert holdout.name == "kpflow_keypoints/holdout-synth01-synth03"
    for prepared, config in cases:
        splits = kp_tfds.load_keypoint_splits(prepared.name, data_dir)
        train, validation = load_splits(config)
        assert splits["train"].names == train.names and splits["validation"].names == validation.names
        assert prepared.num_examples == {"train": len(train), "validation": len(validation)}
        assert not set(splits["train"].speakers()) & set(splits["validation"].speakers())
    assert {speaker_of(n) for n in kp_tfds.load_keypoint_splits(holdout.name, data_dir)["validation"].names} == {
        "synth01", "synth03"}


def test_keypoints_not_prepared_is_one_line(keypoint_data, tmp_path):
    data_dir, _, _ = keypoint_data
    with pytest.raises(FileNotFoundError) as e:
        kp_tfds.load_keypoint_clips("kpflow_keypoints/fraction0.5-seed3", data_dir)
    message = str(e.value)
    assert "\n" not in message and data_dir in message and "python -m kpflow.data.prepare" in message
    assert "kpflow_keypoints/default:1.0.0" in message  # what is there
    with pytest.raises(FileNotFoundError, match="does not exist; prepare kpflow_keypoints there"):
        kp_tfds.load_keypoint_clips("kpflow_keypoints", str(tmp_path / "nowhere"))
    with pytest.raises(FileNotFoundError, match="holds no kpflow_keypoints dataset"):
        kp_tfds.load_keypoint_clips("kpflow_keypoints", str(tmp_path))


def bad_clip_folder(root, name: str, value: np.ndarray, jacobian: np.ndarray) -> str:
    """A folder of good synthetic clips and one bad one, ``name``.npz."""
    folder = root / name
    write_synthetic_folder(str(folder), num_clips=3, num_speakers=2, min_frames=5, max_frames=6)
    np.savez(folder / f"{name}.npz", value=value, jacobian=jacobian)
    return str(folder / f"{name}.npz")


@pytest.mark.parametrize("case", ["wrong_shape", "nan"])
def test_keypoint_bad_file_is_one_line_naming_it(case, tmp_path, capsys):
    value, jacobian = np.zeros((4, 3, 2), np.float32), np.zeros((4, 3, 2, 2), np.float32)
    if case == "wrong_shape":
        jacobian = np.zeros((4, 3, 4), np.float32)
        expected = "'jacobian' must be [T, K, 2, 2]"
    else:
        value[2, 1, 0] = np.nan
        expected = "contains NaN or inf (first at frame 2 keypoint 1 x = nan)"
    bad = bad_clip_folder(tmp_path, case, value, jacobian)
    out = tmp_path / "out"
    assert prepare("--kind", "keypoints", "--src", os.path.dirname(bad), "--data_dir", out) == 2
    err = one_error_line(capsys)
    assert bad in err and expected in err
    assert not list((out / "kpflow_keypoints").glob("*/*1.0.0"))  # nothing (half-)written is left


def test_keypoint_missing_or_empty_folder(tmp_path, capsys):
    out = tmp_path / "out"
    assert prepare("--kind", "keypoints", "--src", tmp_path / "none", "--data_dir", out) == 2
    assert "--src" in one_error_line(capsys)
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("not a clip")
    assert prepare("--kind", "keypoints", "--src", tmp_path / "empty", "--data_dir", out) == 2
    err = one_error_line(capsys)
    assert str(tmp_path / "empty") in err and "has no .npz files" in err and "extract_keypoints" in err
    # The library function says the same (one line, naming the folder).
    with pytest.raises(FileNotFoundError, match="does not exist; put per-clip .npz keypoint files there"):
        prepare_keypoints(tmp_path / "none", out)


def test_manual_dir_checked_by_the_builder_too(tmp_path):
    """``tfds build`` users reach the builder without the CLI's checks."""
    builder = kp_tfds.KpflowKeypoints(data_dir=str(tmp_path / "out"), file_format="array_record")
    config = tfds.download.DownloadConfig(manual_dir=str(tmp_path / "missing"))
    with pytest.raises(FileNotFoundError) as e:
        builder.download_and_prepare(download_config=config)
    assert "\n" not in str(e.value) and str(tmp_path / "missing") in str(e.value) and "does not exist" in str(e.value)


# -- videos -----------------------------------------------------------------------------------------


def test_videos_equal_the_folder_reader(video_root, video_data):
    data_dir, prepared = video_data
    assert prepared.name == f"kpflow_videos/{FRAME_SIZE}"
    assert prepared.num_examples == {"test": 2 * 8, "train": 4 * 8}  # one example per frame
    for split in ("train", "test"):
        videos = kp_tfds.TfdsVideos(prepared.name, data_dir, split)
        folder = VideoFolder(video_root, split, frame_shape=(FRAME_SIZE, FRAME_SIZE))
        assert videos.names == folder.names == sorted(folder.names)
        assert videos.frame_shape == folder.frame_shape == (FRAME_SIZE, FRAME_SIZE)
        for i in range(folder.num_videos):
            name, frames = videos.video(i)
            want_name, want = folder.video(i)
            assert name == want_name and frames.dtype == want.dtype and np.array_equal(frames, want)
            assert videos.num_frames(i) == folder.num_frames(i) == 8


@pytest.mark.parametrize("id_sampling", [False, True])
def test_video_pairs_equal_the_folder_readers(video_root, video_data, id_sampling, monkeypatch):
    data_dir, prepared = video_data
    videos = kp_tfds.TfdsVideos(prepared.name, data_dir, "train", id_sampling=id_sampling)
    folder = VideoFolder(video_root, "train", frame_shape=(FRAME_SIZE, FRAME_SIZE), id_sampling=id_sampling)
    assert len(videos) == len(folder) == (2 if id_sampling else 4)
    # A pair decodes its two frames only: never the whole video.
    monkeypatch.setattr(videos, "_frames", lambda i: pytest.fail("a whole video was decoded for a pair"))
    for index in range(len(folder)):
        got = videos.sample_pair(index, np.random.default_rng([index, 7]))
        want = folder.sample_pair(index, np.random.default_rng([index, 7]))
        assert got["name"] == want["name"]
        for key in ("source", "driving"):
            assert got[key].dtype == np.float32 and np.array_equal(got[key], want[key])
        plan = videos.plan_pair(index, np.random.default_rng(index))
        assert plan == folder.plan_pair(index, np.random.default_rng(index))
        made, made_folder = videos.make_pair(plan), folder.make_pair(plan)
        assert np.array_equal(made["source"], made_folder["source"])
        assert np.array_equal(made["driving"], made_folder["driving"])


def test_tfds_videos_pickle_and_read_again(video_root, video_data):
    data_dir, prepared = video_data
    videos = kp_tfds.TfdsVideos(prepared.name, data_dir, "test")
    before = videos.video(1)[1]  # opens the reader
    copy = pickle.loads(pickle.dumps(videos))
    assert copy.names == videos.names and copy.num_frames(0) == videos.num_frames(0)
    assert np.array_equal(copy.video(1)[1], before)
    folder = VideoFolder(video_root, "test", frame_shape=(FRAME_SIZE, FRAME_SIZE))
    assert np.array_equal(copy.frames_at(0, [7, 0]), folder.frames_at(0, [7, 0]))


def test_tfds_videos_missing_split_or_dataset(video_data):
    data_dir, prepared = video_data
    with pytest.raises(ValueError, match=r"has no 'validation' split; its splits: test, train$"):
        kp_tfds.TfdsVideos(prepared.name, data_dir, "validation")
    with pytest.raises(FileNotFoundError) as e:
        kp_tfds.TfdsVideos("kpflow_videos/128", data_dir)
    message = str(e.value)
    assert "\n" not in message and data_dir in message and f"kpflow_videos/{FRAME_SIZE}:1.0.0" in message
    assert "--kind videos" in message and "--frame_size 128" in message


def test_corrupt_video_is_one_line_naming_it(tmp_path, capsys):
    make_synthetic_videos(tmp_path / "src", num_train=2, num_test=0, num_frames=4, size=32, fmt="png")
    corrupt = tmp_path / "src" / "train" / "id0001#broken#000000#000004.mp4"
    corrupt.write_bytes(b"\x00garbage, not a movie" * 50)
    out = tmp_path / "out"
    assert prepare("--kind", "videos", "--src", tmp_path / "src", "--data_dir", out, "--frame_size", 64) == 2
    err = one_error_line(capsys)
    assert str(corrupt) in err and "cannot read video" in err
    assert not list((out / "kpflow_videos").glob("*/*1.0.0"))


def test_videos_need_the_fomm_layout(tmp_path, capsys):
    (tmp_path / "flat").mkdir()
    assert prepare("--kind", "videos", "--src", tmp_path / "flat", "--data_dir", tmp_path / "out") == 2
    assert "has no train/ or test/ folder" in one_error_line(capsys)


# -- BAIR -------------------------------------------------------------------------------------------


def test_bair_mocked(tmp_path):
    with tfds.testing.mock_data(num_examples=3):
        videos = kp_tfds.BairVideos(kp_tfds.BAIR_NAME, str(tmp_path), "train")
        assert videos.names == [f"bair#train#{i:06d}" for i in range(3)] and len(videos) == 3
        assert videos.frame_shape == (64, 64)
        for i in range(3):
            frames = videos.frames_at(i, range(30))
            assert frames.shape == (30, 64, 64, 3) and frames.dtype == np.uint8
            assert videos.num_frames(i) == 30
        pair = videos.sample_pair(2, np.random.default_rng(0))
        assert pair["source"].shape == pair["driving"].shape == (64, 64, 3) and pair["name"] == "bair#train#000002"
        copy = pickle.loads(pickle.dumps(videos))
        assert np.array_equal(copy.video(1)[1], videos.video(1)[1])


def test_bair_not_prepared_or_tfrecord(keypoint_folder, tmp_path):
    with pytest.raises(FileNotFoundError) as e:
        kp_tfds.BairVideos(kp_tfds.BAIR_NAME, str(tmp_path))
    assert "\n" not in str(e.value)
    assert f"tfds build bair_robot_pushing_small --data_dir {tmp_path} --file_format array_record" in str(e.value)
    # Prepared as TFRecord (TFDS's default), a dataset cannot be read at random: said in one line.
    builder = kp_tfds.KpflowKeypoints(data_dir=str(tmp_path), file_format="tfrecord")
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=keypoint_folder))
    with pytest.raises(ValueError, match="is prepared as tfrecord, which cannot be read at random") as e:
        kp_tfds.BairVideos("kpflow_keypoints", str(tmp_path))
    assert "\n" not in str(e.value)


# -- the command line ---------------------------------------------------------------------------


def test_cli_end_to_end(keypoint_folder, tmp_path, capsys):
    held = ["synth00#clip000", "synth02#clip002"]
    split_file = tmp_path / "val.txt"
    split_file.write_text("\n".join(held) + "\n")
    out = tmp_path / "out"
    assert prepare("--kind", "keypoints", "--src", keypoint_folder, "--data_dir", out, "--split_file", split_file) == 0
    lines = capsys.readouterr().out.strip().splitlines()[-3:]
    path = out / "kpflow_keypoints" / "list-val" / "1.0.0"
    assert lines[0] == f"kpflow_keypoints/list-val prepared in {path}"
    assert lines[1].startswith("examples: train 8, validation 2; ") and lines[1].endswith(" on disk")
    assert lines[2] == ("use it: --config.data.kind=tfds --config.data.tfds_name=kpflow_keypoints/list-val "
                        f"--config.data.tfds_data_dir={out}")
    splits = kp_tfds.load_keypoint_splits("kpflow_keypoints/list-val", out)
    assert splits["validation"].names == held
    info = json.loads((path / "dataset_info.json").read_text())
    assert "clips listed in" in info["configDescription"] and info["disableShuffling"]
    # Run again: kept, not rebuilt; --overwrite rebuilds it.
    before = os.path.getmtime(path / "dataset_info.json")
    assert prepare("--kind", "keypoints", "--src", keypoint_folder, "--data_dir", out, "--split_file", split_file) == 0
    assert "kept (already prepared; --overwrite rebuilds it)" in capsys.readouterr().out
    assert os.path.getmtime(path / "dataset_info.json") == before
    assert prepare("--kind", "keypoints", "--src", keypoint_folder, "--data_dir", out, "--split_file", split_file,
                   "--overwrite") == 0
    assert "list-val prepared in" in capsys.readouterr().out


@pytest.mark.parametrize("args, expected", [
    (["--kind", "keypoints", "--frame_size", "64"], "--frame_size does not apply to --kind keypoints"),
    (["--kind", "videos", "--seed", "1", "--val_fraction", "0.3"], "--val_fraction, --seed do not apply"),
    (["--kind", "keypoints", "--split_file", "f", "--holdout_speakers", "a"], "not both"),
    (["--kind", "keypoints", "--holdout_speakers", "a", "--seed", "2"], "apply only without"),
    (["--kind", "keypoints", "--val_fraction", "1.5"], "--val_fraction must be between 0 and 1"),
    (["--kind", "keypoints", "--seed", "-1"], "--seed must be >= 0"),
    (["--kind", "keypoints", "--holdout_speakers", ","], "--holdout_speakers is empty"),
    (["--kind", "keypoints", "--holdout_speakers", "nobody"], "held-out speakers ['nobody'] have no clips"),
    (["--kind", "keypoints", "--split_file", "/nonexistent/val.txt"], "split file '/nonexistent/val.txt' not found"),
    (["--kind", "videos", "--frame_size", "0"], "--frame_size must be >= 1"),
    (["--kind", "movies"], "invalid choice: 'movies'"),
    (["--kind", "keypoints", "--data_dir", "FILE/sub"], "is a file, not a folder"),
    (["--kind", "keypoints", "--src", "FILE"], "--src"),
])
def test_cli_usage_errors(args, expected, keypoint_folder, tmp_path, capsys):
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    defaults = {"--src": keypoint_folder, "--data_dir": str(tmp_path / "out")}
    for flag, value in defaults.items():
        if flag not in args:
            args = [*args, flag, value]
    args = [str(a_file) + a[len("FILE"):] if a.startswith("FILE") else a for a in args]
    assert prepare(*args) == 2
    err = one_error_line(capsys)
    assert err.startswith("python -m kpflow.data.prepare: error: ") and expected in err, err


def test_cli_without_tfds_is_one_line(monkeypatch, keypoint_folder, tmp_path, capsys):
    """Without the extra, the package still imports; any use is one line naming the extra."""
    import importlib

    import kpflow.data

    monkeypatch.setattr(kpflow.data, "tfds", kp_tfds)  # restored afterwards, as sys.modules is
    for module in [m for m in sys.modules if m == "kpflow.data.tfds" or m.startswith("kpflow.data.tfds.")]:
        monkeypatch.delitem(sys.modules, module)
    monkeypatch.setitem(sys.modules, "tensorflow_datasets", None)  # import tensorflow_datasets fails
    package = importlib.import_module("kpflow.data.tfds")
    for name in ("load_keypoint_clips", "TfdsVideos", "BairVideos"):
        with pytest.raises(ImportError, match=r"needs the tfds extra: pip install -e '\.\[tfds\]'$"):
            getattr(package, name)
    assert prepare("--kind", "keypoints", "--src", keypoint_folder, "--data_dir", tmp_path) == 2
    assert "needs the tfds extra: pip install -e '.[tfds]'" in one_error_line(capsys)


# -- eval.extract_keypoints --format tfds -----------------------------------------------------------


def test_extract_keypoints_format_flags(tmp_path, capsys):
    common = ["--fomm", str(tmp_path / "no_fomm"), "--videos", str(tmp_path), "--out", str(tmp_path / "kp")]
    assert ek.main([*common, "--format", "tfds"]) == 2
    assert "--format tfds needs --data_dir" in one_error_line(capsys)
    assert ek.main([*common, "--data_dir", str(tmp_path / "tfds")]) == 2
    assert "--data_dir applies only with --format tfds" in one_error_line(capsys)


def test_extract_keypoints_prepares_the_training_clips(tmp_path):
    """What ``--format tfds`` runs after writing the .npz files (FOMM layout: the train/ clips)."""
    out = tmp_path / "kp"
    write_synthetic_folder(str(out / "train"), num_clips=4, num_speakers=2, min_frames=5, max_frames=6)
    write_synthetic_folder(str(out / "test"), num_clips=2, num_speakers=1, min_frames=5, max_frames=6, seed=1)
    prepared = ek.prepare_extracted(out, tmp_path / "tfds")
    assert prepared.name == "kpflow_keypoints/default" and sum(prepared.num_examples.values()) == 4
    clips = kp_tfds.load_keypoint_clips(prepared.name, tmp_path / "tfds")
    want = load_folder(str(out / "train"))
    assert clips.names == want.names
    assert all(np.array_equal(clips.clips[n], want.clips[n]) for n in want.names)
    # Rebuilt each time: clips written since are in it.
    value, jacobian = np.zeros((3, 10, 2), np.float32), np.tile(np.eye(2, dtype=np.float32), (3, 10, 1, 1))
    save_clip(str(out / "train" / "synth09#new.npz"), value, jacobian)
    prepared = ek.prepare_extracted(out, tmp_path / "tfds")
    assert "synth09#new" in kp_tfds.load_keypoint_clips(prepared.name, tmp_path / "tfds").names


# -- reading without TensorFlow ----------------------------------------------------------------------


def test_reading_does_not_import_tensorflow(keypoint_data, video_data):
    """A trainer that reads prepared datasets never pays for (or needs) TensorFlow."""
    keypoints_dir, _, _ = keypoint_data
    videos_dir, prepared = video_data
    script = textwrap.dedent(f"""
        import sys
        import numpy as np
        from kpflow.data.tfds import TfdsVideos, load_keypoint_clips
        clips = load_keypoint_clips("kpflow_keypoints", {keypoints_dir!r})
        videos = TfdsVideos({prepared.name!r}, {videos_dir!r}, "train")
        pair = videos.sample_pair(0, np.random.default_rng(0))
        assert len(clips) == {SYNTHETIC["num_clips"]} and pair["source"].shape == ({FRAME_SIZE}, {FRAME_SIZE}, 3)
        print("tensorflow" in sys.modules)
    """)
    done = subprocess.run([sys.executable, "-c", script], check=False, cwd=REPO, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "False"


# -- the trainers read a prepared dataset as they read its folder -----------------------------------


def test_training_from_tfds_reproduces_training_from_the_folder(tmp_path):
    """The :cpu VRNN config, same seed, a few steps: the same losses and validation scores either way."""
    from configs import vrnn_vox
    from kpflow.training import forecaster as train_lib

    keypoint_folder, data_dir = str(tmp_path / "clips"), str(tmp_path / "tfds")
    write_synthetic_folder(keypoint_folder, num_clips=8, num_speakers=4, min_frames=30, max_frames=40)
    default = prepare_keypoints(keypoint_folder, data_dir)
    records = {}
    for kind in ("npz", "tfds"):
        config = vrnn_vox.get_config("cpu")
        config.data.update(kind=kind, dir=keypoint_folder, tfds_name=default.name, tfds_data_dir=data_dir,
                           holdout_speakers=["synth01", "synth03"])
        config.train.update(num_epochs=2, steps_per_epoch=3, batch_size=8, val_samples=4)
        train_lib.train_and_evaluate(config, str(tmp_path / kind))
        lines = (tmp_path / kind / "metrics.jsonl").read_text().splitlines()
        records[kind] = [{k: v for k, v in json.loads(ln).items() if k != "seconds"} for ln in lines]
    assert len(records["npz"]) == 2 and records["npz"] == records["tfds"]


def test_fomm_reads_a_prepared_video_dataset_as_its_folder(video_root, video_data):
    from configs import fomm_vox
    from kpflow.data import loaders
    from kpflow.data.video_pairs import PairBatches
    from kpflow.training import fomm as fomm_lib

    data_dir, _ = video_data
    pairs = {}
    for kind in ("folder", "tfds"):
        config = fomm_vox.get_config("tiny")  # 64x64 frames
        config.data.update(kind=kind, dir=video_root, tfds_data_dir=data_dir)  # tfds_name kpflow_videos -> /64
        train, test, augment = fomm_lib.load_data(config)
        assert train.num_videos == 4 and test.num_videos == 2
        batches = PairBatches(train, 4, num_repeats=3, seed=1, augment=augment)
        pairs[kind] = list(loaders.Loader(loaders.PairBatchSource(batches, 4)))
    assert all(np.array_equal(a[k], b[k]) for a, b in zip(pairs["folder"], pairs["tfds"]) for k in a)
    config = fomm_vox.get_config("tiny")
    config.data.update(kind="tfds", tfds_data_dir=data_dir, frame_shape=(128, 128, 3), tfds_name="kpflow_videos/64")
    with pytest.raises(ValueError, match="holds 64x64 frames but config.data.frame_shape is \\(128, 128\\)"):
        fomm_lib.load_data(config)
    config.data.tfds_data_dir = ""
    with pytest.raises(ValueError, match="needs --config.data.tfds_name and --config.data.tfds_data_dir"):
        fomm_lib.load_data(config)


def test_a_dataset_records_the_checksum_of_every_source(keypoint_folder, keypoint_data, video_root, video_data):
    import hashlib

    data_dir, default, _ = keypoint_data
    sources = tfds.builder(default.name, data_dir=data_dir).info.metadata[kp_tfds.SOURCES_KEY]
    files = sorted(f for f in os.listdir(keypoint_folder) if f.endswith(".npz"))
    assert sorted(sources) == files
    for f in files:
        with open(os.path.join(keypoint_folder, f), "rb") as file:
            data = file.read()
        assert sources[f] == {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    video_dir, prepared = video_data
    sources = tfds.builder(prepared.name, data_dir=video_dir).info.metadata[kp_tfds.SOURCES_KEY]
    videos = sorted(os.path.relpath(os.path.join(d, f), video_root) for d, _, names in os.walk(video_root)
                    for f in names)
    assert sorted(sources) == videos and all(len(s["sha256"]) == 64 and s["bytes"] > 0 for s in sources.values())


def test_fomm_trainer_reads_a_prepared_dataset_through_a_worker(video_root, tmp_path, monkeypatch):
    """The FOMM trainer's loop on kpflow_videos: a grain worker process decodes the pairs the step
    receives (they equal the folder's pairs) and the checkpoint keeps the pipeline's position. The
    jitted FOMM step is replaced by one that records its batches (its own tests train it)."""
    import dataclasses

    from configs import fomm_vox
    from kpflow.data import loaders
    from kpflow.data.video_pairs import PairBatches
    from kpflow.training import fomm as fomm_lib

    seen = []

    def recording_step(nets, config, opt_gen, opt_disc, vgg_apply):
        def step(state, batch):
            seen.append({k: np.asarray(v) for k, v in batch.items()})
            return dataclasses.replace(state, step=state.step + 1), {"total": np.float32(1.0)}, None
        return step

    monkeypatch.setattr(fomm_lib, "make_train_step", recording_step)
    data_dir = tmp_path / "tfds"
    prepared = prepare_videos(video_root, data_dir, frame_size=32)
    config = fomm_vox.get_config("tiny")
    config.data.update(kind="tfds", tfds_data_dir=str(data_dir), frame_shape=(32, 32, 3), worker_count=1)
    config.train.update(scales=(1, 0.5), batch_size=2, num_repeats=2, max_steps=3, log_every=1, eval_clips=0,
                        image_every=0)
    fomm_lib.train_and_evaluate(config, str(tmp_path / "run"))
    assert prepared.name == "kpflow_videos/32" and len(seen) == 3
    folder = VideoFolder(video_root, "train", frame_shape=(32, 32))
    _, _, augment = fomm_lib.load_data(config)
    want = list(PairBatches(folder, 2, num_repeats=2, seed=config.seed, augment=augment).epoch(0))[:3]
    assert all(np.array_equal(a[k], b[k]) for a, b in zip(seen, want) for k in ("source", "driving"))
    meta = json.loads((tmp_path / "run" / "checkpoints" / "3" / "meta" / "metadata").read_text())
    assert meta[loaders.STATE_KEY]["next_batch"] == 3 and meta[loaders.STATE_KEY]["worker_count"] == 1
