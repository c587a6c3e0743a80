"""GRU, VAE and NF forecasters behind the shared interface: training lowers the loss, samples are keyed,
validation forecasts made from whole windows see only their context, the GRU's teacher-forced
protocol sees the true past, horizons are enforced.

Each model is trained once (``_trained``) and shared by the tests; every jitted function takes the
variables as an argument (compilation dominates the cost on CPU).
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from kpflow import forecast
from kpflow.data import stack_windows, synthetic_clips
from kpflow.keypoints import CausalScaler
from kpflow.training.forecaster import eval_step

N, M, K = 4, 3, 3
D = 6 * K
S = 4
STEPS = 400  # cheap: compilation, not steps, is the cost

CONFIGS = {
    "gru": ("gru", {"hidden": 32, "num_layers": 2}),
    "gru_point": ("gru", {"hidden": 16, "num_layers": 1, "deterministic": True}),
    "vae": ("vae", {"hidden": 64, "latent": 4, "num_layers": 1}),
    "nf": ("nf", {"num_blocks": 2, "hidden": 32, "num_layers": 1, "context_hidden": 16}),
}


@functools.cache
def _data():
    """(training windows [W, N+M, D], scaler fitted on the clips, a fixed evaluation batch [32, N+M, D])."""
    clips = synthetic_clips(num_clips=8, num_keypoints=K, min_frames=60, max_frames=80, seed=0)
    windows = stack_windows(clips, N + M, stride=2)
    return windows, CausalScaler.fit(list(clips.values())), jnp.asarray(windows[::8][:32])


@functools.cache
def _trained(key):
    """(forecaster, initial variables, trained variables, initial loss, final loss) on the fixed batch."""
    name, hparams = CONFIGS[key]
    f = forecast.create(name, dim=D, num_observed=N, horizon=M, **hparams)
    windows, scaler, fixed = _data()
    v0 = jax.jit(f.init)(jax.random.PRNGKey(0), fixed, scaler)
    opt = optax.adam(1e-2)

    @jax.jit
    def train_step(v, opt_state, batch, rng):
        def loss_fn(params):
            return f.loss_and_state({**v, "params": params}, batch, rng, train=True)

        (_, (_, new_state)), grads = jax.value_and_grad(loss_fn, has_aux=True)(v["params"])
        updates, opt_state = opt.update(grads, opt_state)
        return {**v, **new_state, "params": optax.apply_updates(v["params"], updates)}, opt_state

    evaluate = jax.jit(lambda v: f.loss(v, fixed, jax.random.PRNGKey(123), train=False)[0])
    v, opt_state = v0, opt.init(v0["params"])
    order = np.random.default_rng(0).integers(0, len(windows), (STEPS, 32))
    for i in range(STEPS):
        v, opt_state = train_step(
            v, opt_state, jnp.asarray(windows[order[i]]), jax.random.PRNGKey(i)
        )
    return f, v0, v, float(evaluate(v0)), float(evaluate(v))


@functools.cache
def _sampler(key):
    f = _trained(key)[0]
    return jax.jit(f.sample, static_argnames=("horizon", "num_samples"))


def test_a_point_gru_ignores_mirror_samples():
    # A shared-layer config mirrors samples; a deterministic GRU's samples stay its point forecast
    # (mirrored, they would be pairs about the damped momentum path).
    _, _, v, _, _ = _trained("gru_point")
    name, hparams = CONFIGS["gru_point"]
    f = forecast.create(name, dim=D, num_observed=N, horizon=M, **hparams, mirror_samples=True)
    assert f.module.mirror_samples is False
    context = _data()[2][:5, :N]
    s = jax.jit(f.sample, static_argnames=("horizon", "num_samples"))(v, context, horizon=M, rng=jax.random.PRNGKey(1),
                                                                       num_samples=S)
    np.testing.assert_allclose(s, np.broadcast_to(f.point_forecast(v, context, M), s.shape), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("key", list(CONFIGS))
def test_training_lowers_the_loss(key):
    _, _, _, initial, final = _trained(key)
    assert np.isfinite(final)
    assert initial > 0 and final < 0.8 * initial, (initial, final)


@pytest.mark.parametrize("key", list(CONFIGS))
def test_samples_are_keyed(key):
    _, _, v, _, _ = _trained(key)
    sample = _sampler(key)
    window = _data()[2][:5]
    context = window[:, :N]
    s = sample(v, context, horizon=M, rng=jax.random.PRNGKey(1), num_samples=S)
    assert s.shape == (S, 5, M, D) and bool(jnp.all(jnp.isfinite(s)))
    np.testing.assert_array_equal(
        s, sample(v, context, horizon=M, rng=jax.random.PRNGKey(1), num_samples=S)
    )
    other = sample(v, context, horizon=M, rng=jax.random.PRNGKey(2), num_samples=S)
    if key == "gru_point":  # a point forecaster: every draw is the same
        np.testing.assert_allclose(s, other, rtol=1e-6)
        np.testing.assert_allclose(s[0], s[1], rtol=1e-6)
    else:
        assert float(jnp.min(jnp.abs(s - other))) > 0
        assert float(jnp.min(jnp.abs(s[0] - s[1]))) > 0


@pytest.mark.parametrize("key", list(CONFIGS))
def test_validation_forecasts_see_only_the_context(key, recorded):
    # Through the trainer's validation step, which receives whole windows and slices the context
    # itself: the samples it draws (recorded as they are drawn) must not move when the frames after
    # N do, while its scores, made against those frames, must.
    f, _, v, _, _ = _trained(key)
    spy, tape = recorded(f)
    window = _data()[2][:5]
    altered = window.at[:, N:].set(window[::-1, N:] + 1.0)
    units, mask = jnp.ones((5, D)), jnp.ones(5, bool)
    scores = [eval_step(v, w, units, mask, jax.random.PRNGKey(1), forecaster=spy, num_samples=S)
              for w in (window, altered)]
    jax.effects_barrier()
    assert len(tape) == 2 and tape[0].shape == (S, 5, M, D)
    np.testing.assert_array_equal(tape[0], tape[1])
    for samples, w, score in zip(tape, (window, altered), scores):  # the recorded samples are the scored ones
        mae_mean = np.mean(np.abs(samples.mean(0) - np.asarray(w[:, N:])), axis=(1, 2)).sum()
        np.testing.assert_allclose(float(score["mae_mean"]), mae_mean, rtol=1e-5)
    assert abs(float(scores[0]["mae_mean"]) - float(scores[1]["mae_mean"])) > 0.1


def test_gru_teacher_forced_sees_the_true_past():
    f, _, v, _, _ = _trained("gru")
    assert f.supports_teacher_forcing
    teacher_forced = jax.jit(f.teacher_forced, static_argnames="num_samples")
    window = _data()[2][:5]
    # Change only the second future frame, N+1: predictions of N and N+1 (made from frames < N+1)
    # must not move; the prediction of N+2, made after feeding the true frame N+1, must.
    altered = window.at[:, N + 1].add(0.5)
    a = teacher_forced(v, window, jax.random.PRNGKey(3), num_samples=2)
    b = teacher_forced(v, altered, jax.random.PRNGKey(3), num_samples=2)
    assert a.shape == (2, 5, M, D)
    np.testing.assert_allclose(a[:, :, :2], b[:, :, :2], rtol=1e-5, atol=1e-6)
    assert float(jnp.min(jnp.max(jnp.abs(a[:, :, 2] - b[:, :, 2]), axis=-1))) > 1e-4


def test_gru_forecasts_any_horizon_and_starts_at_hold_last():
    f, v0, v, _, _ = _trained("gru_point")
    context = _data()[2][:5, :N]
    long = _sampler("gru_point")(
        v, context, horizon=M + 2, rng=jax.random.PRNGKey(0), num_samples=1
    )
    assert long.shape == (1, 5, M + 2, D) and bool(jnp.all(jnp.isfinite(long)))
    # Residual parameterisation with a zero-initialised head: the untrained model repeats the last frame.
    untrained = _sampler("gru_point")(
        v0, context, horizon=M, rng=jax.random.PRNGKey(0), num_samples=1
    )
    np.testing.assert_allclose(untrained[0], jnp.repeat(context[:, -1:], M, axis=1), atol=1e-5)
    # The closed loop's first step and the teacher-forced first step come from the same state.
    first = f.teacher_forced(v, _data()[2][:5], jax.random.PRNGKey(0))[0, :, 0]
    np.testing.assert_allclose(long[0, :, 0], first, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("key", ["vae", "nf"])
def test_fixed_horizon_models_reject_other_horizons(key):
    f, _, v, _, _ = _trained(key)
    assert not type(f.module).any_horizon and not f.supports_teacher_forcing
    context = _data()[2][:2, :N]
    with pytest.raises(ValueError, match="trained horizon"):
        f.sample(v, context, M + 1, jax.random.PRNGKey(0))
    with pytest.raises(ValueError, match="teacher_forced"):
        f.teacher_forced(v, _data()[2][:2], jax.random.PRNGKey(0))
