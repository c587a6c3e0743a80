"""A trained forecaster as the codec's predictor: deterministic forecasts, the predictor's grid and
gain, one side perturbed, and ``eval.codec --predictor``."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kpflow import codec
from kpflow.data import synthetic_clips
from kpflow.forecast import create as build_forecaster
from kpflow.forecast.predictor import ForecastPredictor, fit_gain
from kpflow.keypoints import CausalScaler

N, M, K = 4, 3, 2
D = 6 * K


@pytest.fixture(scope="module")
def series():
    clips = synthetic_clips(num_clips=4, num_speakers=2, min_frames=60, max_frames=80, num_keypoints=K, seed=3)
    return [np.asarray(c, np.float32) for c in clips.values()]


class _Jitted:
    """A forecaster whose init, sample and point_forecast are jitted (eager calls dispatch op by op)."""

    def __init__(self, f):
        self.f = f
        self.point_forecast = jax.jit(f.point_forecast, static_argnums=2)
        self.sample = jax.jit(f.sample, static_argnums=(2, 4))

    def __getattr__(self, name):
        return getattr(self.f, name)


def _model(name, series, **kw):
    f = build_forecaster(name, dim=D, num_observed=N, horizon=M, **kw)
    windows = np.stack([s[:N + M] for s in series])
    scaler = CausalScaler.fit(series)
    variables = jax.jit(lambda key, w: f.init(key, w, scaler))(jax.random.PRNGKey(0), windows)
    return _Jitted(f), variables, windows


# -- point forecasts -------------------------------------------------------------------------------


def test_a_deterministic_gru_point_forecast_is_its_sample(series):
    f, v, w = _model("gru", series, hidden=8, deterministic=True)
    # A trained-looking state: perturb the zero-initialised head so that the forecast moves.
    v = jax.tree_util.tree_map(lambda a: a + 0.05 * jnp.sin(jnp.arange(a.size).reshape(a.shape)), v)
    point = f.point_forecast(v, w[:, :N], M)
    assert np.abs(np.asarray(point) - np.asarray(w[:, N - 1:N])).max() > 1e-4  # it moves
    np.testing.assert_allclose(point, f.sample(v, w[:, :N], M, jax.random.PRNGKey(5))[0], rtol=0, atol=1e-6)


def test_a_stochastic_gru_point_forecast_is_the_path_of_its_means(series):
    f, v, w = _model("gru", series, hidden=8)
    v = jax.tree_util.tree_map(lambda a: a + 0.05 * jnp.cos(jnp.arange(a.size).reshape(a.shape)), v)
    det = _Jitted(build_forecaster("gru", dim=D, num_observed=N, horizon=M, hidden=8, deterministic=True))
    # The deterministic twin with the stochastic head's mean half: the same path.
    kernel = v["params"]["head"]["kernel"][:, :D]
    bias = v["params"]["head"]["bias"][:D]
    v_det = jax.tree_util.tree_map(lambda a: a, v)
    v_det["params"] = dict(v["params"], head={"kernel": kernel, "bias": bias})
    np.testing.assert_allclose(f.point_forecast(v, w[:, :N], M), det.point_forecast(v_det, w[:, :N], M), atol=1e-6)
    draws = f.sample(v, w[:, :N], M, jax.random.PRNGKey(1), num_samples=2)
    assert not np.allclose(draws[0], f.point_forecast(v, w[:, :N], M), atol=1e-6)  # samples are noisy, the point is not


def test_the_mirrored_vrnn_point_forecast_is_the_centre_of_its_samples(series):
    f, v, w = _model("vrnn", series, hidden=8, latent=4, prior_hidden=8, posterior_hidden=8, decoder_hidden=8,
                     equivariant=True, mirror_samples=True, frame_bound=None)
    samples = np.asarray(f.sample(v, w[:, :N], M, jax.random.PRNGKey(2), num_samples=2))
    np.testing.assert_allclose(samples.mean(axis=0), f.point_forecast(v, w[:, :N], M), atol=1e-5)


def test_the_grunf_point_forecast_is_its_sample_at_zero_temperature(series):
    kw = {"hidden": 8, "flow_hidden": 8, "num_blocks": 2}
    f, v, w = _model("grunf", series, **kw)
    cold = _Jitted(build_forecaster("grunf", dim=D, num_observed=N, horizon=M, temperature=0.0, **kw))
    np.testing.assert_allclose(f.point_forecast(v, w[:, :N], M), cold.sample(v, w[:, :N], M, jax.random.PRNGKey(3))[0],
                               atol=1e-6)


@pytest.mark.parametrize("name,kw", [("vae", {"hidden": 8, "latent": 4}), ("nf", {"hidden": 8, "num_blocks": 2, "context_hidden": 8})])
def test_vae_and_nf_point_forecasts_are_deterministic_and_differ_from_samples(series, name, kw):
    f, v, w = _model(name, series, **kw)
    v = jax.tree_util.tree_map(lambda a: a + 0.02 * jnp.sin(jnp.arange(a.size).reshape(a.shape)), v)
    a, b = f.point_forecast(v, w[:, :N], M), f.point_forecast(v, w[:, :N], M)
    np.testing.assert_array_equal(a, b)
    assert np.all(np.isfinite(a)) and a.shape == (len(w), M, D)
    assert not np.allclose(a, f.sample(v, w[:, :N], M, jax.random.PRNGKey(4))[0], atol=1e-6)


# -- the predictor ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def predictor(series):
    f, v, _ = _model("gru", series, hidden=8, deterministic=True)
    v = jax.tree_util.tree_map(lambda a: a + 0.05 * jnp.sin(jnp.arange(a.size).reshape(a.shape)), v)
    return ForecastPredictor(f.f, v, step=0.02, gain=1.0, name="gru")


def test_the_predictor_steps_on_its_grid_from_the_last_frame(predictor, series):
    s = series[0]
    for t in (1, 3, 10):
        pred = predictor(s[:t])
        units = (pred - s[t - 1].astype(np.float64)) / predictor.grid
        np.testing.assert_allclose(units, np.round(units), atol=1e-6)
        # and it is the forecaster's step, rounded
        forecast = predictor.forecast(s[:t])  # the model's own next frame, before the grid
        assert np.abs(pred - forecast).max() <= predictor.grid.max() / 2 + 1e-6
    assert np.abs(predictor(s[:10]) - s[9]).max() > 0  # the forecast moves


def test_gain_zero_is_hold_last_bit_for_bit(predictor, series):
    hold = predictor.replace(gain=0.0)
    params = codec.CodecParams.fit(series[:2], 0.02).fit_to_policy(series[:2])
    a = codec.transmit(series[2], params, hold)
    b = codec.transmit(series[2], params)
    np.testing.assert_array_equal(a["reconstruction"], b["reconstruction"])
    assert a["bytes"] == b["bytes"]
    with pytest.raises(ValueError, match="gain must be in"):
        predictor.replace(gain=1.5)


class _Perturbed:
    """The predictor on other hardware: every forecast off by about 1e-6, differently per call."""

    def __init__(self, base: ForecastPredictor, size: float = 1e-6):
        self.inner = base.replace()
        self.size = size
        self.rng = np.random.default_rng(0)
        base_forecast = self.inner.forecast

        def forecast(history):
            return base_forecast(history) + self.rng.uniform(-size, size, D)

        self.inner.forecast = forecast

    def __call__(self, history):
        return self.inner(history)


def test_a_receiver_whose_predictor_differs_in_the_last_bits_stays_within_the_bound_and_resyncs(predictor, series):
    params = codec.CodecParams.fit(series[:2], 0.02, predictor).fit_to_policy(series[:2], predictor, intra_period=10)
    s = series[3]
    sender = codec.Sender(params, predictor, intra_period=10)
    exact = codec.Receiver(params, predictor)
    other = codec.Receiver(params, _Perturbed(predictor))
    same, diffs, intra_frames = 0, [], []
    for t, x in enumerate(s):
        packet = sender.step(x)
        a, b = exact.step(packet), other.step(packet)
        if packet is not None and packet[0] & codec.INTRA_FLAG:
            intra_frames.append(t)
            np.testing.assert_array_equal(a, b)  # an intra packet puts them back in step
        same += np.array_equal(a, b)
        diffs.append(np.abs(a - b).max())
    assert len(intra_frames) >= len(s) // 10
    assert same >= 0.9 * len(s)  # the grid absorbs nearly all of the float noise
    # where they differ, by a few grid steps at most: far inside the codec's drift threshold
    assert max(diffs) <= 8 * predictor.grid.max() < codec.DEFAULT_THRESHOLD


def test_without_the_grid_the_two_ends_drift_apart_every_frame(predictor, series):
    """The check above can fail: with a grid far below float noise, the ends disagree nearly always."""
    fine = ForecastPredictor(predictor.forecaster, predictor.variables, step=0.02, grid_fraction=1e-9)
    params = codec.CodecParams.fit(series[:2], 0.02, fine).fit_to_policy(series[:2], fine, intra_period=10)
    sender = codec.Sender(params, fine, intra_period=10)
    exact, other = codec.Receiver(params, fine), codec.Receiver(params, _Perturbed(fine))
    same = sum(np.array_equal(exact.step(p), other.step(p)) for p in map(sender.step, series[3]))
    assert same < 0.5 * len(series[3])


def test_fit_gain_never_sends_more_than_hold_last_at_the_same_error(predictor, series):
    policy = {"policy": "threshold", "threshold": 0.02, "intra_period": 30, "max_gap": 30}
    fitted, rows = fit_gain(predictor, series[:2], 0.02, policy, gains=(0.0, 0.5, 1.0))
    assert [r["gain"] for r in rows] == [0.0, 0.5, 1.0]
    chosen = next(r for r in rows if r["gain"] == fitted.gain)
    hold = rows[0]
    best_mae = min(r["mae_raw"] for r in rows)
    if hold["mae_raw"] <= best_mae * 1.02:
        assert chosen["bytes"] <= hold["bytes"]
    assert chosen["mae_raw"] <= best_mae * 1.02 + 1e-12
    with pytest.raises(ValueError, match="gains"):
        fit_gain(predictor, series[:2], 0.02, policy, gains=(2.0,))


# -- eval.codec --predictor ------------------------------------------------------------------------


def test_eval_codec_compares_a_forecaster_predictor_with_hold_last_in_one_run(tiny_run, tmp_path, capsys):
    from eval import codec as eval_codec

    out = tmp_path / "rd.json"
    common = ["--data_dir", str(tiny_run.data_dir), "--out", str(out), "--steps", "0.05", "--thresholds", "0.03",
              "--loss_rates", "0.2", "--predictor", str(tiny_run.workdir)]
    assert eval_codec.main(common) == 0
    points = json.loads(out.read_text())
    by_policy = {p["policy"]: p for p in points}
    name = next(p["predictor"] for p in points if "predictor" in p)
    assert {f"kpflow_threshold_{name}", f"kpflow_every_frame_{name}", "kpflow_threshold"} <= set(by_policy)
    p = by_policy[f"kpflow_threshold_{name}"]
    assert 0 <= p["gain"] <= 1 and [r["gain"] for r in p["gain_fit"]] == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert p["kbps"] > 0 and p["mae_raw"] > 0
    # the predictor's operating point is scored under loss too
    scored = [q for q in points if q["policy"] == p["policy"] and "loss" in q]
    assert scored and scored[0]["loss"][0]["rate"] == 0.2
    assert f"kpflow_threshold_{name}" in capsys.readouterr().out
    # a fixed gain of 0 is hold-last: the same bytes as the hold-last sweep
    assert eval_codec.main([*common, "--predictor_gain", "0", "--loss_rates"]) == 0
    points = {p["policy"]: p for p in json.loads(out.read_text())}
    assert points[f"kpflow_threshold_{name}"]["bytes"] == points["kpflow_threshold"]["bytes"]
    # bad input: one line, exit 2
    capsys.readouterr()
    assert eval_codec.main([*common[:-1], str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--predictor" in err
    with pytest.raises(SystemExit):
        eval_codec.main([*common, "--predictor_gain", "2"])


def test_after_a_loss_the_next_intra_packet_puts_a_forecaster_receiver_back_in_step(predictor, series):
    """An intra packet restarts the predictor's context on both ends: a predictor that reads several
    frames is exactly in step again from it (without the restart it never was, bit for bit)."""
    policy = {"policy": "threshold", "threshold": 0.005, "intra_period": 10}
    params = codec.CodecParams.fit(series[:2], 0.02, predictor).fit_to_policy(series[:2], predictor, **policy)
    frames, recovered = codec.loss_recovery(series[3], params, predictor, memory=predictor.memory, **policy)
    assert predictor.memory == N and len(frames) > 10
    assert recovered[: len(frames) // 2].all()  # every early loss: the clip's end is far
    assert frames[recovered].max() <= policy["intra_period"] + 1
