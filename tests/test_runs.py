"""kpflow.runs: loading what the trainers wrote, every failure one UsageError line.

A tiny FOMM directory and a tiny forecaster run are written in the real formats (config, orbax
checkpoint; zero weights of the right shapes, so nothing is compiled), then copied and broken:
missing, without a config, with a truncated or bit-flipped checkpoint.
"""

from __future__ import annotations

import json
import shutil
import types
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kpflow import checkpoint, runs
from kpflow.cli import UsageError


def zeros_like_shapes(tree):
    return jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), tree)


@pytest.fixture(scope="module")
def fomm_dir(tmp_path_factory) -> Path:
    from configs.fomm_common import fomm_config
    from kpflow.fomm.model import build_networks, frame_shape_of, init_variables, save_model

    config = fomm_config("vox", "tiny")
    nets = build_networks(config.model)
    shapes = jax.eval_shape(
        lambda k: init_variables(nets, k, frame_shape_of(config), with_discriminator=False), jax.random.key(0)
    )
    path = tmp_path_factory.mktemp("fomm")
    save_model(str(path), config, zeros_like_shapes(shapes), {"note": "zero weights for tests"})
    return path


@pytest.fixture(scope="module")
def forecaster_dir(tmp_path_factory) -> Path:
    from configs import demo
    from kpflow.data.config import load_splits
    from kpflow.run_store import CheckpointStore

    config = demo.get_config("grunf,horizon=6-6")
    train, val = load_splits(config.data)
    forecaster = checkpoint.build_forecaster(config, train.dim)
    length = config.num_observed + config.num_predicted
    shapes = jax.eval_shape(forecaster.init, jax.random.key(0), jnp.zeros((1, length, train.dim)))
    workdir = tmp_path_factory.mktemp("run")
    checkpoint.save_config(str(workdir), config)
    checkpoint.save_split(str(workdir), train, val, config.data)
    with CheckpointStore(str(workdir)) as store:
        store.save(0, zeros_like_shapes(shapes), None, {"step": 0, "epoch": 0}, is_best=True)
    return workdir


def copy_of(directory: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(directory, tmp_path / directory.name))


def truncate_largest(directory: Path, name: str) -> None:
    """Cut the largest file of the checkpoint ``name`` in half."""
    biggest = max((p for p in (directory / name).rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
    data = biggest.read_bytes()
    biggest.write_bytes(data[: len(data) // 2])


def truncate_array_data(directory: Path, name: str) -> None:
    """Cut every array data file of the checkpoint ``name`` in half, its metadata left intact."""
    chunks = [p for p in (directory / name).rglob("*") if p.is_file() and p.parent.name == "d"]
    assert chunks, f"no array data files under {directory / name}: has orbax's layout changed?"
    for path in chunks:
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])


def flip_bytes(directory: Path, name: str) -> None:
    """Invert bytes spread over every file of the checkpoint ``name`` (its metadata and data)."""
    for path in (p for p in (directory / name).rglob("*") if p.is_file() and p.stat().st_size > 16):
        data = bytearray(path.read_bytes())
        for i in range(0, len(data), max(1, len(data) // 64)):
            data[i] ^= 0xFF
        path.write_bytes(bytes(data))


def one_line_usage_error(call, *match: str) -> str:
    with pytest.raises(UsageError) as e:
        call()
    message = str(e.value)
    assert "\n" not in message and "Traceback" not in message, message
    for m in match:
        assert m in message, message
    return message


# -- FOMM directories ----------------------------------------------------------------------------


def test_load_fomm_of_a_good_directory(fomm_dir):
    fomm = runs.load_fomm(str(fomm_dir))
    assert fomm.num_kp == 10
    assert "kp_detector" in runs.load_fomm_config(str(fomm_dir)).model


def test_load_fomm_missing_or_without_config(fomm_dir, tmp_path):
    one_line_usage_error(lambda: runs.load_fomm(str(tmp_path / "nowhere"), "--teacher"), "--teacher", "does not exist")
    (tmp_path / "empty").mkdir()
    one_line_usage_error(lambda: runs.load_fomm(str(tmp_path / "empty")), "config.json")
    damaged = copy_of(fomm_dir, tmp_path)
    (damaged / "config.json").write_text('{"model": {"kp_det')
    one_line_usage_error(lambda: runs.load_fomm_config(str(damaged)), "cannot load FOMM", str(damaged))


def test_load_fomm_of_a_forecaster_run_says_so(forecaster_dir):
    one_line_usage_error(lambda: runs.load_fomm(str(forecaster_dir)), "not a FOMM config")


@pytest.mark.parametrize("damage", [truncate_largest, truncate_array_data, flip_bytes])
def test_load_fomm_with_a_corrupt_checkpoint(fomm_dir, tmp_path, damage):
    broken = copy_of(fomm_dir, tmp_path)
    damage(broken, "checkpoints")
    message = one_line_usage_error(lambda: runs.load_fomm(str(broken)), f"cannot load FOMM from {str(broken)!r}")
    assert len(message) < 500, message  # a storage library's error is cut short


# -- forecaster runs -----------------------------------------------------------------------------


def test_load_forecaster_of_a_good_run(forecaster_dir):
    trained = runs.load_forecaster(str(forecaster_dir))
    assert trained.forecaster.name == "grunf" and (trained.forecaster.num_observed, trained.forecaster.horizon) == (6, 6)


def test_load_forecaster_missing_or_without_config(forecaster_dir, tmp_path):
    one_line_usage_error(lambda: runs.load_forecaster(str(tmp_path / "nowhere"), flag="--forecaster"),
                         "--forecaster", "does not exist")
    (tmp_path / "empty").mkdir()
    one_line_usage_error(lambda: runs.load_forecaster(str(tmp_path / "empty")), "config.json")
    no_config = copy_of(forecaster_dir, tmp_path)
    (no_config / "config.json").unlink()
    one_line_usage_error(lambda: runs.load_forecaster(str(no_config)), "config.json")


def test_load_forecaster_of_a_fomm_directory(fomm_dir):
    one_line_usage_error(lambda: runs.load_forecaster(str(fomm_dir)), str(fomm_dir))


@pytest.mark.parametrize("damage", [truncate_largest, truncate_array_data, flip_bytes])
def test_load_forecaster_with_a_corrupt_checkpoint(forecaster_dir, tmp_path, damage):
    broken = copy_of(forecaster_dir, tmp_path)
    damage(broken, "best")
    message = one_line_usage_error(lambda: runs.load_forecaster(str(broken)),
                                   f"cannot load the forecaster in {str(broken)!r}")
    assert len(message) < 500, message


def test_load_forecaster_unknown_checkpoint_name(forecaster_dir):
    one_line_usage_error(lambda: runs.load_forecaster(str(forecaster_dir), which="newest"), "newest")


def test_load_forecaster_falls_back_to_data_dir_when_the_data_moved(forecaster_dir, tmp_path, monkeypatch):
    calls = []

    def load_trained(workdir, which="best", data_dir=None):
        calls.append(data_dir)
        if data_dir is None:
            raise FileNotFoundError("the training data of the run is not at 'old/place' any more")
        return types.SimpleNamespace(workdir=workdir)

    monkeypatch.setattr(checkpoint, "load_trained", load_trained)
    assert runs.load_forecaster(str(forecaster_dir), data_dir="new/place").workdir == str(forecaster_dir)
    assert calls == [None, "new/place"]
    # Without a data_dir the first error is the message.
    one_line_usage_error(lambda: runs.load_forecaster(str(forecaster_dir)), "not at 'old/place'")


# -- check_forecaster_fits -----------------------------------------------------------------------


def fake_trained(dim=60, num_observed=6, horizon=6, any_horizon=False):
    module = type("Module", (), {"any_horizon": any_horizon})()
    forecaster = types.SimpleNamespace(dim=dim, num_observed=num_observed, horizon=horizon, module=module)
    return types.SimpleNamespace(forecaster=forecaster, workdir="runs/x")


def test_check_forecaster_fits():
    runs.check_forecaster_fits(fake_trained(), 60, 6, 6)
    runs.check_forecaster_fits(fake_trained(any_horizon=True), 60, 6, 12)  # any horizon
    one_line_usage_error(lambda: runs.check_forecaster_fits(fake_trained(dim=30), 60, 6, 6),
                         "--forecaster 'runs/x' forecasts 30 numbers", "10 keypoints")
    one_line_usage_error(lambda: runs.check_forecaster_fits(fake_trained(), 60, 6, 12), "trained for 6-6")
    one_line_usage_error(lambda: runs.check_forecaster_fits(fake_trained(any_horizon=True), 60, 12, 12, "--model"),
                         "--model", "trained for 6-6")


def test_saved_run_is_what_load_trained_reads(forecaster_dir):
    """The fixture writes the real format: its split file names the clips the loader returns."""
    split = json.loads((forecaster_dir / "split.json").read_text())
    assert runs.load_forecaster(str(forecaster_dir)).train_clips.names == split["train"]
