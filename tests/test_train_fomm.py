"""Stage-1 FOMM training: one step lowers the loss; the CLI runs, writes its outputs and resumes."""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import CHEAP_COMPILE, quick_jit

from configs.fomm_common import fomm_config
from kpflow import fomm
from kpflow.data.synthetic_video import make_synthetic_videos
from kpflow.fomm.model import build_networks, init_variables
from kpflow.training import fomm as train_fomm
from tests.conftest import REPO, tiny_fomm_command


def _tiny_config(**train):
    config = fomm_config("vox", "tiny")
    config.data.frame_shape = [32, 32, 3]
    config.train.scales = [1, 0.5]
    config.train.update(batch_size=2, **train)
    return config


def _state(config, nets):
    variables = init_variables(nets, jax.random.key(0), config.data.frame_shape)
    params = {k: v["params"] for k, v in variables.items()}
    stats = {k: v.get("batch_stats", {}) for k, v in variables.items()}
    opt_gen, opt_disc = train_fomm.make_optimizers(config, steps_per_epoch=10)
    state = train_fomm.TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        batch_stats=stats,
        opt_gen=opt_gen.init({"kp_detector": params["kp_detector"], "generator": params["generator"]}),
        opt_disc=opt_disc.init(params["discriminator"]),
        rng=jax.random.key(1),
    )
    return state, opt_gen, opt_disc


def _blobs(shift: float, size: int = 32) -> np.ndarray:
    """Two frames [2, size, size, 3] of soft coloured blobs, moved right by ``shift`` (image widths)."""
    yy, xx = np.mgrid[0:size, 0:size] / (size - 1)
    frames = np.full((2, size, size, 3), 0.2, np.float32)
    for b in range(2):
        rng = np.random.default_rng(b)
        for centre in rng.uniform(0.2, 0.8, (4, 2)):
            blob = np.exp(-((xx - centre[0] - shift) ** 2 + (yy - centre[1]) ** 2) / 0.01)
            frames[b] += blob[..., None] * rng.uniform(size=3)
    return np.clip(frames, 0, 1)


@pytest.mark.parametrize("gan", [0.0, 1.0])
def test_one_training_step_lowers_the_loss(gan):
    config = _tiny_config()
    config.train.loss_weights.generator_gan = gan
    nets = build_networks(config.model)
    state, opt_gen, opt_disc = _state(config, nets)
    batch = {"source": jnp.asarray(_blobs(0.0)), "driving": jnp.asarray(_blobs(0.1))}
    key = jax.random.key(3)

    @quick_jit
    def loss_fn(params, stats):
        total, (terms, _, _) = train_fomm.generator_losses(nets, config, params, stats, batch, key, None)
        return total, terms

    def loss(s):
        total, terms = loss_fn(s.params, s.batch_stats)
        return float(total), terms

    before, terms = loss(state)
    assert {"pixel_l1", "equivariance_value", "equivariance_jacobian"} <= set(terms)
    assert ("gen_gan" in terms) == (gan != 0)
    # The trainer's own jitted step, compiled cheaply (the same program, less optimised).
    step = train_fomm.make_train_step(nets, config, opt_gen, opt_disc, None).lower(state, batch).compile(CHEAP_COMPILE)
    old_disc = jax.tree.map(np.asarray, state.params["discriminator"])
    new_state, metrics, _ = step(state, batch)
    after, _ = loss(new_state)  # `state` was donated to the step
    assert np.isfinite(before) and after < before
    assert int(new_state.step) == 1
    # The discriminator trains only with the GAN on, as in the reference.
    disc_changed = any(
        not np.array_equal(a, np.asarray(b))
        for a, b in zip(jax.tree.leaves(old_disc), jax.tree.leaves(new_state.params["discriminator"]))
    )
    assert disc_changed == (gan != 0)
    assert ("disc_gan" in metrics) == (gan != 0)


def test_milestone_schedule_drops_tenfold():
    schedule = train_fomm.milestone_schedule(2e-4, [100, 150])
    np.testing.assert_allclose([schedule(0), schedule(99), schedule(100), schedule(150)], [2e-4, 2e-4, 2e-5, 2e-6], rtol=1e-5)


def test_copy_source_l1_is_zero_for_still_clips_and_positive_otherwise():
    still = np.full((4, 8, 8, 3), 0.5, np.float32)
    moving = still.copy()
    moving[1:] = 0.25
    assert train_fomm.copy_source_l1([still]) == 0.0
    np.testing.assert_allclose(train_fomm.copy_source_l1([still, moving]), 0.25 * 3 / 8)


def test_vgg_without_weights_is_a_clear_error():
    config = fomm_config("vox")
    with pytest.raises(ValueError, match="vgg19_weights"):
        train_fomm.validate_config(config)


def test_sample_grid_draws_keypoints():
    batch = {"source": np.zeros((2, 16, 16, 3), np.float32), "driving": np.zeros((2, 16, 16, 3), np.float32)}
    visuals = {
        "prediction": np.zeros((2, 16, 16, 3), np.float32),
        "occlusion_map": np.ones((2, 4, 4, 1), np.float32),
        "kp_source": np.zeros((2, 10, 2), np.float32),
        "kp_driving": np.zeros((2, 10, 2), np.float32),
    }
    grid = train_fomm.sample_grid(batch, visuals)
    assert grid.dtype == np.uint8 and grid.shape[0] == 2 * grid.shape[1] // 4
    cell = grid.shape[1] // 4
    assert grid[:cell, :cell].max() > 0  # a keypoint dot on the black source
    assert grid[:cell, 2 * cell : 3 * cell].max() == 0  # the black prediction
    assert grid[:cell, 3 * cell :].min() == 255  # occlusion map of ones


@pytest.mark.slow
def test_cli_trains_writes_outputs_and_resumes(tmp_path):
    data = tmp_path / "videos"
    make_synthetic_videos(data, num_train=3, num_test=1, num_frames=8, size=32, fmt="png")
    workdir = tmp_path / "run"
    common = [*tiny_fomm_command(workdir, data), "--config.train.image_every=3"]
    # The resumed run reuses the first one's compiled programs through JAX's persistent cache.
    # The runs compile cheaply too: they inherit conftest's XLA_FLAGS.
    env = dict(os.environ, JAX_COMPILATION_CACHE_DIR=str(tmp_path / "jax_cache"),
               JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0", JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")
    run = subprocess.run(common + ["--config.train.max_steps=3"], check=False, cwd=REPO, capture_output=True,
                         text=True, timeout=600, env=env)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "test reconstruction L1" in run.stdout and "source copied" in run.stdout
    records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    # Step 3 ends epoch 1 (an epoch-end checkpoint) and the run (a final evaluation and checkpoint).
    assert [r["step"] for r in records if r["kind"] == "eval"] == [0, 2, 3]
    assert (workdir / "samples" / "step_0000003.png").is_file() and (workdir / "curves.png").is_file()

    run = subprocess.run(common + ["--config.train.max_steps=5"], check=False, cwd=REPO, capture_output=True,
                         text=True, timeout=600, env=env)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "resuming" in run.stdout and "at step 3" in run.stdout
    records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r["kind"] == "train"] == [1, 2, 3, 4, 5]
    assert [r["step"] for r in records if r["kind"] == "eval"] == [0, 2, 3, 4, 5]

    # The finished run started again: nothing to train, nothing saved or logged twice.
    run = subprocess.run(common + ["--config.train.max_steps=5"], check=False, cwd=REPO, capture_output=True,
                         text=True, timeout=600, env=env)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "at step 5" in run.stdout and "stopped at step 5" in run.stdout
    assert [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()] == records

    model = fomm.load(str(workdir))
    kp = model.detect(np.zeros((1, 32, 32, 3), np.float32))
    assert kp.value.shape == (1, 10, 2) and np.isfinite(np.asarray(kp.value)).all()


def test_cli_bad_config_is_one_line(tmp_path):
    run = subprocess.run(
        [sys.executable, "-m", "train.fomm", "--config", "configs/fomm_vox.py", f"--workdir={tmp_path}",
         f"--config.data.dir={tmp_path}"],
        check=False, cwd=REPO, capture_output=True, text=True, timeout=300,
    )
    assert run.returncode != 0
    assert run.stderr.strip().splitlines()[-1].startswith("error:") and "vgg19_weights" in run.stderr
    assert "Traceback" not in run.stderr


def test_reconstruction_summary_compares_the_last_evaluation_with_copying_the_source(tmp_path, capsys):
    from eval import fomm_summary

    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"train": {"eval_frames": 60, "eval_clips": 4}}))
    records = [{"kind": "train", "step": 100, "losses": {}},
               {"kind": "eval", "step": 100, "test_l1": 0.06, "copy_source_l1": 0.05},
               {"kind": "eval", "step": 200, "test_l1": 0.03, "copy_source_l1": 0.05}]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    line = train_fomm.reconstruction_summary(str(run))
    assert "step 200" in line and "0.0300 vs 0.0500" in line and "40% lower (better)" in line
    assert "first 60 frames of up to 4 test clips" in line
    records[-1]["test_l1"] = 0.07  # the last evaluation is the one reported, better or worse
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    assert "40% higher (worse" in train_fomm.reconstruction_summary(str(run))
    fomm_summary.main([str(run)])
    assert capsys.readouterr().out.count("\n") == 1
    with pytest.raises(SystemExit) as e:
        fomm_summary.main([str(tmp_path / "empty")])
    assert str(e.value).startswith("error:") and "no test evaluation" in str(e.value) and "\n" not in str(e.value)
