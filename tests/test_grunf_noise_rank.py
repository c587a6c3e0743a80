"""The GRU-NF's low-rank sampler (``noise_rank``): each forecast step's innovation lies in the r
principal axes of the training heads' running second moment, which training tracks as the
batch-norm tracks its statistics; the likelihood does not change, and a bad rank is one line.

Untrained models (the property does not need training), small shapes, cheap compiles."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import quick_jit

from kpflow import forecast
from kpflow.data import stack_windows, synthetic_clips
from kpflow.forecast.grunf import HEAD_MOMENT_MOMENTUM
from kpflow.keypoints import CausalScaler

N, M, K = 4, 3, 2
D = 6 * K
SMALL = {"hidden": 8, "num_blocks": 2, "flow_hidden": 8, "flow_layers": 1, "mirror_samples": False,
         "frame_bound": None}


def _create(**fields):
    return forecast.create("grunf", dim=D, num_observed=N, horizon=M, **{**SMALL, **fields})


def _data():
    clips = synthetic_clips(num_clips=3, num_keypoints=K, min_frames=30, max_frames=40, seed=1)
    windows = jnp.asarray(stack_windows(clips, N + M, stride=3)[:16])
    return windows, CausalScaler.fit(list(clips.values()))


def _without_moment(v):
    """A low-rank model's variables as the full-rank model with the same parameters takes them."""
    return {k: v[k] for k in ("params", "scaler")} | {"batch_stats": {"flow": v["batch_stats"]["flow"]}}


def test_each_steps_innovation_lies_in_the_principal_axes():
    # A second moment whose two leading axes are dimensions 1 and 7: a sample's first forecast step
    # then differs from the point forecast in those two dimensions only (the window's scale and the
    # scaler are per dimension, so they keep the pattern), and in all of them at full rank.
    windows, scaler = _data()
    f = _create(noise_rank=2)
    v = f.init(jax.random.PRNGKey(0), windows, scaler)
    weights = jnp.ones(D).at[1].set(50.0).at[7].set(20.0)
    v = {**v, "batch_stats": {**v["batch_stats"], "head_moment": jnp.diag(weights)}}
    sample = quick_jit(f.sample, static_argnames=("horizon", "num_samples"))
    first = np.asarray(sample(v, windows[:, :N], horizon=M, rng=jax.random.PRNGKey(1), num_samples=5))[:, :, 0]
    point = np.asarray(quick_jit(f.point_forecast, static_argnames="horizon")(v, windows[:, :N], horizon=M))[:, 0]
    moved = np.abs(first - point).max(axis=(0, 1))
    assert set(np.flatnonzero(moved > 1e-5)) == {1, 7}

    full = _create()  # the same parameters, full-rank noise
    fv = _without_moment(v)
    first = np.asarray(quick_jit(full.sample, static_argnames=("horizon", "num_samples"))(
        fv, windows[:, :N], horizon=M, rng=jax.random.PRNGKey(1), num_samples=5))[:, :, 0]
    assert (np.abs(first - point).max(axis=(0, 1)) > 1e-5).all()


def test_training_tracks_the_heads_second_moment_and_evaluation_does_not():
    # init sets the moment from the batch's heads; a training pass on the same batch from a zero
    # moment gives (1 - momentum) times that; an evaluation pass writes nothing.
    windows, scaler = _data()
    f = _create(noise_rank=3)
    v = f.init(jax.random.PRNGKey(0), windows, scaler)
    batch_moment = np.asarray(v["batch_stats"]["head_moment"])
    assert batch_moment.shape == (D, D)
    np.testing.assert_allclose(batch_moment, batch_moment.T, atol=1e-6)
    assert np.linalg.eigvalsh(batch_moment).min() > -1e-5 and np.trace(batch_moment) > 0
    zero = {**v, "batch_stats": {**v["batch_stats"], "head_moment": jnp.zeros((D, D))}}
    _, (_, state) = f.loss_and_state(zero, windows, jax.random.PRNGKey(2), train=True)
    np.testing.assert_allclose(state["batch_stats"]["head_moment"], (1 - HEAD_MOMENT_MOMENTUM) * batch_moment,
                               rtol=1e-4, atol=1e-7)
    _, (_, state) = f.loss_and_state(zero, windows, jax.random.PRNGKey(2), train=False)
    assert state == {}


def test_the_likelihood_is_the_full_rank_models_and_the_closed_loop_term_is_not():
    windows, scaler = _data()
    low = _create(noise_rank=2, closed_loop_weight=1.0)
    v = low.init(jax.random.PRNGKey(0), windows, scaler)
    full_v = _without_moment(v)
    _, low_metrics = low.loss(v, windows, jax.random.PRNGKey(3), train=False)
    _, full_metrics = _create(closed_loop_weight=1.0).loss(full_v, windows, jax.random.PRNGKey(3), train=False)
    assert float(low_metrics["nll"]) == pytest.approx(float(full_metrics["nll"]), rel=1e-6)
    assert abs(float(low_metrics["closed_loop_es"]) - float(full_metrics["closed_loop_es"])) > 1e-4


@pytest.mark.parametrize("rank", [0, D, D + 1])
def test_rank_zero_or_at_least_the_dimension_is_full_rank(rank):
    windows, scaler = _data()
    v = _create(noise_rank=rank).init(jax.random.PRNGKey(0), windows, scaler)
    assert "head_moment" not in v["batch_stats"]


@pytest.mark.parametrize("rank", [-2, 2.5, True, "8", None])
def test_a_bad_rank_is_one_line(rank):
    with pytest.raises(ValueError, match=r"grunf: noise_rank must be an integer >= 0 \(0: full rank\)"):
        _create(noise_rank=rank)
