"""eval.extract_keypoints: the shared .npz format, batch padding, unreadable videos, bad arguments.

A tiny randomly initialised FOMM (64x64 frames) is written once per module; keypoint values do not
matter here, only shapes, consistency and the command line's behaviour.
"""

import pathlib
import subprocess
import sys

import jax
import numpy as np
import pytest

from configs.fomm_common import fomm_config
from eval import extract_keypoints as ek
from kpflow.data.clips import load_clip
from kpflow.data.synthetic_video import make_synthetic_videos
from kpflow.fomm.model import build_networks, init_variables, save_model
from kpflow.io import extract_keypoints

REPO = pathlib.Path(__file__).resolve().parent.parent
NUM_FRAMES = 7  # not a multiple of the batch sizes used, so the last batch is padded


@pytest.fixture(scope="module")
def fomm_dir(tmp_path_factory):
    """A tiny FOMM directory (random weights, 64x64 frames)."""
    config = fomm_config("vox", "tiny")
    nets = build_networks(config.model)
    shape = tuple(config.data.frame_shape)
    # Jitted, with the "unsafe_rbg" generator: XLA compiles threefry draws for every parameter
    # slowly on a CPU (~30 s here, against ~4 s).
    init = jax.jit(lambda key: init_variables(nets, key, shape, with_discriminator=False))
    variables = init(jax.random.key(0, impl="unsafe_rbg"))
    path = tmp_path_factory.mktemp("fomm")
    save_model(str(path), config, variables, {"note": "random init for tests"})
    return path


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    """``(root, {"train": [2 mp4 paths], "test": [1 path]})``: 64x64 clips of NUM_FRAMES frames."""
    root = tmp_path_factory.mktemp("videos")
    written = make_synthetic_videos(root, 2, 1, num_frames=NUM_FRAMES, size=64, seed=0)
    return root, written


def extract(fomm_dir, videos, out, *extra) -> int:
    """The CLI in-process; returns its exit status."""
    return ek.main(["--fomm", str(fomm_dir), "--videos", str(videos), "--out", str(out), *extra])


def test_cli_writes_shared_format_mirroring_splits(fomm_dir, videos, tmp_path, capsys):
    root, written = videos
    out = tmp_path / "kp"
    assert extract(fomm_dir, root, out, "--batch_size", "4") == 0
    for split, paths in written.items():
        for video in paths:
            path = out / split / f"{video.stem}.npz"
            with np.load(path) as f:
                assert sorted(f.files) == ["jacobian", "value"]
                value, jacobian = f["value"], f["jacobian"]
            assert value.shape == (NUM_FRAMES, 10, 2) and value.dtype == np.float32
            assert jacobian.shape == (NUM_FRAMES, 10, 2, 2) and jacobian.dtype == np.float32
            assert np.isfinite(value).all() and np.abs(value).max() <= 1.0
            assert load_clip(str(path)).shape == (NUM_FRAMES, 60)  # the project's loader reads it
    expected = sorted(f"{v.stem}.npz" for v in written["train"])
    assert sorted(p.name for p in (out / "train").iterdir()) == expected  # no temporary files left
    assert "3 clips written" in capsys.readouterr().out

    # A rerun skips what exists (and says so); --overwrite redoes it; a single file works too.
    test_npz = out / "test" / f"{written['test'][0].stem}.npz"
    before = test_npz.stat().st_mtime_ns
    assert extract(fomm_dir, root, out) == 0
    captured = capsys.readouterr()
    assert "skipping 3 of 3 clips" in captured.err and "0 clips written" in captured.out
    assert test_npz.stat().st_mtime_ns == before
    assert extract(fomm_dir, written["test"][0], out / "test", "--overwrite") == 0
    assert "1 clips written" in capsys.readouterr().out
    assert test_npz.stat().st_mtime_ns != before


def test_batch_padding_gives_the_same_keypoints(fomm_dir, videos):
    import kpflow.fomm
    from kpflow.data.videos import read_video

    fomm = kpflow.fomm.load(str(fomm_dir))
    frames = read_video(videos[1]["train"][0], (64, 64))
    v3, j3 = extract_keypoints(fomm, frames, batch_size=3)  # batches 3 + 3 + 1 (padded)
    v64, j64 = extract_keypoints(fomm, frames, batch_size=64)  # one padded batch
    assert v3.shape == v64.shape == (NUM_FRAMES, 10, 2) and j3.shape == (NUM_FRAMES, 10, 2, 2)
    assert v3.dtype == j3.dtype == np.float32
    np.testing.assert_allclose(v3, v64, atol=1e-5)
    np.testing.assert_allclose(j3, j64, atol=1e-5)
    # ... and the same as detecting that frame on its own.
    one = fomm.detect(frames[4:5])
    np.testing.assert_allclose(v3[4], np.asarray(one.value)[0], atol=1e-5)
    with pytest.raises(ValueError, match=r"\[T, H, W, 3\]"):
        extract_keypoints(fomm, frames[0], batch_size=3)


def test_corrupt_video_is_reported_and_skipped(fomm_dir, videos, tmp_path, capsys):
    folder = tmp_path / "vids"
    folder.mkdir()
    for video in videos[1]["train"]:
        (folder / video.name).write_bytes(video.read_bytes())
    (folder / "bad.mp4").write_bytes(np.random.default_rng(0).bytes(4096))
    out = tmp_path / "kp"
    status = extract(fomm_dir, folder, out, "--batch_size", "4")
    captured = capsys.readouterr()
    assert status == 1
    expected = sorted(f"{v.stem}.npz" for v in videos[1]["train"])
    assert sorted(p.name for p in out.iterdir()) == expected
    report = [line for line in captured.err.splitlines() if "bad.mp4" in line]
    assert report and "cannot read video" in report[0]
    assert "2 clips written" in captured.out and "1 skipped (unreadable)" in captured.out
    assert "bad.mp4" in captured.out.splitlines()[-1]


def test_bad_arguments_exit_2_with_one_line(fomm_dir, videos, tmp_path, capsys):
    root, out = videos[0], tmp_path / "o"
    assert extract(tmp_path / "nope", root, out) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "nope" in err and "does not exist" in err
    assert extract(fomm_dir, tmp_path / "none", out) == 2
    assert "does not exist" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert extract(fomm_dir, tmp_path / "empty", out) == 2
    assert "no videos" in capsys.readouterr().err
    assert extract(fomm_dir, root, out, "--batch_size", "0") == 2
    assert "--batch_size" in capsys.readouterr().err
    assert not out.exists()


def test_unwritable_output_fails_before_any_work(fomm_dir, videos, tmp_path, capsys):
    """``--out`` a file, or a folder under a file: one line, exit status 2, nothing detected."""
    a_file = tmp_path / "a_file"
    a_file.write_text("")
    for out, message in ((a_file, "is a file; give a folder"), (a_file / "kp", "is a file, not a folder")):
        assert extract(fomm_dir, videos[0], out) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and message in err, err
        assert err.startswith("python -m eval.extract_keypoints: error: --out")


def test_module_runs_as_a_subprocess(tmp_path):
    """``python -m eval.extract_keypoints``: exit status 2 and no traceback for a missing FOMM."""
    argv = ["--fomm", str(tmp_path / "missing"), "--videos", str(tmp_path), "--out", str(tmp_path)]
    proc = subprocess.run(
        [sys.executable, "-m", "eval.extract_keypoints", *argv],
        check=False, capture_output=True, text=True, timeout=120, cwd=REPO,
    )
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert "missing" in proc.stderr
