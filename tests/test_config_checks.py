"""Bad hyper-parameters, diverging runs and implausible keypoint data are refused in one line.

- Config fields (:mod:`kpflow.training.checks`, each trainer's ``validate_config``): every shipped
  config passes; a negative learning rate, clip norm, weight decay or FOMM ``lr_generator``, a
  negative model size, a NaN, a wrong type and a missing field are each one ``error:`` line naming
  the field and its allowed range, through the trainers' ``main`` (in this process) or the library.
- Divergence: a tiny run resumed with ``learning_rate=1e6`` stops on its loss ratio and keeps the
  best checkpoint of the epoch before; a scripted validation MAE 20x hold-last's (or NaN) stops a
  run the same way; the FOMM trainer stops on its loss ratio with its earlier checkpoints intact.
- Keypoint data: 3e38, NaN, out-of-range Jacobians and zero-length clips are refused naming the file
  (and the frame) by the reader behind ``train.forecaster``, ``eval.forecast`` and ``eval.codec``.

The forecaster is :class:`BoundedTiny`, a closed-form stand-in whose loss stays finite however large
its parameters grow, so a runaway learning rate shows as a huge loss, not as a NaN.
"""

import importlib
import json
import math
import os
import pathlib
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from absl import flags
from conftest import fresh_flags

from configs import demo
from configs.fomm_common import fomm_config
from kpflow import checkpoint, forecast
from kpflow.cli import parse_absl_flags
from kpflow.data import clips as kpclips
from kpflow.data import load_clip, save_clip, write_synthetic_folder
from kpflow.forecast.base import ForecastModule
from kpflow.training import checks, runlog
from kpflow.training import fomm as train_fomm
from kpflow.training import forecaster as train_lib

REPO = pathlib.Path(__file__).resolve().parent.parent


class BoundedTiny(ForecastModule):
    """Frame N+t = last frame + t drift(context) (+ unit Gaussian steps when sampling), in step-scale
    units; the loss is the mean absolute error of that line, finite for any finite parameters."""

    hidden: int = 8
    residual: bool = True

    def setup(self):
        self.inp = nn.Dense(self.hidden)
        self.out = nn.Dense(self.dim, kernel_init=nn.initializers.zeros)

    def _drift(self, context):  # [B, N, D] -> [B, 1, D]
        return self.out(jnp.tanh(self.inp(context.reshape(context.shape[0], -1))))[:, None]

    def loss(self, x, step_scale, train=True):
        context, future = x[:, : self.num_observed], x[:, self.num_observed :]
        t = jnp.arange(1, future.shape[1] + 1, dtype=x.dtype)[:, None]
        err = jnp.mean(jnp.abs(future - context[:, -1:] - t * self._drift(context) * step_scale) / step_scale)
        return err, {"mae": err}

    def sample(self, context, horizon, step_scale):
        b, _, d = context.shape
        noise = jax.random.normal(self.make_rng("sample"), (b, horizon, d), context.dtype)
        return context[:, -1:] + jnp.cumsum((self._drift(context) + noise) * step_scale, axis=1)


BOUNDED = "bounded_tiny"


@pytest.fixture
def bounded(monkeypatch):
    monkeypatch.setitem(forecast.REGISTRY, BOUNDED, f"{__name__}:BoundedTiny")


def bounded_config(epochs=1, steps=3, learning_rate=1e-3):
    config = demo.get_config("horizon=6-6")
    config.model = {"name": BOUNDED, "hidden": 8}
    config.data.synthetic.update(num_clips=6, num_speakers=3, min_frames=40, max_frames=60, num_keypoints=2)
    config.train.update(batch_size=8, num_epochs=epochs, steps_per_epoch=steps, warmup_steps=1, val_samples=2,
                        learning_rate=learning_rate, keep_checkpoints=3)
    return config


def run_main(module, argv: list, monkeypatch) -> None:
    """``python -m train.<module> ARGV`` in this process, its flags on a fresh FlagValues."""
    cli = importlib.import_module(f"train.{module}")
    fresh = fresh_flags()
    monkeypatch.setattr(flags, "FLAGS", fresh)
    argv = [f"train/{module}.py", *map(str, argv)]
    monkeypatch.setattr(sys, "argv", argv)  # config_flags reads the --config.* overrides from sys.argv
    cli.define_flags()
    cli.main(parse_absl_flags(argv))


def cli_error(module, argv, monkeypatch) -> str:
    """The one line a trainer's ``main`` exits with (it must exit with one)."""
    with pytest.raises(SystemExit) as e:
        run_main(module, argv, monkeypatch)
    message = str(e.value.code)
    assert message.startswith("error: ") and "\n" not in message, message
    return message


# -- config fields ------------------------------------------------------------------------------------


FORECASTER_CONFIGS = sorted(p.stem for p in (REPO / "configs").glob("*.py") if p.stem.split("_")[0] in forecast.MODELS)


@pytest.mark.parametrize("name", FORECASTER_CONFIGS)
def test_every_shipped_forecaster_config_passes(name):
    module = importlib.import_module(f"configs.{name}")
    for arg in ("", "cpu"):
        train_lib.validate_config(module.get_config(arg))


@pytest.mark.parametrize("model", demo.MODELS)
def test_every_demo_config_passes(model):
    train_lib.validate_config(demo.get_config(model))


@pytest.mark.parametrize("dataset", ["vox", "mgif", "bair"])
def test_every_shipped_fomm_config_passes(dataset):
    for arg in (None, "tiny"):
        config = fomm_config(dataset, arg)
        config.data.dir, config.train.vgg19_weights = "videos", "vgg19.pth"
        train_fomm.validate_config(config)


BAD_FORECASTER_FLAGS = {
    "negative learning rate": ("--config.train.learning_rate=-1",
                               "config.train.learning_rate must be a number > 0, got -1.0"),
    "NaN learning rate": ("--config.train.learning_rate=nan", "config.train.learning_rate must be a number > 0, got nan"),
    "negative clip norm": ("--config.train.clip_norm=-1", "config.train.clip_norm must be a number > 0, got -1.0"),
    "negative weight decay": ("--config.train.weight_decay=-0.01",
                              "config.train.weight_decay must be a number >= 0, got -0.01"),
    "negative hidden size": ("--config.model.hidden=-4", "config.model.hidden must be an integer >= 1, got -4"),
    "zero batch size": ("--config.train.batch_size=0", "config.train.batch_size must be an integer >= 1, got 0"),
    "negative warmup": ("--config.train.warmup_steps=-5", "config.train.warmup_steps must be an integer >= 0, got -5"),
    "noise persistence of 1": ("--config.model.noise_persistence=1.0",
                               "config.model.noise_persistence must be a number in [0, 1), got 1.0"),
}


@pytest.mark.parametrize("case", BAD_FORECASTER_FLAGS)
def test_forecaster_cli_refuses_bad_hyper_parameter(case, tmp_path, monkeypatch):
    flag, expected = BAD_FORECASTER_FLAGS[case]
    field = expected.split(" ")[0]
    workdir = tmp_path / "run"
    message = cli_error("forecaster", ["--config", "configs/demo.py:gru", "--workdir", workdir, flag], monkeypatch)
    assert message == f"error: {expected}; set --{field}"
    assert not workdir.exists()


def test_fomm_cli_refuses_negative_generator_learning_rate(tmp_path, monkeypatch):
    message = cli_error("fomm", ["--config", "configs/fomm_vox.py:tiny", "--workdir", tmp_path / "run",
                                 f"--config.data.dir={tmp_path}", "--config.train.lr_generator=-2e-4"], monkeypatch)
    assert message == ("error: config.train.lr_generator must be a number > 0, got -0.0002; "
                       "set --config.train.lr_generator")


def _forecaster(**sections):
    config = demo.get_config("gru")
    for name, fields in sections.items():
        config[name] = ml_collections.ConfigDict({**config[name].to_dict(), **fields})
    return config


def _fomm(**train):
    config = fomm_config("vox", "tiny")
    config.data.dir = "videos"
    config.train = ml_collections.ConfigDict({**config.train.to_dict(), **train})
    return config


WRONG = {
    "float size": (train_lib, lambda: _forecaster(model={"hidden": 3.5}),
                   "config.model.hidden must be an integer >= 1, got 3.5"),
    "text learning rate": (train_lib, lambda: _forecaster(train={"learning_rate": "1e-3"}),
                           "config.train.learning_rate must be a number > 0, got '1e-3'"),
    "negative noise rank": (train_lib, lambda: _forecaster(model={"noise_rank": -1}),
                            "config.model.noise_rank must be an integer >= 0, got -1"),
    "number as flag": (train_lib, lambda: _forecaster(model={"residual": 1}), "config.model.residual must be a boolean, got 1"),
    "number as io flag": (train_lib, lambda: _forecaster(model={"io": {**_forecaster().model.io.to_dict(), "momentum": 1}}),
                          "config.model.io.momentum must be a boolean, got 1"),
    "flag as count": (train_lib, lambda: _forecaster(train={"num_epochs": True}),
                      "config.train.num_epochs must be an integer >= 1, got True"),
    "probability above 1": (train_lib, lambda: _forecaster(data={"val_fraction": 1.5}),
                            "config.data.val_fraction must be a number in (0, 1), got 1.5"),
    "fomm negative loss weight": (train_fomm, lambda: _fomm(loss_weights={**_fomm().train.loss_weights.to_dict(),
                                                                          "perceptual": (10.0, -1.0)}),
                                  "config.train.loss_weights.perceptual must be a non-empty list of numbers >= 0"),
    "fomm zero scale": (train_fomm, lambda: _fomm(scales=(1.0, 0.0)),
                        "config.train.scales must be a non-empty list of numbers in (0, 1]"),
    "fomm adam beta 1": (train_fomm, lambda: _fomm(adam_b2=1.0), "config.train.adam_b2 must be a number in [0, 1)"),
    "fomm zero checkpoint_freq": (train_fomm, lambda: _fomm(checkpoint_freq=0),
                                  "config.train.checkpoint_freq must be an integer >= 1"),
}


@pytest.mark.parametrize("case", WRONG)
def test_validate_config_refuses_wrong_type_or_range(case):
    lib, make, expected = WRONG[case]
    with pytest.raises(ValueError) as e:
        lib.validate_config(make())
    assert str(e.value).startswith(expected) and "\n" not in str(e.value)


def test_missing_field_is_named():
    config = demo.get_config("gru")
    config.train = ml_collections.ConfigDict({k: v for k, v in config.train.items() if k != "learning_rate"})
    with pytest.raises(ValueError, match=r"^config\.train\.learning_rate is missing; it must be a number > 0"):
        train_lib.validate_config(config)


def test_rules_describe_and_accept():
    assert checks.COUNT.accepts(1) and not checks.COUNT.accepts(0) and not checks.COUNT.accepts(True)
    assert checks.POSITIVE.accepts(2) and not checks.POSITIVE.accepts(0.0) and not checks.POSITIVE.accepts(math.inf)
    listed = checks.Rule(float, 0, low_open=True, form=checks.ONE_OR_LIST)
    assert listed.accepts(0.5) and listed.accepts((0.4, 1.2)) and not listed.accepts(()) and not listed.accepts((1, -1))
    assert checks.Rule(int, 0, form=checks.LIST, may_be_empty=True).accepts(())
    assert checks.FINITE.describe() == "a finite number" and checks.FINITE.accepts(-3) and not checks.FINITE.accepts(math.nan)


# -- divergence ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("loss, first, diverged", [
    (99.0, 0.5, False), (101.0, 0.5, True),  # the first loss counts as at least 1 in magnitude
    (199.0, 2.0, False), (201.0, 2.0, True),
    (-5.0, -2.0, False), (201.0, -2.0, True),  # a negative first loss (an NLL) by its magnitude
])
def test_loss_ratio_rule(loss, first, diverged):
    if diverged:
        with pytest.raises(runlog.TrainingDiverged, match=r"^training diverged at step 9: loss .* above 100x"):
            checks.check_loss_ratio(loss, first, "at step 9", "lower it")
    else:
        checks.check_loss_ratio(loss, first, "at step 9", "lower it")


@pytest.mark.parametrize("mae, hold_last, diverged", [
    (9.9, 1.0, False), (10.1, 1.0, True), (math.nan, 1.0, True), (math.inf, 1.0, True),
    (5.0, 0.0, False), (math.nan, math.nan, False),  # no yardstick: frozen or broken data
])
def test_validation_mae_rule(mae, hold_last, diverged):
    if diverged:
        with pytest.raises(runlog.TrainingDiverged, match=r"^training diverged in epoch 2: validation MAE"):
            checks.check_val_mae(mae, hold_last, "in epoch 2", "lower it")
    else:
        checks.check_val_mae(mae, hold_last, "in epoch 2", "lower it")


def read_steps(workdir: pathlib.Path) -> list[int]:
    return [json.loads(line)["step"] for line in (workdir / "metrics.jsonl").read_text().splitlines()]


BENIGN = {"energy_score": 1.0, "mae_mean": 1.0, "mae_best": 0.8, "mae_hold_last": 1.0, "energy_random_walk": 1.1}


def scripted(*scores):
    """An ``evaluate`` returning ``scores`` in turn (validation is not under test, and its
    compilation would dominate these tests' time)."""
    remaining = iter(scores)

    def evaluate(*args):
        s = next(remaining)
        return {**s, "balanced": train_lib.balanced_score(s)}

    return evaluate


@pytest.fixture(scope="module")
def runaway(tmp_path_factory):
    """A tiny run trained for one epoch of 3 steps, then resumed with ``learning_rate=1e6``:
    ``(workdir, the TrainingDiverged it raised)``."""
    workdir = tmp_path_factory.mktemp("runaway") / "run"
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(forecast.REGISTRY, BOUNDED, f"{__name__}:BoundedTiny")
        mp.setattr(train_lib, "evaluate", scripted(BENIGN, BENIGN, BENIGN))
        assert train_lib.train_and_evaluate(bounded_config(epochs=1), str(workdir))["step"] == 3
        with pytest.raises(runlog.TrainingDiverged) as e:
            train_lib.train_and_evaluate(bounded_config(epochs=3, learning_rate=1e6), str(workdir))
    return workdir, e.value


def test_runaway_learning_rate_stops_on_loss_ratio_and_keeps_best(runaway, bounded):
    workdir, error = runaway
    message = str(error)
    first = json.loads((workdir / "metrics.jsonl").read_text())["train/loss"]
    assert message.startswith("training diverged in epoch 2: loss ") and "\n" not in message
    assert f"is above 100x the first logged loss {first:.4g};" in message
    assert "lower --config.train.learning_rate (now 1e+06)" in message and "up to step 3" in message
    # Nothing of the diverged epoch was logged or saved: best and latest are epoch 1's.
    assert read_steps(workdir) == [3]
    assert sorted(os.listdir(workdir / "checkpoints")) == ["3"]
    assert checkpoint.load_trained(str(workdir), which="best").step == 3


@pytest.mark.parametrize("bad_mae", [20.0, math.nan])
def test_validation_mae_far_above_hold_last_stops_the_run(bad_mae, tmp_path, bounded, monkeypatch):
    monkeypatch.setattr(train_lib, "evaluate", scripted(BENIGN, {**BENIGN, "mae_mean": bad_mae}))
    workdir = tmp_path / "run"
    with pytest.raises(runlog.TrainingDiverged,
                       match=rf"^training diverged in epoch 2: validation MAE {bad_mae:.4g} is above 10x hold-last's 1;"):
        train_lib.train_and_evaluate(bounded_config(epochs=3, steps=1), str(workdir))
    assert read_steps(workdir) == [1] and sorted(os.listdir(workdir / "checkpoints")) == ["1"]
    assert checkpoint.load_trained(str(workdir), which="best").step == 1


def test_fomm_loss_ratio_stops_the_run_and_keeps_its_checkpoints(tmp_path, monkeypatch):
    """The FOMM training loop (data, logging, checkpoints) with stand-in networks and a scripted step
    whose loss jumps 1000x at step 5: the real networks' initialisation alone takes minutes here."""
    from kpflow.data.synthetic_video import make_synthetic_videos

    make_synthetic_videos(tmp_path / "videos", num_train=2, num_test=1, num_frames=4, size=32, seed=0, fmt="png")

    def stand_in_state(nets, config, rng, opt_gen, opt_disc):
        params = {name: {"w": jnp.zeros(3)} for name in ("kp_detector", "generator", "discriminator")}
        return train_fomm.TrainState(
            step=jnp.zeros((), jnp.int32), params=params, batch_stats={name: {} for name in params},
            opt_gen=opt_gen.init({"kp_detector": params["kp_detector"], "generator": params["generator"]}),
            opt_disc=opt_disc.init(params["discriminator"]), rng=rng)

    def scripted_train_step(nets, config, opt_gen, opt_disc, vgg_apply):
        def step(state, batch):
            total = jnp.where(state.step >= 4, 2000.0, 2.0)
            return state.replace(step=state.step + 1), {"total": total}, None
        return step

    monkeypatch.setattr(train_fomm, "create_train_state", stand_in_state)
    monkeypatch.setattr(train_fomm, "make_train_step", scripted_train_step)
    config = fomm_config("vox", "tiny")
    config.data.update(dir=str(tmp_path / "videos"), frame_shape=(32, 32, 3), cache=False)
    config.train.update(batch_size=2, num_repeats=2, checkpoint_freq=1, log_every=1, eval_clips=0, image_every=0,
                        scales=(1, 0.5), max_steps=8)
    workdir = tmp_path / "run"
    with pytest.raises(runlog.TrainingDiverged,
                       match=r"^training diverged at step 5: loss 2000 is above 100x the first logged loss 2; "
                             r"lower --config\.train\.lr_generator"):
        train_fomm.train_and_evaluate(config, str(workdir))
    assert sorted(int(s) for s in os.listdir(workdir / "checkpoints")) == [2, 4]  # the epoch ends before step 5
    records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3, 4]


# -- keypoint data -------------------------------------------------------------------------------------


def bad_folder(root: pathlib.Path, edit) -> tuple[pathlib.Path, str]:
    """A synthetic keypoint folder (2 keypoints) with one clip changed by ``edit(value, jacobian)``;
    returns the folder and the changed file's path."""
    paths = write_synthetic_folder(str(root), num_clips=4, num_speakers=2, min_frames=30, max_frames=40, num_keypoints=2)
    with np.load(paths[1]) as f:
        value, jacobian = f["value"], f["jacobian"]
    value, jacobian = edit(value.copy(), jacobian.copy())
    save_clip(paths[1], value, jacobian)
    return root, paths[1]


def huge(value, jacobian):
    value[3:] = 3e38
    return value, jacobian


def nan_jacobian(value, jacobian):
    jacobian[7, 1, 1, 0] = np.nan
    return value, jacobian


def big_jacobian(value, jacobian):
    jacobian[5, 0, 0, 1] = 250.0
    return value, jacobian


def empty(value, jacobian):
    return value[:0], jacobian[:0]


BAD_DATA = {
    "3e38": (huge, "frame 3 keypoint 0 x = 3e+38 is outside +-10, the plausible range of keypoint positions"),
    "NaN": (nan_jacobian, "contains NaN or inf (first at frame 7 keypoint 1 jacobian[1,0] = nan)"),
    "Jacobian 250": (big_jacobian, "frame 5 keypoint 0 jacobian[0,1] = 250 is outside +-100, the plausible range of Jacobian"),
    "zero frames": (empty, "has no frames (value (0, 2, 2))"),
}


@pytest.mark.parametrize("case", BAD_DATA)
def test_load_clip_refuses_implausible_data_naming_file(case, tmp_path):
    edit, expected = BAD_DATA[case]
    _, path = bad_folder(tmp_path, edit)
    with pytest.raises(ValueError) as e:
        load_clip(path)
    assert str(e.value).startswith(f"{path}: {expected}") and "\n" not in str(e.value)


def test_plausible_extremes_pass(tmp_path):
    value = np.full((3, 2, 2), -kpclips.MAX_ABS_VALUE, np.float32)
    jacobian = np.full((3, 2, 2, 2), kpclips.MAX_ABS_JACOBIAN, np.float32)
    save_clip(str(tmp_path / "edge.npz"), value, jacobian)
    assert load_clip(str(tmp_path / "edge.npz")).shape == (3, 12)


@pytest.mark.parametrize("case", ["3e38", "zero frames"])
def test_forecaster_cli_refuses_bad_data(case, tmp_path, monkeypatch):
    folder, path = bad_folder(tmp_path / "clips", BAD_DATA[case][0])
    message = cli_error("forecaster", ["--config", "configs/demo.py:gru", "--workdir", tmp_path / "run",
                                       "--config.data.kind=npz", f"--config.data.dir={folder}"], monkeypatch)
    assert message == f"error: {path}: " + message.split(f"{path}: ", 1)[1] and BAD_DATA[case][1] in message
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_eval_codec_refuses_huge_data(tmp_path, capsys):
    import eval.codec

    folder, path = bad_folder(tmp_path / "clips", huge)
    assert eval.codec.main(["--data_dir", str(folder), "--out", str(tmp_path / "rd.json")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and f"{path}: {BAD_DATA['3e38'][1]}" in err
    assert not (tmp_path / "rd.json").exists()


def test_eval_forecast_refuses_huge_data(runaway, tmp_path, bounded):
    import eval.forecast

    folder, path = bad_folder(tmp_path / "clips", huge)
    with pytest.raises(SystemExit) as e:
        eval.forecast.main(["--workdir", str(runaway[0]), "--data_dir", str(folder), "--out", str(tmp_path / "e.json")])
    assert str(e.value.code) == f"error: {path}: " + str(e.value.code).split(f"{path}: ", 1)[1]
    assert BAD_DATA["3e38"][1] in str(e.value.code) and not (tmp_path / "e.json").exists()
