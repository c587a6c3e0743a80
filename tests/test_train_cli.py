"""``python -m train.forecaster`` end to end, and its one-line errors for bad inputs.

Most runs use a tiny stand-in model (:class:`TinyForecaster`, also used by test_checkpoint.py)
through a config file that registers it, so they test the real entry point without depending on
the real forecasters; the VRNN and the GRU-NF then train for one short epoch each through the
same ``main``, in this process. The CLI process imports this module too: importing ``train.*``
defines no flags, so that is harmless.
"""

import json
import os
import pathlib
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl import flags
from conftest import fresh_flags

from configs import demo
from kpflow import checkpoint, forecast
from kpflow.cli import parse_absl_flags
from kpflow.data import load_clip, save_clip, write_synthetic_folder
from kpflow.forecast.base import ForecastModule
from kpflow.keypoints import vector_to_keypoints

REPO = pathlib.Path(__file__).resolve().parent.parent
TESTS = pathlib.Path(__file__).resolve().parent


class TinyForecaster(ForecastModule):
    """A random walk with a learned drift: frame N+t = last frame + t drift(context) + t Gaussian steps.

    Closed form (no recurrence), so it compiles in a blink; has a BatchNorm so that a
    ``batch_stats`` collection goes through training and checkpoints.
    """

    hidden: int = 16
    residual: bool = True

    def setup(self):
        self.inp = nn.Dense(self.hidden)
        self.norm = nn.BatchNorm(momentum=0.9)
        self.out = nn.Dense(self.dim, kernel_init=nn.initializers.zeros)
        self.log_sigma = self.param("log_sigma", nn.initializers.zeros, (self.dim,))

    def _drift(self, context, train):  # [B, N, D] -> [B, 1, D], in step_scale units
        h = self.norm(self.inp(context.reshape(context.shape[0], -1)), use_running_average=not train)
        return self.out(jnp.tanh(h))[:, None]

    def loss(self, x, step_scale, train=True):
        context, future = x[:, : self.num_observed], x[:, self.num_observed :]
        t = jnp.arange(1, future.shape[1] + 1, dtype=x.dtype)[:, None]  # [M, 1]
        mean = context[:, -1:] + t * self._drift(context, train) * step_scale
        std = jnp.sqrt(t) * jnp.exp(self.log_sigma) * step_scale
        nll = jnp.mean(0.5 * ((future - mean) / std) ** 2 + jnp.log(std))
        return nll, {"mae": jnp.mean(jnp.abs(future - mean))}

    def sample(self, context, horizon, step_scale):
        b, _, d = context.shape
        noise = jax.random.normal(self.make_rng("sample"), (b, horizon, d), context.dtype)
        steps = self._drift(context, False) + noise * jnp.exp(self.log_sigma)
        return context[:, -1:] + jnp.cumsum(steps * step_scale, axis=1)


TINY = "tiny"
TINY_ENTRY = f"{__name__}:TinyForecaster"  # its registry entry


def tiny_config(epochs=2, steps=5):
    """A synthetic-data config with the stand-in model, small enough for seconds per epoch."""
    config = demo.get_config("horizon=6-6")
    config.model = {"name": "tiny", "hidden": 8}
    config.data.synthetic.update(num_clips=6, num_speakers=3, min_frames=40, max_frames=60)
    config.train.update(batch_size=8, num_epochs=epochs, steps_per_epoch=steps, warmup_steps=2, val_samples=4)
    config.train.keep_checkpoints = 2
    return config


# A config file for the CLI: registers the stand-in model in the training process, then returns the
# tiny synthetic config.
TINY_CONFIG_FILE = f"""
import sys
sys.path.insert(0, {str(TESTS)!r})
from kpflow import forecast
forecast.REGISTRY["tiny"] = "test_train_cli:TinyForecaster"
from test_train_cli import tiny_config


def get_config(arg=None):
    return tiny_config(epochs=2, steps=3)
"""


def run_cli(*args, devices=1, timeout=300):
    """``python -m train.forecaster ARGS`` on ``devices`` CPU devices -> CompletedProcess."""
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    # XLA_FLAGS: conftest's cheap compiles, inherited.
    if devices > 1:
        env["XLA_FLAGS"] += f" --xla_force_host_platform_device_count={devices}"
    return subprocess.run(
        [sys.executable, "-m", "train.forecaster", *map(str, args)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout, check=False,
    )


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory):
    """One 2-epoch CLI run of the stand-in on 1 device: (config file, workdir, CompletedProcess)."""
    root = tmp_path_factory.mktemp("cli")
    config_file = root / "tiny_config.py"
    config_file.write_text(TINY_CONFIG_FILE)
    workdir = root / "run"
    return config_file, workdir, run_cli("--config", config_file, "--workdir", workdir, "--config.train.val_samples=3")


def read_records(workdir):
    return [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]


def test_cli_trains_and_writes_run_directory(cli_run, monkeypatch):
    config_file, workdir, result = cli_run
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"best checkpoint: {workdir / 'best'}" in result.stdout

    records = read_records(workdir)
    assert [r["epoch"] for r in records] == [1, 2] and [r["step"] for r in records] == [3, 6]
    for key in ("train/loss", "val/energy_score", "val/mae_mean", "val/mae_best", "val/mae_hold_last", "seconds"):
        assert all(np.isfinite(r[key]) for r in records), key
    assert (workdir / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(os.listdir(workdir / "checkpoints")) == ["3", "6"]
    assert len(os.listdir(workdir / "best")) == 1
    saved = json.loads((workdir / "config.json").read_text())
    assert saved["model"]["name"] == TINY and saved["train"]["val_samples"] == 3
    split = json.loads((workdir / "split.json").read_text())
    assert split["train"] and split["val"] and not set(split["train"]) & set(split["val"])

    monkeypatch.setitem(forecast.REGISTRY, TINY, TINY_ENTRY)
    trained = checkpoint.load_trained(str(workdir), which="latest")
    assert trained.step == 6 and trained.val_names == split["val"]

    # The same command again: nothing left to do, no metrics line duplicated.
    again = run_cli("--config", config_file, "--workdir", workdir, "--config.train.val_samples=3")
    assert again.returncode == 0, again.stderr[-3000:]
    assert "already trained for 2 of 2 epochs" in again.stdout
    assert len(read_records(workdir)) == 2


def test_cli_data_parallel_matches_one_device(cli_run, tmp_path):
    """8 CPU devices, one window each: the same training as on 1 device, up to float rounding."""
    config_file, workdir, _ = cli_run
    result = run_cli("--config", config_file, "--workdir", tmp_path / "run8", "--config.train.val_samples=3", devices=8)
    assert result.returncode == 0, result.stderr[-3000:]
    for r1, r8 in zip(read_records(workdir), read_records(tmp_path / "run8"), strict=True):
        for key in r1:
            if key != "seconds":
                np.testing.assert_allclose(r8[key], r1[key], rtol=1e-4, err_msg=key)

    result = run_cli("--config", config_file, "--workdir", tmp_path / "bad", "--config.train.batch_size=12", devices=8)
    assert result.returncode != 0 and result.stderr.strip() == (
        "error: batch size 12 must be a positive multiple of the 8 devices (set --config.train.batch_size)"
    )


def nan_folder(root: pathlib.Path) -> pathlib.Path:
    """A synthetic keypoint folder in which one clip has a NaN."""
    folder = root / "nan_kp"
    paths = write_synthetic_folder(str(folder), num_clips=4, num_speakers=2, min_frames=30, max_frames=40)
    series = load_clip(paths[1])
    series[5, 3] = np.nan
    save_clip(paths[1], *vector_to_keypoints(series))
    return folder


BAD_INPUTS = {
    "missing data dir": (["--config.data.kind=npz", "--config.data.dir={tmp}/nowhere"], "does not exist: point --config.data.dir"),
    "unknown model": (["--config.model.name=nosuch"], "unknown forecaster 'nosuch'"),
    "horizon disagrees": (["--config.horizon=12-12"], "disagrees with num_observed=6"),
    "malformed horizon": ([":horizon=6x6"], "must look like N-M"),
    "NaN in data": (["--config.data.kind=npz", "--config.data.dir={nan}"], "NaN"),
    "clips too short": (
        ["--config.data.synthetic.min_frames=5", "--config.data.synthetic.max_frames=8"],
        "shorter than one window of 12 frames",
    ),
}


@pytest.mark.parametrize("case", BAD_INPUTS)
def test_cli_bad_input_is_one_line_error(case, tmp_path):
    extra, expected = BAD_INPUTS[case]
    extra = [a.format(tmp=tmp_path, nan=nan_folder(tmp_path) if "{nan}" in a else "") for a in extra]
    config = "configs/demo.py" + "".join(a for a in extra if a.startswith(":"))
    workdir = tmp_path / "run"
    result = run_cli("--config", config, "--workdir", workdir, *[a for a in extra if not a.startswith(":")])
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr[-3000:]
    assert expected in lines[0]
    assert "Traceback" not in result.stderr
    assert not (workdir / "checkpoints").exists()


def test_importing_the_trainers_defines_no_flags():
    import train.fomm
    import train.forecaster  # noqa: F401

    assert "config" not in flags.FLAGS and "workdir" not in flags.FLAGS


def run_main(argv: list, monkeypatch) -> None:
    """``python -m train.forecaster ARGV`` in this process: its flags go on a fresh FlagValues."""
    from train import forecaster as cli

    fresh = fresh_flags()
    monkeypatch.setattr(flags, "FLAGS", fresh)
    argv = ["train/forecaster.py", *map(str, argv)]
    monkeypatch.setattr(sys, "argv", argv)  # config_flags reads the --config.* overrides from sys.argv
    cli.define_flags()
    cli.main(parse_absl_flags(argv))


@pytest.mark.slow  # compiles a real model's training and sampling: tens of seconds
@pytest.mark.parametrize("model", ["vrnn", "grunf"])
def test_real_model_trains_and_its_best_checkpoint_samples(model, tmp_path, monkeypatch, capsys):
    workdir = tmp_path / model
    run_main(["--config", f"configs/demo.py:{model}", "--workdir", workdir, "--config.train.num_epochs=1",
              "--config.train.steps_per_epoch=2", "--config.train.batch_size=8", "--config.train.val_samples=2",
              "--config.data.synthetic.num_clips=4", "--config.data.synthetic.num_speakers=2",
              "--config.data.synthetic.min_frames=30", "--config.data.synthetic.max_frames=40"], monkeypatch)
    out = capsys.readouterr()
    assert f"best checkpoint: {workdir / 'best'} (epoch 1, step 2;" in out.out
    assert "\r" not in out.err  # not a terminal: plain progress lines

    trained = checkpoint.load_trained(str(workdir), which="best")
    assert trained.forecaster.name == model and trained.step == 2
    n, m = trained.config.num_observed, trained.config.num_predicted
    context = np.stack([s[:n] for s in trained.train_clips.series()[:2]])  # [2, N, D]
    samples = trained.forecaster.sample(trained.variables, context, m, jax.random.key(0), 3)
    assert samples.shape == (3, 2, m, trained.train_clips.dim)
    assert np.isfinite(np.asarray(samples)).all()
