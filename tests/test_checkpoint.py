"""Run directories and checkpoints: save / restore leaf by leaf, load_trained, resuming a run, and
the checkpoint store keeping ``checkpoints/`` and ``best/`` consistent across kills and restarts.

The model under test is the tiny stand-in of test_train_cli.py (registered as ``"tiny"``), so these
tests do not depend on the real forecasters.
"""

import contextlib
import io
import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_train_cli import TINY, TINY_ENTRY, tiny_config

from kpflow import checkpoint, forecast, run_store
from kpflow.data import write_synthetic_folder
from kpflow.keypoints import CausalScaler
from kpflow.run_store import BEST_STEP_KEY
from kpflow.training import forecaster as train_lib


@pytest.fixture
def tiny_model(monkeypatch):
    """Registers the stand-in model as ``"tiny"`` for the duration of a test."""
    monkeypatch.setitem(forecast.REGISTRY, TINY, TINY_ENTRY)
    return TINY


def assert_trees_equal(a, b):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for (path, x), y in zip(jax.tree_util.tree_leaves_with_path(a), jax.tree.leaves(b)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y), err_msg=jax.tree_util.keystr(path))


def test_save_restore_round_trip(tmp_path, tiny_model):
    config = tiny_config()
    model = checkpoint.build_forecaster(config, 60)
    rng = np.random.default_rng(0)
    batch = rng.normal(size=(4, 12, 60)).astype(np.float32)
    scaler = CausalScaler.fit([rng.normal(2.0, 3.0, size=(50, 60))])
    variables = jax.jit(model.init)(jax.random.key(1), batch, scaler)
    assert set(variables) == {"params", "batch_stats", "scaler"}
    train = {"opt_state": (jnp.arange(3.0), {"m": jnp.ones((2, 2))}), "rng": jax.random.key_data(jax.random.key(3))}
    with checkpoint.CheckpointStore(str(tmp_path), keep=2) as store:
        store.save(7, variables, train, {"step": 7, "epoch": 1, "val": {"energy_score": 1.5}}, is_best=True)
    with checkpoint.CheckpointStore(str(tmp_path), read_only=True) as store:
        got, got_train, meta = store.restore("latest", variables, train)
        best, none, best_meta = store.restore("best", variables)
    assert_trees_equal(got, variables)
    assert_trees_equal(best, variables)
    assert_trees_equal(got_train, train)
    assert none is None and meta["step"] == 7 and best_meta["val"]["energy_score"] == 1.5
    np.testing.assert_allclose(np.asarray(got["scaler"]["loc"]), np.asarray(scaler.loc))


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Two runs of the same 4-epoch config: one straight, one stopped after epoch 2 and resumed."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(forecast.REGISTRY, TINY, TINY_ENTRY)
        root = tmp_path_factory.mktemp("runs")
        straight, resumed = str(root / "straight"), str(root / "resumed")
        config = tiny_config(epochs=4, steps=4)
        stderr = io.StringIO()  # not a terminal: the progress bar must write plain lines
        with contextlib.redirect_stderr(stderr):
            train_lib.train_and_evaluate(config, straight)
        train_lib.train_and_evaluate(config, resumed, stop_after_epoch=2)
        with open(os.path.join(resumed, "metrics.jsonl")) as f:
            epochs_after_stop = [json.loads(line)["epoch"] for line in f]
        best = train_lib.train_and_evaluate(config, resumed)
        yield {"straight": straight, "resumed": resumed, "best": best, "epochs_after_stop": epochs_after_stop,
               "stderr": stderr.getvalue()}


def test_resume_continues_exactly(runs, tiny_model):
    """2 epochs, 'preempted', resumed to 4 == 4 uninterrupted epochs, with no duplicated metrics."""
    assert runs["epochs_after_stop"] == [1, 2]
    with open(os.path.join(runs["resumed"], "metrics.jsonl")) as f:
        records = [json.loads(line) for line in f]
    assert [r["epoch"] for r in records] == [1, 2, 3, 4]
    assert [r["step"] for r in records] == [4, 8, 12, 16]
    a = checkpoint.load_trained(runs["straight"], which="latest")
    b = checkpoint.load_trained(runs["resumed"], which="latest")
    assert a.step == b.step == 16
    assert_trees_equal(a.variables, b.variables)  # same data order, rngs and optimizer state


def test_load_trained(runs, tiny_model):
    trained = checkpoint.load_trained(runs["resumed"])  # which="best"
    best = runs["best"]
    assert trained.step == best["step"] and trained.meta["epoch"] == best["epoch"]
    assert set(trained.variables) == {"params", "batch_stats", "scaler"}
    assert all(isinstance(x, jax.Array) for x in jax.tree.leaves(trained.variables))
    assert trained.forecaster.name == TINY and trained.config.model.name == TINY
    assert trained.config.num_observed == 6 and trained.config.horizon == "6-6"
    with open(os.path.join(runs["resumed"], "split.json")) as f:
        assert trained.train_clips.names == json.load(f)["train"]
    assert trained.val_names and not set(trained.val_names) & set(trained.train_clips.names)
    # The scaler is the training split's, not an identity.
    expected = CausalScaler.fit(trained.train_clips.series())
    np.testing.assert_allclose(np.asarray(trained.variables["scaler"]["scale"]), np.asarray(expected.scale), rtol=1e-6)
    context = trained.train_clips.series()[0][None, :6]
    sample = jax.jit(trained.forecaster.sample, static_argnums=(2, 4))
    samples = sample(trained.variables, context, 6, jax.random.key(0), 3)
    assert samples.shape == (3, 1, 6, 60) and np.isfinite(np.asarray(samples)).all()


def test_resume_with_more_epochs_and_refuse_other_runs(runs, tiny_model, tmp_path):
    workdir = str(tmp_path / "run")
    shutil.copytree(runs["resumed"], workdir)
    train_lib.train_and_evaluate(tiny_config(epochs=5, steps=4), workdir)  # continues at epoch 5
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        assert [json.loads(line)["step"] for line in f] == [4, 8, 12, 16, 20]
    assert checkpoint.load_trained(workdir, which="latest").step == 20
    assert len(os.listdir(os.path.join(workdir, "checkpoints"))) == 2  # keep_checkpoints

    other = tiny_config()
    other.model.hidden = 4
    with pytest.raises(ValueError, match="different model"):
        train_lib.prepare(other, workdir)
    other = tiny_config()
    other.horizon, other.num_observed, other.num_predicted = "12-12", 12, 12
    with pytest.raises(ValueError, match="different horizon"):
        train_lib.prepare(other, workdir)


def test_load_trained_errors(runs, tiny_model, tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        checkpoint.load_trained(str(tmp_path / "nowhere"))
    with pytest.raises(FileNotFoundError, match="no training run"):
        checkpoint.load_trained(str(tmp_path))
    with pytest.raises(ValueError, match="which"):
        checkpoint.load_trained(runs["resumed"], which="newest")

    # The run's data as a keypoint folder that then moves away.
    workdir = str(tmp_path / "run")
    shutil.copytree(runs["resumed"], workdir)
    config = checkpoint.load_config(workdir)
    data = tmp_path / "kp"
    write_synthetic_folder(str(data), **config.data.synthetic)
    config.data.kind, config.data.dir = "npz", str(tmp_path / "moved")
    checkpoint.save_config(workdir, config)
    with pytest.raises(FileNotFoundError, match="data_dir") as err:
        checkpoint.load_trained(workdir)
    assert "\n" not in str(err.value)
    assert checkpoint.load_trained(workdir, data_dir=str(data)).step == 16
    # A folder with more clips than the run saw: the saved split picks the training clips.
    more = tmp_path / "more"
    write_synthetic_folder(str(more), **dict(config.data.synthetic, num_clips=9))
    trained = checkpoint.load_trained(workdir, data_dir=str(more))
    assert trained.train_clips.names == checkpoint.load_split(workdir)["train"]
    shutil.rmtree(os.path.join(workdir, "best"))
    with pytest.raises(FileNotFoundError, match="best"):
        checkpoint.load_trained(workdir, data_dir=str(data))


def test_progress_in_a_log_file_has_no_carriage_returns(runs):
    assert "train:" in runs["stderr"] and "16/16" in runs["stderr"]
    assert "\r" not in runs["stderr"]


def test_best_checkpoint_has_the_lowest_balanced_score(runs, tiny_model):
    with open(os.path.join(runs["straight"], "metrics.jsonl")) as f:
        records = [json.loads(line) for line in f]
    for r in records:
        val = {k.removeprefix("val/"): v for k, v in r.items() if k.startswith("val/")}
        assert val["balanced"] == train_lib.balanced_score(val)
    best = min(records, key=lambda r: r["val/balanced"])
    assert checkpoint.load_trained(runs["straight"]).meta["epoch"] == best["epoch"]


# -- the store keeps checkpoints/ and best/ consistent -----------------------------------------------


def _variables(value: float) -> dict:
    return {"params": {"w": jnp.full((3,), value, jnp.float32)}}


TRAIN = {"rng": jnp.zeros((2,), jnp.uint32)}


def _restored(workdir, which: str) -> tuple[float, dict]:
    with run_store.CheckpointStore(str(workdir), read_only=True) as store:
        variables, _, meta = store.restore(which, _variables(0.0))
    return float(variables["params"]["w"][0]), meta


def test_saving_a_step_the_store_holds_keeps_it(tmp_path):
    """A finished run started again saves its restored step once more (its final evaluation):
    that must not fail with orbax's "Checkpoint for step 5 already exists"."""
    with run_store.CheckpointStore(str(tmp_path)) as store:
        store.save(5, _variables(1.0), TRAIN, {"step": 5, BEST_STEP_KEY: 5}, is_best=True)
        store.save(5, _variables(1.0), TRAIN, {"step": 5, BEST_STEP_KEY: 5}, is_best=True)  # within one run
    with run_store.CheckpointStore(str(tmp_path)) as store:
        variables, train, meta = store.restore("latest", _variables(0.0), TRAIN)
        store.save(5, variables, train, meta, is_best=True)
    assert _restored(tmp_path, "latest") == (1.0, {"step": 5, BEST_STEP_KEY: 5})
    assert _restored(tmp_path, "best")[0] == 1.0


def test_resuming_drops_the_best_state_of_a_lost_future(tmp_path):
    """The newest latest state is lost (killed mid-save, deleted) while best/ holds it: the resumed
    run must be able to save that step again, and best/ must not keep the lost state."""
    with run_store.CheckpointStore(str(tmp_path), keep=2) as store:
        store.save(10, _variables(1.0), TRAIN, {"step": 10, BEST_STEP_KEY: 10}, is_best=True)
        store.save(20, _variables(2.0), TRAIN, {"step": 20, BEST_STEP_KEY: 20}, is_best=True)
    shutil.rmtree(tmp_path / "checkpoints" / "20")
    with run_store.CheckpointStore(str(tmp_path), keep=2) as store:
        _, _, meta = store.restore("latest", _variables(0.0), TRAIN)
        assert meta["step"] == 10
        # best/ no longer holds step 20; the restored state, the best as of step 10, is back in it.
        assert store.latest_step("best") == 10
        store.save(20, _variables(3.0), TRAIN, {"step": 20, BEST_STEP_KEY: 10}, is_best=False)
    assert _restored(tmp_path, "best") == (1.0, {"step": 10, BEST_STEP_KEY: 10})
    assert _restored(tmp_path, "latest")[0] == 3.0


def test_resuming_restores_a_best_state_a_kill_kept_out_of_best(tmp_path):
    """Killed between the latest and the best save of step 20: resuming writes step 20 to best/."""
    with run_store.CheckpointStore(str(tmp_path), keep=2) as store:
        store.save(10, _variables(1.0), TRAIN, {"step": 10, BEST_STEP_KEY: 10}, is_best=True)
        store.save(20, _variables(2.0), TRAIN, {"step": 20, BEST_STEP_KEY: 20}, is_best=False)
    assert _restored(tmp_path, "best")[0] == 1.0
    with run_store.CheckpointStore(str(tmp_path), keep=2) as store:
        store.restore("latest", _variables(0.0), TRAIN)
    assert _restored(tmp_path, "best") == (2.0, {"step": 20, BEST_STEP_KEY: 20})


def test_resume_after_losing_the_newest_checkpoint(runs, tiny_model, tmp_path):
    """The issue's reproduction: a finished run loses checkpoints/<last step>, then trains again."""
    workdir = tmp_path / "run"
    shutil.copytree(runs["straight"], workdir)
    shutil.rmtree(workdir / "checkpoints" / "16")
    best = train_lib.train_and_evaluate(tiny_config(epochs=4, steps=4), str(workdir))
    assert best["epoch"] == runs["best"]["epoch"]
    with open(workdir / "metrics.jsonl") as f:
        assert [json.loads(line)["step"] for line in f] == [4, 8, 12, 16]
    assert sorted(os.listdir(workdir / "checkpoints")) == ["12", "16"]
    assert os.listdir(workdir / "best") == [str(best["step"])]
