"""Closed loop through the code that slices full windows: a forecast made from the first N frames of a
window (or of a streaming block) must not change when any later frame changes.

Checking ``Forecaster.sample`` on a context alone passes by construction; these checks go through
the callers that receive whole windows or whole series and do the slicing themselves (the trainer's
validation step, ``eval_step``, is checked the same way on every trained model of
tests/test_forecasters_gru_vae_nf.py and tests/test_vrnn_grunf.py):

- ``python -m eval.forecast`` on a tiny trained workdir (``tests/conftest.py``, a deterministic GRU)
  and a folder whose clips differ only after frame N of each window: its JSON holds scores, not
  samples, so the model's MAE must move with the truth and equal, on both folders, the MAE of the
  forecast made here from the context alone;
- the streaming pipeline (``kpflow.pipeline.forecast_series``), for every trainable forecaster of
  the registry:
  changing every frame that is not transmitted changes no forecast frame, while moving one
  transmitted frame moves its block's forecast and no other block's.

Models in the pipeline check have random weights, so every input reaches the output (a fresh
initialisation's zero heads would hide a leak).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import quick_jit

from kpflow import checkpoint, forecast, pipeline
from kpflow.data import stack_windows, synthetic_clips
from kpflow.keypoints import CausalScaler

N, M, K = 4, 3, 2
D = 6 * K
S, B = 4, 5

# Compilation is the cost on CPU: the pipeline's predictors compile at XLA's cheapest settings (what
# is checked is how forecast_series slices the series, not the predictor's wiring, which
# tests/test_pipeline.py checks through kpflow.pipeline.forecaster_predictor).

# Every trainable forecaster of the registry (the baselines have no parameters to leak through), with
# tiny widths and the structural knobs of the configurations people run (configs/demo.py): the shared
# input/output layer (relative inputs, adaptive step scale, momentum, sign invariance) around every
# model, the equivariant VRNN with a persistent latent and mirrored samples, batch-normalised flows.
TINY = {
    "gru": {"hidden": 8, "num_layers": 1, "io": "shared"},
    "vae": {"hidden": 8, "latent": 4, "num_layers": 1, "io": "shared"},
    "nf": {"num_blocks": 2, "hidden": 8, "num_layers": 1, "context_hidden": 8, "norm": "batch", "io": "shared"},
    "vrnn": {"hidden": 8, "latent": 4, "prior_hidden": 8, "posterior_hidden": 8, "decoder_hidden": 8,
             "decoder_temperature": 0.0, "io": "shared", "latent_persistence": 0.9,
             "fresh_forecast_latent": True, "equivariant": True, "latent_temperature": 0.8, "mirror_samples": True},
    "grunf": {"hidden": 8, "num_blocks": 2, "flow_hidden": 8, "flow_layers": 1, "norm": "batch", "temperature": 0.85,
              "io": "shared"},
}


@functools.cache
def _clips():
    return synthetic_clips(num_clips=3, num_keypoints=K, min_frames=40, max_frames=50, seed=0)


def _model(name):
    """(forecaster, random variables): every parameter drawn from N(0, 0.2^2), running statistics at
    one, the scaler fitted on the clips. A leak would show with any weights; random ones, unlike a
    fresh initialisation's zero heads, let every input reach the output, and need no compilation
    of the initialiser (only its shapes are traced)."""
    f = forecast.create(name, dim=D, num_observed=N, horizon=M, **TINY[name])
    clips = list(_clips().values())
    example = jnp.asarray(stack_windows(clips, N + M, stride=N + M)[:B])
    scaler = CausalScaler.fit(clips)
    shapes = jax.eval_shape(f.init, jax.random.PRNGKey(0), example, scaler)
    leaves, tree = jax.tree.flatten(shapes["params"])
    keys = jax.random.split(jax.random.PRNGKey(1), len(leaves))
    variables = {
        "params": jax.tree.unflatten(tree, [0.2 * jax.random.normal(k, x.shape, x.dtype)
                                            for x, k in zip(leaves, keys)]),
        "scaler": {"loc": scaler.loc, "scale": scaler.scale, "step_scale": scaler.step_scale},
    }
    for collection in set(shapes) - set(variables):  # batch statistics of the flows
        variables[collection] = jax.tree.map(lambda x: jnp.ones(x.shape, x.dtype), shapes[collection])
    return f, variables


# -- python -m eval.forecast -----------------------------------------------------------------------------


def _future_changed(clips: dict, n: int, m: int) -> dict:
    """Each clip with every frame after N of each evaluation window, and every frame after the last
    window, moved by noise of half the clip's spread."""
    rng = np.random.default_rng(7)
    out = {}
    for name, series in clips.items():
        t = np.arange(len(series))
        after_context = (t % (n + m) >= n) | (t >= len(series) // (n + m) * (n + m))
        changed = series.copy()
        changed[after_context] += 0.5 * series.std(0) * rng.normal(size=(int(after_context.sum()), series.shape[1]))
        out[name] = changed.astype(np.float32)
    return out


def _context_only_mae(trained, clips: dict, n: int, m: int) -> float:
    """Raw MAE over every evaluation window of the forecast made from the window's first ``n`` frames."""
    errors = []
    for series in clips.values():
        count = len(series) // (n + m)
        windows = series[: count * (n + m)].reshape(count, n + m, -1)
        point = trained.forecaster.sample(trained.variables, jnp.asarray(windows[:, :n]), m, jax.random.PRNGKey(0))[0]
        errors.append(np.mean(np.abs(np.asarray(point) - windows[:, n:]), axis=(1, 2)))
    return float(np.mean(np.concatenate(errors)))


def test_eval_forecast_model_ignores_the_future_frames(tiny_run, tiny_run_scores, tmp_path):
    n, m = tiny_run.num_observed, tiny_run.horizon
    changed = _future_changed(tiny_run.clips, n, m)
    changed_dir = tiny_run.write(tmp_path / "changed", changed)
    scores = {"same": tiny_run_scores["units"]["raw"],
              "changed": tiny_run.evaluate(changed_dir, tmp_path / "changed.json")["units"]["raw"]}
    # The deterministic model's forecast, made here from each window's context alone, is what the
    # evaluation scored against either truth; the truth moved, so the scores did.
    trained = checkpoint.load_trained(str(tiny_run.workdir))
    for label, clips in (("same", tiny_run.clips), ("changed", changed)):
        assert scores[label]["model"]["mae_mean"] == pytest.approx(_context_only_mae(trained, clips, n, m), rel=1e-5)
    for method in ("model", "hold_last", "linear"):
        same, moved = scores["same"][method]["mae_mean"], scores["changed"][method]["mae_mean"]
        assert moved != pytest.approx(same, rel=1e-2), method


# -- the streaming pipeline ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", forecast.MODELS)
def test_pipeline_forecasts_ignore_untransmitted_frames(name):
    f, v = _model(name)
    sample = quick_jit(f.sample, static_argnames=("horizon", "num_samples"))
    predict = lambda context, horizon, rng, num_samples: sample(v, context, horizon, rng, num_samples)
    schedule = pipeline.Schedule(N, M)
    series = next(iter(_clips().values()))[: 3 * (N + M) + N + 2]  # a last block forecasting 2 of M frames
    blocks = [b for b in schedule.blocks(len(series)) if len(b.forecast)]
    assert len(blocks) == 4 and len(blocks[-1].forecast) == 2
    observed = schedule.observed_mask(len(series))
    out = pipeline.forecast_series(predict, series, schedule, jax.random.PRNGKey(5), num_samples=S)
    assert out.shape == (S, len(series), D) and np.isfinite(out).all()

    untransmitted = series.copy()
    untransmitted[~observed] += np.random.default_rng(6).normal(size=(int((~observed).sum()), D))
    again = pipeline.forecast_series(predict, untransmitted, schedule, jax.random.PRNGKey(5), num_samples=S)
    np.testing.assert_array_equal(out, again)

    # The check can see a change: move the last transmitted frame of block 1; only block 1's
    # forecast moves (earlier blocks come before that frame, later ones have their own context).
    moved = series.copy()
    moved[blocks[1].observed[-1]] += 0.5
    changed = pipeline.forecast_series(predict, moved, schedule, jax.random.PRNGKey(5), num_samples=S)
    for i, b in enumerate(blocks):
        frames = slice(b.forecast.start, b.forecast.stop)
        if i == 1:
            assert float(np.min(np.max(np.abs(changed[:, frames] - out[:, frames]), axis=-1))) > 1e-4, name
        else:
            np.testing.assert_array_equal(changed[:, frames], out[:, frames])
