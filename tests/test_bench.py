"""eval.bench: each benchmark runs end to end on tiny sizes and writes its JSON; the table leads with
ratios timed in the same run; mistakes are one line. No timing assertions: speed is benchmarked,
not tested."""

import json
import math
import pathlib
import subprocess
import sys

import pytest

from eval import bench
from eval.bench import forecast, realtime, timing

REPO = pathlib.Path(__file__).resolve().parent.parent
TINY_FOMM = ["--config_variant", "tiny", "--frame_size", "32", "--tiny"]


def check_stats(stats, repeats):
    """A timing record: ``repeats`` times, and positive finite statistics of them."""
    assert len(stats["times_ms"]) == repeats
    for key in ("median_ms", "min_ms", "max_ms"):
        assert math.isfinite(stats[key]) and stats[key] > 0, key
    assert stats["min_ms"] <= stats["median_ms"] <= stats["max_ms"] and stats["iqr_ms"] >= 0


def check_environment(env):
    for key in ("backend", "devices", "device_kind", "cpu_count", "python", "jax", "jaxlib", "flax", "numpy"):
        assert env[key], key


def check_headline(h, same_run):
    """The headline names what was timed and one positive ratio per reference timed in the same run."""
    assert h["what"] and h["median_ms"] > 0 and set(h["same_run"]) == set(same_run)
    for d in h["same_run"].values():
        assert d["what"] and d["median_ms"] > 0 and math.isfinite(d["speedup"]) and d["speedup"] > 0


def one_line_exit(argv, capsys=None) -> str:
    """The message ``bench.main(argv)`` exits with (or prints to stderr, for argparse's errors)."""
    with pytest.raises(SystemExit) as exc:
        bench.main(argv)
    message = exc.value.code if isinstance(exc.value.code, str) else capsys.readouterr().err.strip()
    assert message and "\n" not in message and "Traceback" not in message, message
    return message


# -- the timing helpers ----------------------------------------------------------------------------
def test_time_calls_warms_up_once_then_times_each_call():
    calls = []
    times = timing.time_calls(lambda: calls.append(1), repeats=4)
    assert len(calls) == 5 and len(times) == 4 and min(times) >= 0


def test_time_interleaved_calls_variants_in_turn():
    calls = []
    times = timing.time_interleaved({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, repeats=3)
    assert calls == ["a", "b"] + ["a", "b"] * 3  # one warm-up each, then round-robin
    assert {k: len(v) for k, v in times.items()} == {"a": 3, "b": 3} and min(times["a"] + times["b"]) >= 0


def test_ms_stats_is_robust_to_one_slow_call():
    stats = timing.ms_stats([10.0, 11.0, 10.5, 10.2, 500.0])
    assert 10 <= stats["median_ms"] <= 11 and stats["iqr_ms"] < 2 and stats["max_ms"] == 500
    check_stats(timing.ms_stats([3.0]), 1)  # one call: no spread, no error


def test_headline_keeps_other_machines_apart():
    h = timing.headline("ours", 2.0, {"ref": ("a reference", 8.0)}, ("another machine", 100.0))
    assert h["same_run"]["ref"]["speedup"] > 1 and h["context"]["speedup"] > 1
    text = timing.format_headline(h)
    assert "faster than a reference" in text and "another machine" not in text
    assert "not measured in this run" in timing.format_context(h)
    assert timing.format_context(timing.headline("ours", 2.0, {})) is None


# -- forecast --------------------------------------------------------------------------------------
def test_forecast_cli_writes_json(tmp_path):
    """``python -m eval.bench forecast`` (a child process): table and JSON, led by the same-run ratio."""
    out = tmp_path / "sub" / "bench.json"
    proc = subprocess.run(
        [sys.executable, "-m", "eval.bench", "forecast", "--model", "random_walk", "--repeats", "2",
         "--samples", "4", "--out", str(out)],
        check=False, cwd=REPO, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[2].startswith("  headline, timed in this run: kpflow's vmap-ed jitted call")
    assert "faster than a Python loop over samples" in lines[3]
    r = json.loads(out.read_text())
    assert (r["benchmark"], r["model"], r["weights"]) == ("forecast", "random_walk", "random")
    assert (r["num_observed"], r["horizon"], r["batch"], r["samples"], r["repeats"]) == (12, 12, 1, 4, 2)
    check_stats(r["vmap_jit"], 2)
    check_stats(r["python_loop"], 2)
    check_stats(r["vmap_eager"], 2)
    assert r["loop_over_vmap"] > 0 and r["eager_over_jit"] > 0
    check_headline(r["headline"], {"python_loop"})
    check_environment(r["environment"])
    # 4 samples is not the authors' setting: no ratio against their 128 ms, not even as context.
    assert r["reference"]["comparable"] is False and r["speedup_vs_reference"] is None
    assert r["headline"]["context"] is None and "not comparable" in proc.stdout


def test_forecast_default_is_the_authors_vrnn():
    subject = forecast.resolve(bench.build_parser().parse_args(["forecast"]))
    m = subject.forecaster.module
    assert (subject.model, subject.num_observed, subject.horizon, subject.dim) == ("vrnn", 12, 12, 60)
    # Their sizes; the raw keypoint vector and z into the GRU; a deterministic decoder.
    assert (m.hidden, m.latent, m.prior_hidden, m.posterior_hidden, m.decoder_hidden) == (256, 20, 128, 128, 128)
    assert (m.embed_inputs, m.position_features, m.decoder_temperature) == (False, False, 0.0)


def test_forecast_tiny_vrnn_with_bfloat16_matmuls(tmp_path, capsys):
    out = tmp_path / "v.json"
    r = bench.main(["forecast", "--tiny", "--set", "hidden=12", "--repeats", "2", "--samples", "8",
                         "--horizon", "3-2", "--skip_eager", "--dtypes", "float32,bfloat16", "--out", str(out)])
    assert json.loads(out.read_text()) == json.loads(json.dumps(r, default=str))
    assert (r["model"], r["num_observed"], r["horizon"], r["samples"]) == ("vrnn", 3, 2, 8)
    assert r["hparams"]["hidden"] == 12 and r["hparams"]["latent"] == 4 and r["num_params"] > 0  # --set, --tiny
    assert r["timing"] == "interleaved" and set(r["dtypes"]) == {"float32", "bfloat16"}
    low = r["dtypes"]["bfloat16"]
    check_stats(low, 2)
    assert low["speedup_vs_float32"] > 0
    # bf16 products move the samples, but far less than the samples' own spread.
    assert 0 < low["relative_to_sample_spread"] < 0.05
    assert "vmap_eager" not in r
    table = capsys.readouterr().out
    assert "bfloat16 matmuls" in table and "faster than a Python loop over samples" in table


def test_torch_reference_procedures():
    torch = pytest.importorskip("torch")
    from eval.bench import torch_reference

    model = torch_reference.build(dim=12, hidden=8, latent=3, prior_hidden=5, posterior_hidden=5, decoder_hidden=5)
    window = torch.randn(2, 7, 12)  # B=2, N=4 observed + M=3

    def authors(w):
        torch.manual_seed(0)
        return torch_reference.authors_procedure(model, w, 4, 6)

    a = authors(window)
    assert a.shape == (6, 2, 7, 12) and bool(torch.isfinite(a).all())
    # One state fed the TRUE frames: changing frame 5 leaves outputs 0-5 alone and moves output 6.
    b = authors(window.clone().index_add_(1, torch.tensor([5]), torch.ones(2, 1, 12)))
    torch.testing.assert_close(a[:, :, :6], b[:, :, :6])
    assert float((a[:, :, 6] - b[:, :, 6]).abs().max()) > 1e-4
    torch.manual_seed(0)
    c = torch_reference.closed_loop(model, window[:, :4], 3, 6)
    assert c.shape == (12, 3, 12) and float(c.std(0).max()) > 0  # independent trajectories differ


@pytest.mark.slow  # a child process imports torch
def test_forecast_headline_is_against_pytorch_timed_in_the_same_run(capsys):
    pytest.importorskip("torch")
    r = bench.main(["forecast", "--tiny", "--torch_reference", "--repeats", "1", "--skip_loop", "--skip_eager"])
    check_headline(r["headline"], {"torch_authors_procedure", "torch_closed_loop_batched"})
    for name in ("authors_procedure", "closed_loop_batched"):
        check_stats(r["torch_reference"][name], 1)
    # 100 samples of 12-12: the authors' 128 ms applies, but only as context from another machine.
    assert r["reference"]["comparable"] and r["headline"]["context"]["median_ms"] == 128.0
    lines = capsys.readouterr().out.splitlines()
    assert lines[2].startswith("  headline, timed in this run")
    assert "faster than the authors' procedure in eager PyTorch" in lines[3]
    assert "faster than the same closed loop batched in eager PyTorch" in lines[4]
    assert lines[-1].startswith("  context, not measured in this run: the authors' PyTorch code")
    assert "authors' VRNN architecture" in one_line_exit(
        ["forecast", "--tiny", "--torch_reference", "--set", "embed_inputs=True"])


@pytest.mark.slow  # trains a small GRU for two steps first
def test_forecast_times_a_trained_workdir(tmp_path):
    from configs import demo
    from kpflow.training.forecaster import train_and_evaluate

    config = demo.get_config("gru")
    config.model.hidden = 8
    config.data.synthetic.update(num_clips=6, num_speakers=3, min_frames=40, max_frames=60)
    config.train.update(batch_size=8, num_epochs=1, steps_per_epoch=2, warmup_steps=1, val_samples=2)
    run = str(tmp_path / "run")
    train_and_evaluate(config, run)
    r = bench.main(["forecast", "--forecaster", run, "--horizon", "12-12", "--repeats", "1", "--samples", "3",
                         "--skip_loop", "--skip_eager"])
    assert r["weights"] == run and r["model"] == f"gru ({run})"
    # The trained model's own horizon and width, whatever --horizon / --dim say.
    assert (r["num_observed"], r["horizon"]) == (config.num_observed, config.num_predicted)
    assert r["hparams"]["hidden"] == 8
    check_stats(r["vmap_jit"], 1)
    assert "drop --set" in one_line_exit(["forecast", "--forecaster", run, "--set", "hidden=4"])


def test_bad_arguments_exit_with_one_line(tmp_path, capsys):
    nope = str(tmp_path / "nope")
    assert one_line_exit(["forecast", "--forecaster", nope]).startswith(
        f"python -m eval.bench forecast: error: cannot load --forecaster {nope!r}")
    assert one_line_exit(["realtime", "--forecaster", nope] + TINY_FOMM).startswith(
        f"python -m eval.bench realtime: error: cannot load --forecaster {nope!r}")
    assert one_line_exit(["realtime", "--fomm", nope, "--tiny"]).startswith(
        f"python -m eval.bench realtime: error: cannot load --fomm {nope!r}")
    assert "--set expects KEY=VALUE, got 'hidden'" in one_line_exit(["forecast", "--set", "hidden"], capsys)
    assert one_line_exit(["nosuch"]) == "python -m eval.bench: error: unknown benchmark 'nosuch'; expected one of " + ", ".join(
        bench.BENCHMARKS)
    assert "BENCHMARK" in one_line_exit([], capsys)  # a benchmark name is required
    assert "--dtypes must start with float32" in one_line_exit(["forecast", "--tiny", "--dtypes", "bfloat16"])
    assert "no matmul_dtype" in one_line_exit(["forecast", "--model", "hold_last", "--dtypes", "float32,bfloat16"])
    assert "horizon" in one_line_exit(["forecast", "--model", "hold_last", "--horizon", "12"])
    assert "'nosuch'" in one_line_exit(["forecast", "--model", "nosuch"])
    assert "nosuch" in one_line_exit(["forecast", "--tiny", "--set", "nosuch=1"])
    assert "--batch" in one_line_exit(["fomm", "--batch", "0"])
    assert one_line_exit(["pipeline", "--dataset", "nosuch"]).startswith("python -m eval.bench pipeline: error:")
    assert "float32" in one_line_exit(["realtime", "--dtypes", "bfloat16"] + TINY_FOMM)
    assert "--frames" in one_line_exit(["realtime", "--frames", "5"] + TINY_FOMM)
    assert "is a folder" in one_line_exit(["fomm", "--out", str(tmp_path)])
    assert "--frames >= 2" in one_line_exit(["call", "--frames", "1"])
    assert "--calls" in one_line_exit(["call", "--calls", "0"])


def test_help_describes_each_benchmark(capsys):
    for name in bench.BENCHMARKS:
        with pytest.raises(SystemExit) as exc:
            bench.main([name, "--help"])
        assert exc.value.code == 0
        text = capsys.readouterr().out
        assert f"python -m eval.bench {name}" in text and "--out" in text


# -- fomm and pipeline -----------------------------------------------------------------------------
def test_fomm_tiny_reports_times_with_pytorch_as_context(tmp_path, capsys):
    out = tmp_path / "fomm.json"
    r = bench.main(["fomm", "--config_variant", "tiny", "--frame_size", "64", "--repeats", "2",
                         "--out", str(out)])
    assert json.loads(out.read_text()) == json.loads(json.dumps(r, default=str))
    assert (r["benchmark"], r["config_variant"], r["frame_size"]) == ("fomm", "tiny", 64)
    assert (r["batch"], r["repeats"], r["dtype"]) == (1, 2, "float32")
    for name in ("detector", "generator"):
        check_stats(r[name], 2)
        assert r["params_m"][name] > 0 and r["ratio_reference_over_ours"][name] > 0
    assert r["comparable"] is False and set(r["load_average_1m"]) == {"before", "after"}
    check_environment(r["environment"])
    table = capsys.readouterr().out
    assert "context, not measured in this run: PyTorch FOMM" in table and "not comparable" in table


def test_pipeline_benchmark_tiny(tmp_path):
    out = tmp_path / "p.json"
    r = bench.main(["pipeline", *TINY_FOMM, "--samples", "3", "--horizon", "6-6", "--chunk_size", "8",
                         "--out", str(out)])
    assert json.loads(out.read_text()) == json.loads(json.dumps(r, default=str))
    assert r["benchmark"] == "pipeline" and r["output_shape"] == [3, 12, 32, 32, 3]
    assert r["frames_rendered"] == 6 + 3 * 6  # the observed frames once, each sample's forecast frames
    assert r["seconds"]["median"] > 0 and r["frames_per_second"] > 0 and len(r["seconds"]["times"]) == 1
    assert r["chunk_compiled_bytes"] is None or r["chunk_compiled_bytes"] > 0
    check_environment(r["environment"])


# -- realtime --------------------------------------------------------------------------------------
def test_hlo_flops_counts_a_matmul():
    import jax
    import jax.numpy as jnp

    f = jax.jit(lambda a, b: a @ b)
    assert realtime.hlo_flops(f, jnp.ones((4, 5)), jnp.ones((5, 6))) == 2 * 4 * 5 * 6


def test_realtime_budget_and_bitrate_are_the_papers():
    from kpflow.pipeline import Schedule

    # The paper's 6-6 protocol at 30 fps: 60 FP32 numbers on 15 sent frames a second are 28.8 kbps.
    assert realtime.paper_bitrate(60, Schedule(6, 6))["kbps"] == pytest.approx(28.8)
    b = realtime.realtime_budget({"extraction": 2e9, "forecasting": None, "generation": 100e9}, Schedule(6, 6))
    # the detector on the 15 sent frames, the forecaster once per 12-frame block, the generator on all 30
    assert b["calls_per_second"] == {"extraction": 15.0, "forecasting": 2.5, "generation": 30.0}
    assert b["gflop_per_call"]["forecasting"] is None and b["required_tops"] > 0


@pytest.fixture(scope="module")
def saved_fomm_and_video(tmp_path_factory):
    """A saved tiny FOMM directory (32x32) and a 14-frame mp4 of that size."""
    from configs.fomm_common import fomm_config
    from kpflow.data.synthetic_video import make_synthetic_videos
    from kpflow.fomm.model import random_fomm, save_model

    root = tmp_path_factory.mktemp("realtime")
    config = fomm_config("vox", "tiny")
    config.data.frame_shape = (32, 32, 3)
    save_model(str(root / "fomm"), config, random_fomm(config, seed=1).variables)
    video = make_synthetic_videos(root / "videos", num_train=0, num_test=1, num_frames=14, size=32, fmt="mp4")
    return str(root / "fomm"), str(video["test"][0])


def check_realtime(r, render, dtypes, repeats):
    assert (r["benchmark"], r["schedule"], r["frames"], r["render"], r["repeats"]) == (
        "realtime", "6-6", 12, render, repeats)
    assert tuple(r["dtypes"]) == dtypes and r["comparable"] is False
    for e in r["dtypes"].values():
        assert len(e["runs"]) == repeats
        for run in e["runs"]:  # the stages are inside the run's wall clock
            assert 0 < run["extraction"] + run["forecasting"] + run["generation"] <= run["total"]
        assert e["fps"] > 0 and e["ms_per_30_frames"]["total"] > 0 and e["budget"]["required_tops"] > 0
        assert all(v > 0 for v in e["flops_per_call"].values())
    assert "quality_vs_float32" not in r["dtypes"]["float32"]
    check_headline(r["headline"], set())
    check_environment(r["environment"])


def test_realtime_with_a_saved_fomm_a_video_and_bfloat16(saved_fomm_and_video, tmp_path, capsys):
    """--fomm and --video replace the random weights and the generated clip; bfloat16 beside float32."""
    fomm, video = saved_fomm_and_video
    out = tmp_path / "r.json"
    r = bench.main(["realtime", "--fomm", fomm, "--video", video, "--tiny", "--frames", "12", "--repeats", "2",
                         "--frame_size", "256", "--dtypes", "float32,bfloat16", "--out", str(out)])
    assert json.loads(out.read_text()) == json.loads(json.dumps(r, default=str))
    check_realtime(r, "frame", ("float32", "bfloat16"), 2)
    assert r["frame_size"] == 32 and r["config_variant"] == "from --fomm"  # the FOMM's size wins
    assert r["weights"] == {"fomm": fomm, "forecaster": "random"} and r["video"] == video
    q = r["dtypes"]["bfloat16"]["quality_vs_float32"]
    assert 0 <= q["frame_mae"] < 0.05 and 0 <= q["keypoint_mae"] < 0.05
    lines = capsys.readouterr().out.splitlines()
    assert lines[2].startswith("  headline, timed in this run: the float32 stream")
    assert lines[-2].startswith("  context, not measured in this run: the paper's 36.69 fps")
    assert "has 14 frames; --frames is 36" in one_line_exit(["realtime", "--fomm", fomm, "--video", video, "--tiny"])


def test_realtime_render_modes_and_source_cache(saved_fomm_and_video):
    """The grouped render modes stream the clip (``frame``: above); encoding the source in every
    generator call costs the encoder's FLOPs each time."""
    fomm, _ = saved_fomm_and_video  # loaded, not initialised: no compilation of an init
    run = lambda *flags: bench.main(["realtime", "--fomm", fomm, "--tiny", "--frames", "12", "--repeats", "1", *flags])
    cached, uncached = run("--render", "forecast_block"), run("--render", "block", "--no-source_cache")
    check_realtime(cached, "forecast_block", ("float32",), 1)
    check_realtime(uncached, "block", ("float32",), 1)
    assert cached["source_cache"] is True and uncached["source_cache"] is False
    flops = [r["dtypes"]["float32"]["flops_per_call"]["generation"] for r in (cached, uncached)]
    assert flops[0] < flops[1]


# -- call ------------------------------------------------------------------------------------------


def test_call_benchmark_runs_loopback_calls_and_writes_its_schema(tmp_path, capsys):
    pytest.importorskip("aiortc", reason="the call extra is not installed: pip install -e '.[call]'")
    out = tmp_path / "call.json"
    r = bench.main(["call", "--frame_sizes", "64", "--calls", "1", "2", "--frames", "6", "--out", str(out)])
    assert json.loads(out.read_text()) == json.loads(json.dumps(r))
    (size,) = r["sizes"]
    assert size["frame_size"] == 64 and size["frames"] == 6 and 0 < size["rendered_share"] <= 1
    assert set(size["latency_ms"]) == {"p50", "p95", "max"} and size["kbps"] > 0
    assert [c["calls"] for c in r["concurrent"]] == [1, 2]
    for c in r["concurrent"]:
        assert 0 < c["min_rendered_share"] <= 1 and c["sustained"] == (c["min_rendered_share"] >= 0.95)
    assert "concurrent call(s) at 64x64" in capsys.readouterr().out


def test_data_benchmark_times_each_pipeline_and_writes_its_schema(tmp_path, capsys):
    out = tmp_path / "data.json"
    r = bench.main(["data", "--frame_size", "16", "--workers", "0", "1", "--batch_size", "2", "--batches", "2",
                    "--rounds", "1", "--out", str(out)])
    assert json.loads(out.read_text()) == json.loads(json.dumps(r))
    assert list(r["pipelines"]) == ["folder reader", "grain, folder, 0 workers", "grain, folder, 1 workers"]
    for p in r["pipelines"].values():
        assert p["pairs_per_s"] > 0 and len(p["blocks_pairs_per_s"]) == 1
    assert r["pipelines"]["folder reader"]["vs_folder_reader"] == 1.0
    assert "grain, folder, 1 workers" in capsys.readouterr().out
    assert "--batches" in one_line_exit(["data", "--batches", "0"])
    assert "is not a folder" in one_line_exit(["data", "--videos", str(tmp_path / "nope")])
