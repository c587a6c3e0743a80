"""The five-forecaster comparison: ``scripts/compare_models.py`` (the runs and their splits) and
``python -m eval.compare --runs`` (the table over rotations and seeds), on generated keypoints named
like the shared VoxCeleb speakers."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import pathlib
import sys

import numpy as np
import pytest

from kpflow.data.clips import save_clip, speaker_of
from kpflow.data.synthetic import synthetic_clip

REPO = pathlib.Path(__file__).resolve().parents[1]
SPEAKERS = ("id10283", "id10284", "id10286", "id10287", "id10289")


def load_script():
    spec = importlib.util.spec_from_file_location("compare_models", REPO / "scripts" / "compare_models.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def script():
    return load_script()


@pytest.fixture(scope="module")
def vox_like(tmp_path_factory):
    """Two clips per shared speaker, ``<speaker>#clip<i>.npz``."""
    folder = tmp_path_factory.mktemp("vox_like")
    rng = np.random.default_rng(0)
    for speaker in SPEAKERS:
        for i in range(2):
            value, jacobian = synthetic_clip(rng, 72)
            save_clip(str(folder / f"{speaker}#clip{i}.npz"), value, jacobian)
    return folder


def speakers_in(folder) -> set[str]:
    return {speaker_of(f.removesuffix(".npz")) for f in os.listdir(folder)}


def test_plan_lists_sixty_runs_with_speaker_disjoint_splits(script, vox_like, tmp_path, capsys):
    root = tmp_path / "runs"
    assert script.main(["--runs", str(root), "--data_dir", str(vox_like), "--dry_run"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0] == "60 runs, 0 finished, 60 to do"
    labels = [line[2:] for line in out.splitlines() if line.startswith("# ")]
    assert len(labels) == len(set(labels)) == 5 * 2 * 3 * 2
    assert not root.exists(), "a dry run writes nothing"

    script.build_rotation_data(str(root), str(vox_like))
    runs = script.plan(str(root), script.MODELS, script.HORIZONS, script.SEEDS)
    assert {(r.model, r.horizon, r.rotation.select, r.seed) for r in runs} == {
        (m, h, s, k) for m in script.MODELS for h in ("6-6", "12-12")
        for s in ("id10284", "id10287", "id10289") for k in (0, 1)}
    for r in runs:
        flags = dict(a.split("=", 1) for a in r.train_cmd if a.startswith("--config."))
        train_sel, hold = flags["--config.data.dir"], flags["--config.data.split_file"]
        assert f"horizon={r.horizon}" in r.train_cmd[r.train_cmd.index("--config") + 1]
        assert flags["--config.train.seed"] == str(r.seed)
        with open(hold) as f:
            selection = {speaker_of(line.strip()) for line in f if line.strip()}
        # Training: id10283 and id10286; selection (the validation split): one speaker; the test
        # speakers are in neither, only in the folder the evaluation reads.
        assert selection == {r.rotation.select}
        assert speakers_in(train_sel) - selection == {"id10283", "id10286"}
        test_dir = r.eval_cmds[0][r.eval_cmds[0].index("--data_dir") + 1]
        assert speakers_in(test_dir) == set(SPEAKERS) - {"id10283", "id10286", r.rotation.select}
        assert len(speakers_in(test_dir)) == 2
        assert r.eval_cmds[1][r.eval_cmds[1].index("--samples") + 1] == "1"
    # Finished runs are skipped.
    done = runs[0]
    os.makedirs(done.workdir, exist_ok=True)
    for name in ("test.json", "test_single.json"):
        (pathlib.Path(done.workdir) / name).write_text("{}")
    script.main(["--runs", str(root), "--data_dir", str(vox_like), "--dry_run"])
    out = capsys.readouterr().out
    assert out.splitlines()[0] == "60 runs, 1 finished, 59 to do" and f"# {done.label}\n" not in out


def test_kept_results_count_as_finished_while_their_recipe_holds(script, vox_like, tmp_path, capsys):
    # --results keeps each run's JSONs and config.json; a kept run is finished without its workdir
    # while the config file and flags give the same model and train blocks, and runs again once they do not.
    root, results = tmp_path / "runs", tmp_path / "kept"
    script.build_rotation_data(str(root), str(vox_like))
    run = script.plan(str(root), script.MODELS, script.HORIZONS, script.SEEDS)[0]
    recipe = script.expected_recipe(run)
    assert recipe["train"]["seed"] == run.seed and recipe["model"]["name"] == run.model
    kept = pathlib.Path(script.result_dir(str(results), run))
    kept.mkdir(parents=True)
    for name in ("test.json", "test_single.json"):
        (kept / name).write_text("{}")
    (kept / "config.json").write_text(json.dumps({"data": {"dir": "elsewhere"}, **recipe}))
    base = ["--runs", str(root), "--data_dir", str(vox_like), "--results", str(results), "--dry_run"]
    for extra, finished in (([], 1), (["--override=--config.train.num_epochs=2"], 0),
                            (["--override=--config.model.hidden=64"], 1)):  # 64: the :cpu GRU's own
        script.main(base + extra)
        assert capsys.readouterr().out.splitlines()[0] == f"60 runs, {finished} finished, {60 - finished} to do", extra
    # A workdir trained with another recipe is set aside, not resumed.
    os.makedirs(run.workdir)
    (pathlib.Path(run.workdir) / "config.json").write_text(json.dumps({**recipe, "train": {**recipe["train"], "seed": 7}}))
    script.set_aside_if_stale(run)
    assert not os.path.exists(run.workdir) and os.path.isfile(os.path.join(run.workdir + ".stale", "config.json"))


def test_bad_arguments_are_one_line(script, vox_like, tmp_path, capsys):
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    cases = [
        (["--runs", str(tmp_path / "r"), "--models", "lstm"], "invalid choice"),
        (["--runs", str(tmp_path / "r"), "--horizons", "6"], "is not N-M"),
        (["--runs", str(tmp_path / "r"), "--seeds", "0", "0"], "distinct"),
        (["--runs", str(tmp_path / "r"), "--override=num_epochs=1"], "--config.FIELD=VALUE"),
        (["--runs", str(a_file), "--data_dir", str(vox_like)], "is a file"),
        (["--runs", str(tmp_path / "r"), "--data_dir", str(vox_like), "--results", str(a_file), "--dry_run"], "is a file"),
        (["--runs", str(tmp_path / "r"), "--data_dir", str(tmp_path / "none"), "--dry_run"], "is not a folder"),
        (["--runs", str(tmp_path / "r"), "--data_dir", str(tmp_path), "--dry_run"], "no clips of speakers"),
    ]
    for argv, message in cases:
        with pytest.raises(SystemExit) as e:
            script.main(argv)
        err = capsys.readouterr().err
        msg = err if e.value.code == 2 else str(e.value.code)
        assert message in msg and "Traceback" not in msg and len(msg.strip().splitlines()) == 1, msg


# -- eval.compare --runs --------------------------------------------------------------------------


def fake_eval(horizon: str, scale: float, samples: int = 100) -> dict:
    """An evaluation JSON as eval.forecast writes it, with numbers scaled by ``scale``."""
    def row(mae, apd):
        return {"mae_mean": mae, "mae_median": mae, "mae_best": 0.5 * mae, "apd": apd,
                "energy_score": 0.8 * mae, "motion_mmd": 0.01 * mae}

    table = {"model": row(0.10 * scale, 0.2 * scale), "hold_last": row(0.12, 0.0),
             "linear": row(0.15, 0.0), "random_walk": row(0.3 * scale, 0.5 * scale)}
    div = {name: {"mae": 0.7 * r["mae_mean"], "apd": r["apd"], "ratio_mean": 2.0 * scale,
                  "ratio_median": 2.0 * scale} for name, r in table.items()}
    div["hold_last"]["ratio_mean"] = None
    return {"horizon": horizon, "num_windows": 10, "samples": samples, "model": "gru",
            "units": {"minmax": table, "raw": table}, "diversity": {"units": "minmax", "top_k": 20, "methods": div}}


def test_compare_runs_matches_an_independent_computation(tmp_path, capsys):
    from eval import compare

    root = tmp_path / "runs"
    scales = {0: 1.0, 1: 1.5}
    for seed, scale in scales.items():
        d = root / "vrnn" / "6-6" / "sel_id10284" / f"seed{seed}"
        d.mkdir(parents=True)
        (d / "test.json").write_text(json.dumps(fake_eval("6-6", scale)))
        (d / "test_single.json").write_text(json.dumps(fake_eval("6-6", 2 * scale, samples=1)))
    out_dir = tmp_path / "table"
    compare.main(["--runs", str(root), "--out", str(out_dir)])
    printed = capsys.readouterr().out
    result = json.loads((out_dir / "compare.json").read_text())
    assert (out_dir / "compare.md").read_text() == printed
    assert (out_dir / "mae_apd.png").stat().st_size > 0
    vrnn = result["horizons"]["6-6"]["vrnn"]
    # By hand: the mean and sample standard deviation over the two seeds (one rotation each).
    single = [0.10 * 2 * s for s in scales.values()]
    mean_mae = [0.10 * s for s in scales.values()]
    top20 = [0.7 * 0.10 * s for s in scales.values()]
    for key, values in (("mae_single", single), ("mae_mean", mean_mae), ("mae_top20", top20)):
        m = sum(values) / 2
        assert vrnn["mean"][key] == pytest.approx(m)
        assert vrnn["sd"][key] == pytest.approx(math.sqrt(sum((v - m) ** 2 for v in values)))
    assert vrnn["mean"]["apd_mae"] == pytest.approx(2.5)
    assert vrnn["mean"]["mae_best"] == pytest.approx(0.5 * 0.125)
    assert result["horizons"]["6-6"]["hold_last"]["mean"]["mae_mean"] == pytest.approx(0.12)
    assert result["horizons"]["6-6"]["hold_last"]["mean"]["apd_mae"] is None
    assert list(result["horizons"]["6-6"]) == ["vrnn", "hold_last", "random_walk"]
    # The bars: the model's means over the baselines' on the same runs (random walk: 0.8 x 0.3 x scale).
    ratios = vrnn["ratios"]
    assert ratios["mae_mean/hold_last"] == pytest.approx(0.125 / 0.12)
    assert ratios["mae_single/hold_last"] == pytest.approx(0.25 / 0.12)
    assert ratios["mae_best/hold_last"] == pytest.approx(0.0625 / 0.12)
    assert ratios["energy/random_walk"] == pytest.approx(0.1 / (0.8 * 0.3 * 1.25))
    assert "| 6-6 | vrnn | 2.083 | 1.042 | 0.5208 | 0.3333 |" in printed
    assert "| vrnn | 2 | 1 | 0.25 ± 0.071 | 0.125 ± 0.035 |" in printed
    assert "linear" not in printed


def test_compare_runs_bad_inputs_are_one_line(tmp_path, capsys):
    from eval import compare

    (tmp_path / "empty").mkdir()
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    for argv, message in [
        (["--runs", str(tmp_path / "empty")], "holds no runs"),
        (["--runs", str(tmp_path / "missing")], "is not a folder"),
        (["--runs", str(tmp_path / "empty"), "--out", str(a_file)], "is a file"),
    ]:
        with pytest.raises(SystemExit) as e:
            compare.main(argv)
        msg = str(e.value.code)
        assert msg.startswith("error:") and "\n" not in msg and message in msg, msg
    for argv, message in [([], "or --runs ROOT"), ([str(a_file), "--runs", str(tmp_path)], "not both")]:
        with pytest.raises(SystemExit) as e:
            compare.main(argv)
        assert e.value.code == 2 and message in capsys.readouterr().err


@pytest.mark.slow
def test_one_tiny_run_end_to_end(script, vox_like, tmp_path, capsys):
    from eval import compare

    root = tmp_path / "runs"
    tiny = ["--override=--config.train.num_epochs=1", "--override=--config.train.steps_per_epoch=3",
            "--override=--config.train.val_samples=4", "--override=--config.train.batch_size=8"]
    argv = ["--runs", str(root), "--data_dir", str(vox_like), "--models", "gru", "--horizons", "6-6",
            "--seeds", "0", "--eval_samples", "4", "--max_runs", "1", "--results", str(tmp_path / "kept"), *tiny]
    assert script.main(argv) == 0
    out = capsys.readouterr().out
    assert "[1/3] gru 6-6 sel_id10284 seed0: done in" in out and "--max_runs" in out
    wd = root / "gru" / "6-6" / "sel_id10284" / "seed0"
    assert script.training_finished(str(wd))
    kept = tmp_path / "kept" / "gru" / "6-6" / "sel_id10284" / "seed0"
    for name in ("test.json", "test_single.json", "config.json"):  # kept without this machine's paths
        text = (kept / name).read_text()
        assert str(root) not in text and "<runs>" in text, name
    assert json.loads((kept / "config.json").read_text())["data"]["dir"] == "<runs>/data/sel_id10284/train_sel"
    ev = json.loads((wd / "test.json").read_text())
    assert set(ev["clips"]) == {f"{s}#clip{i}" for s in ("id10287", "id10289") for i in range(2)}
    assert json.loads((wd / "test_single.json").read_text())["samples"] == 1
    compare.main(["--runs", str(root), "--out", str(tmp_path / "table")])
    table = capsys.readouterr().out
    assert "| gru | 1 | 1 |" in table and "| hold_last | 1 | 1 |" in table
