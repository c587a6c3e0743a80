"""``python -m eval.forecast``'s numbers against an independent NumPy computation on a tiny folder.

Written from the protocol in eval/forecast.py's docstring, not from its helpers: non-overlapping N+M
windows of every clip from frame 0 (a remainder shorter than a window dropped); per clip, every
dimension min-max scaled over the observed frames of all its evaluation windows (a dimension with
zero range left unscaled); per-window scores averaged over all windows of all clips. Hold-last
repeats the last observed frame and linear extrapolation adds the last one-frame step per frame;
the tiny run's model (tests/conftest.py) is a deterministic GRU, so its forecast is recomputed here
from the workdir. Each of the three is one point forecast repeated: the mean, median and best-of-S
MAE are its MAE, the APD is zero, and the energy score is the Euclidean norm of its error.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kpflow import checkpoint


def _point_forecasts(trained, windows, n, m):
    """``{method: [W, M, D]}`` for ``windows [W, N+M, D]`` float64."""
    last, step = windows[:, n - 1], windows[:, n - 1] - windows[:, n - 2]
    frames_ahead = np.arange(1, m + 1)[None, :, None]
    model = trained.forecaster.sample(trained.variables, jnp.asarray(windows[:, :n], jnp.float32), m,
                                      jax.random.PRNGKey(0))[0]
    return {
        "hold_last": np.repeat(last[:, None], m, axis=1),
        "linear": last[:, None] + frames_ahead * step[:, None],
        "model": np.asarray(model, np.float64),
    }


def _expected_scores(trained, clips: dict, n: int, m: int) -> tuple[dict, dict]:
    """(``{unit: {method: {score: value}}}``, windows per clip) by the protocol."""
    errors = {"raw": {}, "minmax": {}}  # unit -> method -> per-window errors [W, M, D]
    counts = {}
    for name, series in clips.items():
        series = np.asarray(series, np.float64)
        count = len(series) // (n + m)
        counts[name] = count
        windows = series[: count * (n + m)].reshape(count, n + m, -1)
        observed = windows[:, :n].reshape(-1, series.shape[1])
        span = observed.max(0) - observed.min(0)
        span = np.where(span > 1e-12, span, 1.0)
        for method, point in _point_forecasts(trained, windows, n, m).items():
            err = point - windows[:, n:]
            errors["raw"].setdefault(method, []).append(err)
            errors["minmax"].setdefault(method, []).append(err / span)
    expected = {}
    for unit, methods in errors.items():
        expected[unit] = {}
        for method, parts in methods.items():
            err = np.concatenate(parts)
            mae = float(np.mean(np.abs(err)))  # every window has M x D numbers: the mean of window means
            expected[unit][method] = {
                "mae_mean": mae, "mae_median": mae, "mae_best": mae, "apd": 0.0,
                "energy_score": float(np.mean(np.sqrt(np.sum(err**2, axis=(1, 2))))),
            }
    return expected, counts


def test_eval_forecast_scores_match_the_protocol(tiny_run, tiny_run_scores):
    n, m = tiny_run.num_observed, tiny_run.horizon
    got = tiny_run_scores
    expected, counts = _expected_scores(checkpoint.load_trained(str(tiny_run.workdir)), tiny_run.clips, n, m)
    assert got["horizon"] == f"{n}-{m}" and got["samples"] == tiny_run.samples
    assert got["clips"] == counts and got["num_windows"] == sum(counts.values())
    assert all(c >= 3 for c in counts.values()) and got["num_windows"] % 4  # a padded last batch of 4
    for unit, methods in expected.items():
        for method, scores in methods.items():
            for score, value in scores.items():
                want = pytest.approx(value, rel=1e-5, abs=1e-6)
                assert got["units"][unit][method][score] == want, (unit, method, score)
    # The units differ, so the two systems are not one computation twice.
    assert got["units"]["raw"]["linear"]["mae_mean"] != pytest.approx(got["units"]["minmax"]["linear"]["mae_mean"])
