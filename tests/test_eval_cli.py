"""End to end: ``python -m eval.forecast`` and ``python -m eval.compare`` on synthetic clips.

The checkpoint loader (``kpflow.checkpoint.load_trained``) is replaced by a fake that returns a
small trained-like object: a real :class:`Forecaster` (a noisy-persistence module with a
teacher-forced protocol, so every row of the table is exercised), its variables, a config and
the training clips.
"""

from __future__ import annotations

import importlib
import json
import math
import pathlib
import subprocess
import sys
import types

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import pytest

from kpflow import data as kpdata
from kpflow.data import make_synthetic
from kpflow.forecast import Forecaster, ForecastModule
from kpflow.keypoints import CausalScaler

REPO = pathlib.Path(__file__).resolve().parent.parent
N, M, SAMPLES = 6, 6, 6
METHODS = {"model", "hold_last", "linear", "random_walk", "teacher_forced"}
SCORES = {"mae_mean", "mae_median", "mae_best", "apd", "energy_score", "motion_mmd"}


class NoisyPersistence(ForecastModule):
    """Last frame plus Gaussian steps of learnable size; recurrent enough to have a teacher-forced protocol."""

    supports_teacher_forcing = True

    def setup(self):
        self.log_noise = self.param("log_noise", nn.initializers.zeros, ())

    def loss(self, x, step_scale, train: bool = True):
        steps = jnp.diff(x[:, self.num_observed - 1 :], axis=1) / step_scale
        nll = jnp.mean(0.5 * steps**2 * jnp.exp(-2 * self.log_noise) + self.log_noise)
        return nll, {"nll": nll}

    def sample(self, context, horizon, step_scale):
        b, _, d = context.shape
        eps = jax.random.normal(self.make_rng("sample"), (b, horizon, d))
        return context[:, -1:] + jnp.cumsum(eps * step_scale * jnp.exp(self.log_noise), axis=1)

    def teacher_forced(self, x, step_scale):
        prev = x[:, self.num_observed - 1 : -1]  # the true frame before each predicted one
        eps = jax.random.normal(self.make_rng("sample"), prev.shape)
        return prev + eps * step_scale * jnp.exp(self.log_noise)


def make_trained(clips: kpdata.ClipSet):
    """A stand-in for what ``kpflow.checkpoint.load_trained`` returns."""
    train, val = kpdata.split_by_fraction(clips, 0.34, seed=0)
    forecaster = Forecaster("noisy", NoisyPersistence(dim=clips.dim, num_observed=N, horizon=M))
    batch = kpdata.stack_windows(train.clips, N + M, stride=N + M)[:4]
    variables = forecaster.init(jax.random.PRNGKey(0), batch, CausalScaler.fit(train.series()))
    config = ml_collections.ConfigDict(
        {"num_observed": N, "num_predicted": M, "horizon": f"{N}-{M}", "model": {"name": "noisy"},
         "data": {"kind": "npz", "dir": clips.source}}
    )
    return types.SimpleNamespace(forecaster=forecaster, variables=variables, config=config,
                                 train_clips=train, val_names=val.names)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """Synthetic data, a workdir known to the fake loader, and the loader patched in for the module."""
    root = tmp_path_factory.mktemp("eval_cli")
    data_dir = root / "clips"
    make_synthetic.main(["--out", str(data_dir), "--num_clips", "6", "--num_speakers", "3",
                         "--min_frames", "40", "--max_frames", "64"])
    workdir = root / "workdir"
    workdir.mkdir()
    registry = {str(workdir): make_trained(kpdata.load_folder(str(data_dir)))}

    def load_trained(path, which="best"):
        if str(path) not in registry:
            raise FileNotFoundError(f"no checkpoint in {path!r}: train one first")
        return registry[str(path)]

    with pytest.MonkeyPatch.context() as mp:
        try:
            mp.setattr(importlib.import_module("kpflow.checkpoint"), "load_trained", load_trained)
        except ImportError:  # the real module is not written yet
            mp.setitem(sys.modules, "kpflow.checkpoint", types.SimpleNamespace(load_trained=load_trained))
        yield types.SimpleNamespace(root=root, data_dir=data_dir, workdir=workdir, trained=registry[str(workdir)])


def run_cli(setup, out, *extra):
    from eval import forecast as eval_forecast

    eval_forecast.main(["--workdir", str(setup.workdir), "--data_dir", str(setup.data_dir), "--out", str(out),
                        "--samples", str(SAMPLES), *extra])
    with open(out) as f:
        return json.load(f)


@pytest.fixture(scope="module")
def result(setup):
    out = setup.root / "eval" / "run.json"
    return out, run_cli(setup, out, "--plot_windows", "2", "--batch_size", "16")


def test_json_structure_and_values(setup, result):
    _, res = result
    assert res["horizon"] == f"{N}-{M}" and res["samples"] == SAMPLES
    clips = kpdata.load_folder(str(setup.data_dir))
    expected = sum(len(kpdata.evaluation_windows(s, N, M)) for s in clips.series())
    assert res["num_windows"] == expected > 0
    assert set(res["units"]) == {"minmax", "raw"}
    for unit, table in res["units"].items():
        assert set(table) == METHODS, unit
        for name, row in table.items():
            assert set(row) == SCORES, (unit, name)
            assert all(isinstance(v, float) and math.isfinite(v) for v in row.values()), (unit, name, row)
        hl = table["hold_last"]
        assert hl["mae_best"] == hl["mae_mean"] == hl["mae_median"]
        assert hl["apd"] == 0.0 and table["linear"]["apd"] == 0.0
        assert table["model"]["apd"] > 0 and table["random_walk"]["apd"] > 0
        # A frozen forecast must look less like real motion than a fitted random walk.
        assert hl["motion_mmd"] > table["random_walk"]["motion_mmd"], unit
    # Min-max units are per-clip ranges: errors there are much larger than in raw units here.
    assert res["units"]["minmax"]["hold_last"]["mae_mean"] > res["units"]["raw"]["hold_last"]["mae_mean"]
    assert "teacher_forced" in res["notes"]


def test_markdown_and_plot_written(result):
    out, _ = result
    md = out.with_suffix(".md").read_text()
    for name in METHODS:
        assert f"| {name}" in md
    assert "not a forecast" in md and "(minmax)" in md and "(raw)" in md
    png = out.with_suffix(".png")
    assert png.exists() and png.stat().st_size > 10_000


def test_split_restricts_clips(setup):
    from eval import forecast as eval_forecast

    trained = setup.trained
    val = eval_forecast.select_clips(str(setup.data_dir), trained, "val")
    train = eval_forecast.select_clips(str(setup.data_dir), trained, "train")
    assert val.names == sorted(trained.val_names) and train.names == trained.train_clips.names
    assert len(eval_forecast.select_clips(str(setup.data_dir), trained, "all")) == len(val) + len(train)


def _error_of(setup, tmp_path, *, workdir=None, data_dir=None, extra=()):
    from eval import forecast as eval_forecast

    argv = ["--workdir", str(workdir or setup.workdir), "--data_dir", str(data_dir or setup.data_dir),
            "--out", str(tmp_path / "x.json"), *extra]
    with pytest.raises(SystemExit) as e:
        eval_forecast.main(argv)
    msg = str(e.value.code)
    assert e.value.code != 0 and "\n" not in msg and msg.startswith("error:"), msg
    return msg


def test_bad_inputs_give_one_line_errors(setup, tmp_path):
    assert "does not exist" in _error_of(setup, tmp_path, workdir=tmp_path / "nope")
    empty_workdir = tmp_path / "untrained"
    empty_workdir.mkdir()
    assert "no checkpoint" in _error_of(setup, tmp_path, workdir=empty_workdir)
    assert "does not exist" in _error_of(setup, tmp_path, data_dir=tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    assert "no .npz" in _error_of(setup, tmp_path, data_dir=tmp_path / "empty")

    short = tmp_path / "short"
    kpdata.write_synthetic_folder(str(short), num_clips=2, min_frames=5, max_frames=8)
    assert "shorter than one window" in _error_of(setup, tmp_path, data_dir=short)

    five = tmp_path / "five_keypoints"
    kpdata.write_synthetic_folder(str(five), num_clips=2, num_keypoints=5, min_frames=30, max_frames=40)
    assert "5 keypoints" in _error_of(setup, tmp_path, data_dir=five)


def test_unwritable_out_fails_before_loading(setup, tmp_path, monkeypatch):
    """``--out`` under a file, or a folder: one line before the workdir is even opened."""
    from eval import forecast as eval_forecast

    monkeypatch.setattr(eval_forecast, "load_forecaster", lambda *a, **k: pytest.fail("loaded before checking --out"))
    a_file = tmp_path / "a_file"
    a_file.write_text("")
    msg = _error_of(setup, tmp_path, extra=("--out", str(a_file / "x.json")))
    assert "--out" in msg and "is a file, not a folder" in msg
    assert "is a folder" in _error_of(setup, tmp_path, extra=("--out", str(tmp_path)))


def test_bad_samples_is_an_argparse_error(setup, tmp_path, capsys):
    from eval import forecast as eval_forecast

    with pytest.raises(SystemExit) as e:
        eval_forecast.main(["--workdir", str(setup.workdir), "--data_dir", str(setup.data_dir),
                            "--out", str(tmp_path / "x.json"), "--samples", "0"])
    assert e.value.code == 2
    assert "--samples must be at least 1" in capsys.readouterr().err


def test_cli_process_error_has_no_traceback(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "eval.forecast", "--workdir", str(tmp_path / "nope"), "--data_dir", str(tmp_path),
         "--out", str(tmp_path / "x.json")],
        cwd=REPO, capture_output=True, text=True, timeout=120, check=False,
    )
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()] and "does not exist" in proc.stderr


def test_compare_tables_runs(result, tmp_path):
    from eval import compare

    out, res = result
    # A second "run": the same file relabelled as another model at another horizon.
    other = dict(res, model="other", horizon="6-12")
    other_path = tmp_path / "other.json"
    other_path.write_text(json.dumps(other))
    table_path = tmp_path / "table.md"
    compare.main([str(out), str(other_path), "--out", str(table_path)])
    table = table_path.read_text()
    t = res["units"]["minmax"]
    assert f"{t['model']['mae_mean'] / t['hold_last']['mae_mean']:.3f}" in table
    assert f"{t['model']['energy_score'] / t['random_walk']['energy_score']:.3f}" in table
    assert "noisy" in table and "other" in table and "6-12" in table
    # Baselines appear once per horizon.
    assert table.count("| hold_last") == 2
    # Workdir form: a folder holding an evaluation JSON.
    compare.main([str(out.parent), "--units", "raw", "--out", str(tmp_path / "raw.md")])
    assert "noisy" in (tmp_path / "raw.md").read_text()


def test_compare_bad_inputs_give_one_line_errors(result, tmp_path):
    from eval import compare

    out, _ = result
    a_file = tmp_path / "a_file"
    a_file.write_text("not json")
    cases = [
        ([str(out), "--out", str(a_file / "table.md")], "is a file, not a folder"),
        ([str(tmp_path / "missing.json")], "does not exist"),
        ([str(a_file)], "not a readable JSON"),
        ([str(tmp_path)], "holds no evaluation JSON"),
    ]
    for argv, message in cases:
        with pytest.raises(SystemExit) as e:
            compare.main(argv)
        msg = str(e.value.code)
        assert msg.startswith("error:") and "\n" not in msg and message in msg, msg
    assert not (a_file / "table.md").exists()
