"""End to end: ``python -m eval.video`` on generated 64x64 videos, a tiny random FOMM and two tiny
forecaster runs written in the real run-directory format (config, split, orbax checkpoint)."""

from __future__ import annotations

import json
import math

import jax
import jax.numpy as jnp
import pytest

from configs import demo
from configs.fomm_common import fomm_config
from eval import video as ev
from kpflow import checkpoint
from kpflow.data.config import load_splits
from kpflow.data.synthetic_video import make_synthetic_videos
from kpflow.fomm.model import random_fomm, save_model

N, M = 6, 6


@pytest.fixture(scope="module")
def fomm_dir(tmp_path_factory):
    fomm = random_fomm(fomm_config("vox", "tiny"))
    path = tmp_path_factory.mktemp("fomm")
    save_model(str(path), fomm.config, fomm.variables, {"note": "random init for tests"})
    return path


def write_forecaster_run(workdir, model: str, horizon: str = "6-6"):
    """A run directory as train.forecaster writes it, holding freshly initialised variables."""
    config = demo.get_config(f"{model},horizon={horizon}")
    if model == "vrnn":
        # Untrained, the equivariant VRNN's decoder mean (zero-initialised, odd in z) is 0 for every
        # z, so its samples coincide; decoder noise gives the diversity tables something to measure.
        config.model.decoder_temperature = 0.5
    train, val = load_splits(config.data)
    forecaster = checkpoint.build_forecaster(config, train.dim)
    length = config.num_observed + config.num_predicted
    # Jitted: the same variables as an eager init, in a fraction of the time.
    variables = jax.jit(forecaster.init)(jax.random.key(0), jnp.zeros((1, length, train.dim)))
    checkpoint.save_config(str(workdir), config)
    checkpoint.save_split(str(workdir), train, val, config.data)
    with checkpoint.CheckpointStore(str(workdir)) as store:
        store.save(0, variables, None, {"step": 0, "epoch": 0}, is_best=True)
    return workdir


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    return {
        "vrnn": write_forecaster_run(root / "vrnn", "vrnn"),
        "grunf": write_forecaster_run(root / "grunf", "grunf"),
        "vrnn_12": write_forecaster_run(root / "vrnn_12", "vrnn", "12-12"),
    }


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    root = tmp_path_factory.mktemp("videos")
    make_synthetic_videos(root, 0, 3, num_frames=2 * (N + M) + 3, size=64, seed=0)  # 2 full blocks + a partial one
    short = tmp_path_factory.mktemp("short")
    make_synthetic_videos(short, 0, 1, num_frames=N + M - 2, size=64, seed=1)
    return root, short


def run_cli(fomm_dir, videos, out, *extra) -> int:
    return ev.main(["--fomm", str(fomm_dir), "--videos", str(videos), "--out", str(out), "--horizon", f"{N}-{M}",
                    "--chunk_size", "8", *extra])


def test_reconstruction_end_to_end(fomm_dir, runs, videos, tmp_path, capsys):
    out = tmp_path / "rec"
    code = run_cli(fomm_dir, videos[0], out, "--forecaster", str(runs["vrnn"]), "--forecaster", str(runs["grunf"]),
                   "--samples", "4", "--top_k", "2", "--diversity_windows", "1")
    assert code == 0, capsys.readouterr().err
    result = json.loads((out / "results.json").read_text())
    assert set(result["single"]) == {ev.NO_FORECAST, ev.HOLD_LAST, "vrnn", "grunf"}
    assert len(result["clips"]) == 3
    for row in result["single"].values():
        assert all(math.isfinite(row[k]) for k in ("mae", "ssim", "mae_all_frames", "kp_mae"))
        assert row["jedi"] is not None and math.isfinite(row["jedi"])
        assert row["frames_scored"] == 3 * 2 * M  # two full blocks per clip; the partial one has no forecast
    single = result["single"]
    assert single[ev.NO_FORECAST]["kp_mae"] == 0.0  # it renders the detected keypoints themselves
    assert single[ev.HOLD_LAST]["kp_mae"] > 0.0
    # Forecast frames differ from FOMM's; transmitted frames are identical, so the all-frames MAE is closer.
    assert single[ev.HOLD_LAST]["mae"] != single[ev.NO_FORECAST]["mae"]
    assert set(result["diversity"]) == {"vrnn", "grunf", ev.NO_FORECAST, ev.HOLD_LAST}
    for name in (ev.NO_FORECAST, ev.HOLD_LAST):  # the baselines on the same blocks
        assert result["diversity"][name]["baseline"] and result["diversity"][name]["windows"] == 3
    assert result["diversity"][ev.NO_FORECAST]["mae"] != result["diversity"][ev.HOLD_LAST]["mae"]
    for name in ("vrnn", "grunf"):
        row = result["diversity"][name]
        assert row["windows"] == 3 and row["samples"] == 4 and row["top_k"] == 2
        assert row["mae_best"] <= row["mae"] + 1e-7 <= row["mae_mean"] + 2e-7
        assert row["apd"] > 0 and math.isfinite(row["energy_score"])
        assert len(row["ratio_per_video"]) == 3
    md = (out / "tables.md").read_text()
    assert "| hold-last |" in md and "ratio mean" in md
    for name in ("frames.png", "ratio_density.png", "samples_vrnn.gif", "samples_grunf.gif"):
        assert (out / name).stat().st_size > 0, name
    assert "written to" in capsys.readouterr().out


def test_transfer_mode_uses_fomm_as_the_reference(fomm_dir, runs, videos, tmp_path, capsys):
    out = tmp_path / "tr"
    code = run_cli(fomm_dir, videos[0], out, "--forecaster", str(runs["vrnn"]), "--mode", "transfer",
                   "--samples", "1", "--max_clips", "2")
    assert code == 0, capsys.readouterr().err
    result = json.loads((out / "results.json").read_text())
    assert result["single"][ev.NO_FORECAST].get("reference") is True
    assert result["single"]["vrnn"]["mae"] > 0 and result["diversity"] == {}
    assert result["single"]["vrnn"]["jedi"] is not None and ev.NO_FORECAST not in (result.get("jedi") or {})
    assert "| FOMM (no forecast) | reference |" in (out / "tables.md").read_text()


@pytest.mark.parametrize(
    "args, message",
    [
        (["--forecaster", "RUN:vrnn_12"], "trained for 12-12"),
        (["--forecaster", "/no/such/run"], "does not exist"),
        (["--videos_short"], "shorter than one 12-frame block"),
        (["--mode", "transfer", "--max_clips", "1"], "at least two clips"),
        (["--horizon", "6x6"], "N-M"),
        (["--features", "vjepa", "--vjepa_weights", "/no/such/vith16.pth.tar"], "/no/such/vith16.pth.tar"),
    ],
)
def test_bad_input_gives_one_line_errors(fomm_dir, runs, videos, tmp_path, capsys, args, message):
    args = [a.replace("RUN:vrnn_12", str(runs["vrnn_12"])) for a in args]
    root = videos[1] if "--videos_short" in args else videos[0]
    args = [a for a in args if a != "--videos_short"]
    code = run_cli(fomm_dir, root, tmp_path / "x", *args)
    err = capsys.readouterr().err.strip()
    last = err.splitlines()[-1].split("\r")[-1]  # progress bars may precede it
    assert code == 2 and last.startswith("error: ") and message in last, err
    assert "Traceback" not in err


def test_missing_fomm_and_skip_short(fomm_dir, videos, tmp_path, capsys):
    assert run_cli(tmp_path / "nofomm", videos[0], tmp_path / "x") == 2
    assert "does not exist" in capsys.readouterr().err
    # --skip_short with only short clips: nothing left to evaluate, said in one line
    assert run_cli(fomm_dir, videos[1], tmp_path / "y", "--skip_short") == 2
    assert "no clip holds a full 12-frame block" in capsys.readouterr().err


def test_unwritable_out_fails_before_reading_anything(tmp_path, capsys):
    """``--out`` a file or under one: one line, before the videos or the FOMM are looked at (both
    are missing here, and not the error)."""
    a_file = tmp_path / "a_file"
    a_file.write_text("")
    for out, message in ((a_file, "is a file; give a folder"), (a_file / "sub", "is a file, not a folder")):
        assert run_cli(tmp_path / "no_fomm", tmp_path / "no_videos", out) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: --out") and message in err and "\n" not in err, err
