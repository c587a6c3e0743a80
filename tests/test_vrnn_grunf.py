"""VRNN and GRU-NF forecasters: training lowers the loss (with and without the closed-loop energy
term), validation forecasts made from whole windows see only their context while the teacher-forced
protocol sees the true frames, samples are keyed, any horizon works, the momentum skip extrapolates
motion, sign invariance hides the direction of motion from the GRU, and the per-window step scale
and the energy-score loss match their definitions.

Each model is trained once (``_trained``) and shared by the tests. Compilation, not computation, is
the cost on CPU, so every jitted function takes the variables as arguments, compiles with XLA's
cheapest settings (``quick_jit``), and the sampling tests share shapes (``S`` samples of ``B``
windows): each model compiles init, a training step (which also evaluates), the gradient with the
closed-loop term, the validation step, ``teacher_forced`` once and ``sample`` at two horizons.
"""

import functools
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.extend
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import adam_train_step, quick_jit

from kpflow import forecast
from kpflow import metrics as kpmetrics
from kpflow.data import stack_windows, synthetic_clips
from kpflow.forecast.io import IOLayer, context_step_scale
from kpflow.forecast.scoring import energy_score_loss
from kpflow.keypoints import CausalScaler
from kpflow.training.forecaster import eval_step

N, M, K = 4, 3, 3
D = 6 * K
S, B = 4, 5  # samples and windows in every sampling test
LONG = M + 3  # a horizon other than the trained one
STEPS = 200
EVAL_KEY = jax.random.PRNGKey(123)

# XLA's CPU backend at its lowest optimisation level compiles these graphs ~2.5x faster; the
# programs are tiny, so the slower code they produce costs nothing that shows.

CONFIGS = {
    "vrnn": (
        "vrnn",
        {
            "hidden": 16,
            "latent": 4,
            "prior_hidden": 16,
            "posterior_hidden": 16,
            "decoder_hidden": 16,
        },
    ),
    # The authors' layout: raw features and z into the GRU and decoder (no phi_x / phi_z).
    "vrnn_raw": (
        "vrnn",
        {"hidden": 16, "latent": 4, "prior_hidden": 16, "posterior_hidden": 16, "decoder_hidden": 16,
         "embed_inputs": False, "position_features": False},
    ),
    # The :cpu long-horizon sampler: reflection-equivariant, persistent latent, deterministic decoder.
    "vrnn_eq": (
        "vrnn",
        {"hidden": 16, "latent": 4, "prior_hidden": 16, "posterior_hidden": 16, "decoder_hidden": 16,
         "equivariant": True, "latent_persistence": 0.9, "fresh_forecast_latent": True,
         "decoder_temperature": 0.0, "mirror_samples": True},
    ),
    "grunf": ("grunf", {"hidden": 16, "num_blocks": 2, "flow_hidden": 16, "flow_layers": 1}),
}
MODELS = list(CONFIGS)


def _create(key, **overrides) -> forecast.Forecaster:
    name, hparams = CONFIGS[key]
    return forecast.create(name, dim=D, num_observed=N, horizon=M, **{**hparams, **overrides})


@functools.cache
def _data():
    """(training windows [W, N+M, D], scaler fitted on the clips, fixed eval batch [32, N+M, D])."""
    clips = synthetic_clips(num_clips=6, num_keypoints=K, min_frames=60, max_frames=80, seed=0)
    windows = stack_windows(clips, N + M, stride=2)
    return windows, CausalScaler.fit(list(clips.values())), jnp.asarray(windows[::5][:32])


class Trained(NamedTuple):
    forecaster: forecast.Forecaster
    initial: dict  # variables at init
    final: dict  # variables after STEPS Adam steps
    loss_and_grads: Callable  # (variables, batch [32, N+M, D], rng) -> (training loss, grads)
    initial_loss: float  # on the fixed batch with EVAL_KEY
    final_loss: float


@functools.cache
def _trained(key) -> Trained:
    f = _create(key, closed_loop_weight=0.0)
    windows, scaler, fixed = _data()
    v0 = quick_jit(f.init)(jax.random.PRNGKey(0), fixed, scaler)
    opt = optax.adam(1e-2)

    train_step = adam_train_step(f, opt)

    opt_state0 = opt.init(v0["params"])

    def loss_and_grads(v, batch, rng):
        # The same compiled step, its update unused.
        return train_step(v, opt_state0, batch, rng)[2:]

    v, opt_state = v0, opt_state0
    order = np.random.default_rng(0).integers(0, len(windows), (STEPS, 32))
    for i in range(STEPS):
        v, opt_state, _, _ = train_step(
            v, opt_state, jnp.asarray(windows[order[i]]), jax.random.PRNGKey(i)
        )
    initial, final = (float(loss_and_grads(u, fixed, EVAL_KEY)[0]) for u in (v0, v))
    return Trained(f, v0, v, loss_and_grads, initial, final)


@functools.cache
def _sampler(key):
    return quick_jit(_trained(key).forecaster.sample, static_argnames=("horizon", "num_samples"))


@functools.cache
def _teacher_forced(key):
    return quick_jit(_trained(key).forecaster.teacher_forced, static_argnames="num_samples")


def _window():
    """``[B, N+M, D]`` raw windows."""
    return _data()[2][:B]


# -- training -------------------------------------------------------------------------------------


@pytest.mark.parametrize("key", MODELS)
def test_training_lowers_the_loss(key):
    t = _trained(key)
    assert np.isfinite(t.initial_loss) and np.isfinite(t.final_loss)
    assert t.initial_loss > 0 and t.final_loss < 0.8 * t.initial_loss, (
        t.initial_loss,
        t.final_loss,
    )


@pytest.mark.parametrize("key", MODELS)
def test_closed_loop_weight_adds_a_finite_energy_term_with_finite_gradients(key):
    t = _trained(key)
    weight = 0.5
    # The same parameters as t.forecaster.
    f = _create(key, closed_loop_weight=weight, closed_loop_samples=2)
    fixed = _data()[2]

    @quick_jit
    def loss_and_grads(params, v):
        return jax.value_and_grad(
            lambda p: f.loss_and_state({**v, "params": p}, fixed, EVAL_KEY, train=True),
            has_aux=True,
        )(params)

    (loss, (metrics, _)), grads = loss_and_grads(t.initial["params"], t.initial)
    loss0, grads0 = t.loss_and_grads(t.initial, fixed, EVAL_KEY)
    es = float(metrics["closed_loop_es"])
    assert np.isfinite(es) and es > 0
    # The term is added to the unchanged likelihood (rollouts draw noise from other rng streams).
    np.testing.assert_allclose(float(loss), float(loss0) + weight * es, rtol=1e-4, atol=1e-5)
    leaves, leaves0 = jax.tree.leaves(grads), jax.tree.leaves(grads0)
    assert all(bool(jnp.all(jnp.isfinite(g))) for g in leaves)
    # Reparameterised rollouts: the energy term reaches the parameters.
    assert max(float(jnp.max(jnp.abs(g - g0))) for g, g0 in zip(leaves, leaves0)) > 1e-6


# -- sampling ------------------------------------------------------------------------------------


@pytest.mark.parametrize("key", MODELS)
def test_validation_forecasts_see_only_the_context(key, recorded):
    # Through the trainer's validation step, which receives whole windows and slices the context
    # itself: the samples it draws (recorded as they are drawn) must not move when the frames after
    # N do, while its scores, made against those frames, must.
    t = _trained(key)
    spy, tape = recorded(t.forecaster)
    window = _window()
    other = window.at[:, N:].set(window[::-1, N:] + 1.0)  # the same first N frames, another future
    assert float(jnp.min(jnp.abs(other[:, N:] - window[:, N:]))) > 0.5
    units, mask = jnp.ones((B, D)), jnp.ones(B, bool)
    scores = [eval_step(t.final, w, units, mask, jax.random.PRNGKey(1), forecaster=spy, num_samples=S)
              for w in (window, other)]
    jax.effects_barrier()
    assert len(tape) == 2 and tape[0].shape == (S, B, M, D)
    np.testing.assert_array_equal(tape[0], tape[1])
    for samples, w, score in zip(tape, (window, other), scores):  # the recorded samples are the scored ones
        mae_mean = np.mean(np.abs(samples.mean(0) - np.asarray(w[:, N:])), axis=(1, 2)).sum()
        np.testing.assert_allclose(float(score["mae_mean"]), mae_mean, rtol=1e-5)
    assert abs(float(scores[0]["mae_mean"]) - float(scores[1]["mae_mean"])) > 0.1
    # ...but the context matters: move one observed frame and every window's forecast moves.
    sample = _sampler(key)
    a = sample(t.final, window[:, :N], horizon=M, rng=jax.random.PRNGKey(1), num_samples=S)
    c = sample(t.final, window.at[:, N - 2].add(0.3)[:, :N], horizon=M, rng=jax.random.PRNGKey(1), num_samples=S)
    assert float(jnp.min(jnp.max(jnp.abs(c - a), axis=(-2, -1)))) > 1e-4


@pytest.mark.parametrize("key", MODELS)
def test_teacher_forced_feeds_the_true_frames(key):
    f, v = _trained(key).forecaster, _trained(key).final
    assert f.supports_teacher_forcing
    teacher_forced = _teacher_forced(key)
    window = _window()
    # Change only the second future frame, N+1: predictions of N and N+1 (made from frames < N+1)
    # must not move; the prediction of N+2, made after feeding the true frame N+1, must.
    altered = window.at[:, N + 1].add(0.5)
    a = teacher_forced(v, window, jax.random.PRNGKey(3), num_samples=S)
    b = teacher_forced(v, altered, jax.random.PRNGKey(3), num_samples=S)
    assert a.shape == (S, B, M, D) and bool(jnp.all(jnp.isfinite(a)))
    np.testing.assert_allclose(a[:, :, :2], b[:, :, :2], rtol=1e-5, atol=1e-6)
    assert float(jnp.min(jnp.max(jnp.abs(a[:, :, 2] - b[:, :, 2]), axis=-1))) > 1e-4


@pytest.mark.parametrize("key", ["vrnn", "vrnn_eq"])
def test_teacher_forced_feeds_the_first_true_frame_too(key):
    # The first forecast step runs before the scan: it too must feed the true frame N onward.
    v = _trained(key).final
    window = _window()
    a = _teacher_forced(key)(v, window, jax.random.PRNGKey(3), num_samples=S)
    b = _teacher_forced(key)(v, window.at[:, N].add(0.5), jax.random.PRNGKey(3), num_samples=S)
    np.testing.assert_allclose(a[:, :, 0], b[:, :, 0], rtol=1e-5, atol=1e-6)
    assert float(jnp.min(jnp.max(jnp.abs(a[:, :, 1] - b[:, :, 1]), axis=-1))) > 1e-4


@pytest.mark.parametrize("key", ["vrnn", "vrnn_eq"])
def test_one_step_horizon(key):
    t = _trained(key)
    s = _sampler(key)(t.final, _window()[:, :N], horizon=1, rng=jax.random.PRNGKey(5), num_samples=S)
    assert s.shape == (S, B, 1, D) and bool(jnp.all(jnp.isfinite(s)))
    longer = _sampler(key)(t.final, _window()[:, :N], horizon=M, rng=jax.random.PRNGKey(5), num_samples=S)
    np.testing.assert_allclose(s[:, :, 0], longer[:, :, 0], rtol=1e-5, atol=1e-6)  # same first step


def _dot_shapes_outside_loops(jaxpr):
    """(lhs shape, rhs shape) of every dot_general not inside a scan / while body."""
    shapes = []
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "dot_general":
            shapes.append(tuple(tuple(x.aval.shape) for x in eqn.invars))
        elif eqn.primitive.name not in ("scan", "while"):
            for sub in jax.extend.core.jaxprs_in_params(eqn.params):
                shapes += _dot_shapes_outside_loops(sub)
    return shapes


def test_first_forecast_step_shares_the_state_products_across_samples():
    # Every sample's first step starts from the same encoded state: under the sampler's vmap, the
    # state's products (the prior's first layer, the GRU's recurrent ones) are made once for all S
    # samples ([B, hidden] @ W), not once per sample ([S, B, hidden] or [S * B, hidden]).
    t = _trained("vrnn_raw")
    hidden = CONFIGS["vrnn_raw"][1]["hidden"]
    jaxpr = jax.make_jaxpr(lambda v, c: t.forecaster.sample(v, c, M, jax.random.PRNGKey(0), S))(
        t.final, _window()[:, :N])
    shapes = _dot_shapes_outside_loops(jaxpr.jaxpr)
    assert ((B, hidden), (hidden, hidden)) in shapes  # a recurrent GRU product, unbatched by samples
    assert ((B, hidden), (hidden, CONFIGS["vrnn_raw"][1]["prior_hidden"])) in shapes  # the prior's


@pytest.mark.parametrize("key", MODELS)
def test_samples_are_keyed(key):
    v = _trained(key).final
    sample = _sampler(key)
    context = _window()[:, :N]
    s = sample(v, context, horizon=M, rng=jax.random.PRNGKey(1), num_samples=S)
    assert s.shape == (S, B, M, D) and bool(jnp.all(jnp.isfinite(s)))
    np.testing.assert_array_equal(
        s, sample(v, context, horizon=M, rng=jax.random.PRNGKey(1), num_samples=S)
    )
    other = sample(v, context, horizon=M, rng=jax.random.PRNGKey(2), num_samples=S)
    assert float(jnp.min(jnp.abs(s - other))) > 0
    assert float(jnp.min(jnp.abs(s[0] - s[1]))) > 0


@pytest.mark.parametrize("key", MODELS)
def test_samples_at_another_horizon(key):
    t = _trained(key)
    assert type(t.forecaster.module).any_horizon
    s = _sampler(key)(
        t.final, _window()[:, :N], horizon=LONG, rng=jax.random.PRNGKey(5), num_samples=S
    )
    assert s.shape == (S, B, LONG, D) and bool(jnp.all(jnp.isfinite(s)))
    # A recurrent rollout keeps moving: the last frame is not the first one repeated.
    assert float(jnp.min(jnp.max(jnp.abs(s[:, :, -1] - s[:, :, 0]), axis=-1))) > 1e-4


# -- per-window step scale ------------------------------------------------------------------------


def test_context_step_scale_is_causal_and_matches_its_formula():
    step_scale_of = quick_jit(context_step_scale)  # one compile; the eager ops would cost more
    rng = np.random.default_rng(0)
    step_scale = jnp.asarray(rng.uniform(0.5, 2.0, D), jnp.float32)
    frames = jnp.asarray(rng.normal(size=(3, N + M, D)), jnp.float32)
    got = step_scale_of(frames[:, :N], step_scale, 4.0)
    assert got.shape == (3, D)
    # Causal: a function of the frames it is given, all of them.
    np.testing.assert_array_equal(
        got, step_scale_of(frames.at[:, N:].add(5.0)[:, :N], step_scale, 4.0)
    )
    moved = step_scale_of(frames.at[:, N - 1].add(1.0)[:, :N], step_scale, 4.0)
    assert float(jnp.min(jnp.abs(moved - got))) > 0
    # prior_steps=0: the RMS of the N-1 context steps.
    steps = np.diff(np.asarray(frames[:, :N]), axis=1)
    np.testing.assert_allclose(
        step_scale_of(frames[:, :N], step_scale, 0.0), np.sqrt((steps**2).mean(1)), rtol=1e-5
    )
    # A context moving at exactly the dataset's step scale keeps that scale, whatever the prior.
    signs = jnp.asarray(rng.choice([-1.0, 1.0], size=(3, N - 1, D)), jnp.float32)
    walk = jnp.concatenate([jnp.zeros((3, 1, D)), jnp.cumsum(signs * step_scale, axis=1)], axis=1)
    for prior in (0.0, 4.0, 100.0):
        np.testing.assert_allclose(
            step_scale_of(walk, step_scale, prior), jnp.broadcast_to(step_scale, (3, D)), rtol=1e-5
        )
    # A still context: the prior pseudo-steps diluted by N-1 zero steps (the dataset's scale only as
    # the prior dominates).
    still = jnp.broadcast_to(frames[:, :1], (3, N, D))
    shrunk = step_scale * np.sqrt(4.0 / (4.0 + N - 1))
    np.testing.assert_allclose(
        step_scale_of(still, step_scale, 4.0), jnp.broadcast_to(shrunk, (3, D)), rtol=1e-5
    )
    np.testing.assert_allclose(
        step_scale_of(still, step_scale, 1e6), jnp.broadcast_to(step_scale, (3, D)), rtol=1e-4
    )


# -- momentum skip --------------------------------------------------------------------------------


def _constant_velocity_context(sign: float = 1.0):
    """(context [B, N, D] moving by ``velocity [D]`` per frame, velocity) in raw units; the velocity
    is two typical steps a frame."""
    _, scaler, fixed = _data()
    direction = jnp.asarray(np.random.default_rng(1).choice([-1.0, 1.0], D), jnp.float32)
    velocity = sign * 2.0 * scaler.scale * scaler.step_scale * direction
    frame_index = jnp.arange(N, dtype=jnp.float32)[None, :, None]
    return fixed[:B, 0][:, None] + frame_index * velocity, velocity


def _momentum(variables):
    """The ``momentum`` parameter ``[D]`` (rho), wherever the module keeps it."""
    found = [
        x
        for path, x in jax.tree_util.tree_leaves_with_path(variables["params"])
        if path[-1].key == "momentum"
    ]
    assert len(found) == 1, "expected one 'momentum' parameter"
    return found[0]


def _progress_along(samples, context, velocity):
    """``[S, B, M, D]`` -> ``[S, B, M]``: displacement from the last observed frame in units of
    ``velocity`` (hold-last: 0; continuing at constant velocity: 1, 2, ...)."""
    return jnp.sum((samples - context[None, :, -1:]) * velocity, axis=-1) / jnp.sum(velocity**2)


def test_untrained_vrnn_momentum_extrapolates_the_last_step():
    # The decoder's mean head starts at zero, so with its noise off the untrained forecast is
    # exactly the damped momentum, whatever z is: step j adds rho^j times the last observed step
    # (rho = 0.3 at init). Unbounded: the extrapolation of this fast context leaves the training
    # region, where frame_bound (tests/test_long_rollouts.py) would clip it.
    f = _create("vrnn", decoder_temperature=0.0, frame_bound=None)
    v0 = _trained("vrnn").initial  # the temperature changes no parameter
    np.testing.assert_allclose(_momentum(v0), 0.3)
    context, velocity = _constant_velocity_context()
    sample = quick_jit(f.sample, static_argnames=("horizon", "num_samples"))
    s = sample(v0, context, horizon=M, rng=jax.random.PRNGKey(0), num_samples=S)
    expected = np.cumsum(0.3 ** np.arange(1, M + 1))  # 0.3, 0.39, 0.417
    np.testing.assert_allclose(
        _progress_along(s, context, velocity).mean(0), np.broadcast_to(expected, (B, M)), atol=1e-3
    )
    np.testing.assert_allclose(
        s,
        jnp.broadcast_to(context[None, :, -1:] + expected[:, None] * velocity, s.shape),
        atol=1e-4,
    )


def test_untrained_grunf_momentum_shifts_the_sample_mean_ahead():
    # The untrained flow is a standard normal that ignores its condition, shifted by rho times the
    # last step: the sample mean sits 0.3 steps ahead of hold-last, and mirroring the motion mirrors
    # the shift exactly under the same key (the noise, not depending on the context, cancels).
    t = _trained("grunf")
    np.testing.assert_allclose(_momentum(t.initial), 0.3)
    # Unbounded: these fast contexts' forecasts leave the training region, where frame_bound clips.
    sample = quick_jit(_create("grunf", frame_bound=None).sample, static_argnames=("horizon", "num_samples"))
    ahead_ctx, velocity = _constant_velocity_context(1.0)
    back_ctx, _ = _constant_velocity_context(-1.0)
    ahead = sample(t.initial, ahead_ctx, horizon=LONG, rng=jax.random.PRNGKey(0), num_samples=S)
    back = sample(t.initial, back_ctx, horizon=LONG, rng=jax.random.PRNGKey(0), num_samples=S)
    progress = _progress_along(ahead, ahead_ctx, velocity)[:, :, 0]  # [S, B]
    assert 0.15 < float(progress.mean()) < 0.45, progress
    mirrored = (ahead[:, :, 0] - ahead_ctx[:, -1]) - (back[:, :, 0] - back_ctx[:, -1])
    np.testing.assert_allclose(
        mirrored, jnp.broadcast_to(0.6 * velocity, mirrored.shape), atol=1e-4
    )


# -- sign invariance ------------------------------------------------------------------------------
# Reflecting a window through its first frame (x -> 2 x_0 - x) negates every relative position and
# every step. ``sign_invariant`` promises that the GRU state sees their magnitudes only; with it off,
# the same reflection must move the state (so these checks can fail).


def _reflected(frames):
    """``[B, T, D]`` -> the frames reflected through each window's first frame."""
    return 2.0 * frames[:, :1] - frames


@pytest.mark.parametrize("sign_invariant", [True, False])
def test_grunf_sign_invariance_leaves_direction_to_the_momentum(sign_invariant):
    # The GRU's state after a context and after its reflection: equal when sign-invariant. Then the
    # first forecast step draws the same flow sample under the same key, and only the momentum
    # term, rho times the last observed step, flips sign: the two first steps differ by exactly
    # 2 rho (last step).
    t = _trained("grunf")
    # Unbounded: a reflected window can lie outside the training region, where frame_bound would
    # clip one of the two first steps and not the other.
    f = _create("grunf", io=IOLayer(sign_invariant=sign_invariant), frame_bound=None)
    module = type(f.module)

    @quick_jit
    def top_state(v, context):
        scaler = f.scaler_of(v)
        params = {k: x for k, x in v.items() if k != "scaler"}
        return f.module.apply(params, scaler.transform(context), scaler.step_scale, method=module.encode)["top"]

    sample = quick_jit(f.sample, static_argnames=("horizon", "num_samples"))
    context = _window()[:, :N]
    mirror = _reflected(context)
    tops = top_state(t.final, context), top_state(t.final, mirror)
    first = [sample(t.final, c, horizon=1, rng=jax.random.PRNGKey(6), num_samples=S)[:, :, 0] - c[:, -1]
             for c in (context, mirror)]
    momentum_flip = 2.0 * _momentum(t.final) * (context[:, -1] - context[:, -2])  # [B, D]
    off_by = float(jnp.max(jnp.abs(first[0] - first[1] - momentum_flip)))
    step = float(jnp.max(jnp.abs(first[0])))
    if sign_invariant:
        np.testing.assert_allclose(tops[0], tops[1], atol=1e-5)
        assert off_by < 1e-4 * step, (off_by, step)
    else:
        assert float(jnp.max(jnp.abs(tops[0] - tops[1]))) > 1e-2
        assert off_by > 1e-2 * step, (off_by, step)


@pytest.mark.parametrize("sign_invariant", [True, False])
def test_vrnn_sign_invariance_feeds_the_state_magnitudes_only(sign_invariant):
    # One state update from a frame and its predecessor, then from both reflected through the
    # anchor, with the same previous state and latent: the same new state when sign-invariant.
    t = _trained("vrnn")
    mod, v = _create("vrnn", io=IOLayer(sign_invariant=sign_invariant)).module, {"params": t.final["params"]}
    hidden, latent = CONFIGS["vrnn"][1]["hidden"], CONFIGS["vrnn"][1]["latent"]
    r = np.random.default_rng(2)
    h, dz = (jnp.asarray(r.normal(size=(B, hidden)), jnp.float32) for _ in range(2))
    z = jnp.asarray(r.normal(size=(B, latent)), jnp.float32)
    anchor, prev, frame, last = (jnp.asarray(r.normal(size=(B, D)), jnp.float32) for _ in range(4))
    scale = jnp.asarray(r.uniform(0.5, 2.0, size=(B, D)), jnp.float32)

    def advance(frame, prev):
        carry = mod.apply(v, h, frame, prev, dz, z, z, anchor, scale, last, method=lambda m, *a: m._advance(*a))
        return carry[0]

    same, reflected = advance(frame, prev), advance(2 * anchor - frame, 2 * anchor - prev)
    if sign_invariant:
        np.testing.assert_allclose(reflected, same, atol=1e-5)
    else:
        assert float(jnp.max(jnp.abs(reflected - same))) > 1e-2


# -- energy-score loss ----------------------------------------------------------------------------


def test_energy_score_loss_matches_the_metric_and_has_finite_gradients():
    @quick_jit
    def scores(samples, target):
        grad = jax.grad(lambda x: jnp.sum(energy_score_loss(x, target)))(samples)
        return energy_score_loss(samples, target), kpmetrics.energy_score(samples, target), grad

    rng = np.random.default_rng(0)
    samples = jnp.asarray(rng.normal(size=(6, 5, M, D)), jnp.float32)
    target = jnp.asarray(rng.normal(size=(5, M, D)), jnp.float32)
    loss, metric, _ = scores(samples, target)
    np.testing.assert_allclose(loss, metric, rtol=1e-5)
    np.testing.assert_allclose(
        energy_score_loss(samples[:1], target),
        kpmetrics.energy_score(samples[:1], target),
        rtol=1e-5,
    )
    # Two coinciding samples (a zero pairwise distance) and a sample on the target: finite grads.
    tied = samples.at[1].set(samples[0]).at[2, 0].set(target[0])
    loss, metric, grad = scores(tied, target)
    np.testing.assert_allclose(loss, metric, rtol=1e-5)
    assert bool(jnp.all(jnp.isfinite(grad))) and float(jnp.max(jnp.abs(grad))) > 0


def test_context_step_scale_negative_prior_uses_dataset_scale():
    # adaptive_scale < 0 turns adaptation off: every window gets the dataset's step scale.
    context = jnp.cumsum(jax.random.normal(jax.random.PRNGKey(0), (3, 6, 4)), axis=1)
    step_scale = jnp.array([0.5, 1.0, 2.0, 4.0])
    np.testing.assert_allclose(context_step_scale(context, step_scale, -1.0), jnp.broadcast_to(step_scale, (3, 4)))
    assert not np.allclose(context_step_scale(context, step_scale, 4.0), jnp.broadcast_to(step_scale, (3, 4)))


def test_vrnn_without_embeddings_feeds_raw_features_and_z_to_the_gru():
    raw, embedded = _trained("vrnn_raw").initial["params"], _trained("vrnn").initial["params"]
    assert "phi_x" not in raw and "phi_z" not in raw and "phi_x" in embedded
    latent = CONFIGS["vrnn_raw"][1]["latent"]
    assert raw["gru"]["ir"]["kernel"].shape[0] == D + latent  # the step and z, as in the authors' code
    assert embedded["gru"]["ir"]["kernel"].shape[0] == 2 * CONFIGS["vrnn"][1]["hidden"]


def test_equivariant_vrnn_pieces_commute_with_reflection():
    """Reflecting a window (x -> 2 x_0 - x) negates every step; the equivariant VRNN's pieces must
    follow exactly: zero prior mean, odd posterior and decoder means with even stds, an invariant
    state. Together they make the sample distribution of a reflected context the reflected one."""
    t = _trained("vrnn_eq")
    mod, v = t.forecaster.module, {"params": t.final["params"]}
    r = np.random.default_rng(0)
    h = jnp.asarray(r.normal(size=(B, 16)), jnp.float32)
    z = jnp.asarray(r.normal(size=(B, 4)), jnp.float32)
    last = jnp.asarray(r.normal(size=(B, D)), jnp.float32)
    anchor, prev, frame = (jnp.asarray(r.normal(size=(B, D)), jnp.float32) for _ in range(3))
    scale = jnp.ones((B, D))
    reflect = lambda x: 2 * anchor - x

    mp, _, _, _ = mod.apply(v, h, jnp.zeros((B, 4)), method=lambda m, h, e: m._prior(h, e))
    np.testing.assert_array_equal(mp, 0.0)
    m1, s1 = mod.apply(v, h, frame, prev, anchor, scale, method=lambda m, *a: m._posterior(*a))
    m2, s2 = mod.apply(v, h, reflect(frame), reflect(prev), anchor, scale, method=lambda m, *a: m._posterior(*a))
    np.testing.assert_allclose(m2, -m1, atol=1e-6)
    np.testing.assert_allclose(s2, s1, atol=1e-6)
    _, d1, e1 = mod.apply(v, h, z, last, method=lambda m, *a: m._decode(*a))
    _, d2, e2 = mod.apply(v, h, -z, -last, method=lambda m, *a: m._decode(*a))
    np.testing.assert_allclose(d2, -d1, atol=1e-6)
    np.testing.assert_allclose(e2, e1, atol=1e-6)

    def advance(m, frame, prev, z, last):
        dz, _, _ = m._decode(h, z, last)
        return m._advance(h, frame, prev, dz, z, z, anchor, scale, last)[0]

    h1 = mod.apply(v, frame, prev, z, last, method=advance)
    h2 = mod.apply(v, reflect(frame), reflect(prev), -z, -last, method=advance)
    np.testing.assert_allclose(h2, h1, atol=1e-6)


def test_latent_persistence_keeps_the_marginal_prior():
    t = _trained("vrnn_eq")
    mod, v = t.forecaster.module, {"params": t.final["params"]}
    h = jnp.asarray(np.random.default_rng(1).normal(size=(B, 16)), jnp.float32)
    eps = jnp.full((B, 4), 2.0)
    mean, std, m0, s0 = mod.apply(v, h, eps, method=lambda m, h, e: m._prior(h, e))
    rho = CONFIGS["vrnn_eq"][1]["latent_persistence"]
    np.testing.assert_allclose(mean, m0 + rho * s0 * eps, rtol=1e-6)
    np.testing.assert_allclose(std, s0 * np.sqrt(1 - rho**2), rtol=1e-6)
    # AR(1) with these moments: if eps_{t-1} ~ N(0, 1) then z_t ~ N(m0, s0), the plain VRNN's prior.
    assert rho**2 + (std / s0) ** 2 == pytest.approx(np.ones_like(std), rel=1e-6)


@pytest.mark.parametrize("rho", [1.0, -0.1, 1.5])
def test_latent_persistence_outside_0_1_is_refused(rho):
    with pytest.raises(ValueError, match=r"latent_persistence must be in \[0, 1\)"):
        _create("vrnn_eq", latent_persistence=rho)


def _spread(samples):
    """Mean over windows, steps and dimensions of the samples' standard deviation."""
    return float(jnp.mean(jnp.std(samples, axis=0)))


def test_latent_temperature_narrows_forecasts_only():
    # The temperature scales the prior's noise when forecasting: the same keys draw the same
    # noise, so below 1 the samples spread less, and near 0 they collapse onto one path (the
    # decoder is deterministic here). Training's closed-loop rollouts keep temperature 1: the
    # loss does not depend on it.
    t = _trained("vrnn_eq")
    context, key = _window()[:, :N], jax.random.PRNGKey(7)
    base = _spread(_sampler("vrnn_eq")(t.final, context, horizon=M, rng=key, num_samples=S))
    spreads = {}
    for tau in (0.5, 1e-3):
        f = _create("vrnn_eq", latent_temperature=tau)
        sample = quick_jit(f.sample, static_argnames=("horizon", "num_samples"))
        spreads[tau] = _spread(sample(t.final, context, horizon=M, rng=key, num_samples=S))
    assert base > 0
    assert 0.3 * base < spreads[0.5] < 0.75 * base
    assert spreads[1e-3] < 0.01 * base
    batch = _data()[2]
    losses = []
    for tau in (1.0, 0.5):
        f = _create("vrnn_eq", closed_loop_weight=1.0, latent_temperature=tau)
        losses.append(float(quick_jit(f.loss)(t.final, batch, EVAL_KEY)[0]))
    assert losses[0] == losses[1]


@pytest.mark.parametrize("tau", [0.0, -1.0])
def test_latent_temperature_must_be_positive(tau):
    with pytest.raises(ValueError, match="latent_temperature must be > 0"):
        _create("vrnn_eq", latent_temperature=tau)


@pytest.mark.parametrize("mirror", [False, True])
@pytest.mark.parametrize("key,field", [("vrnn_eq", "latent_temperature"), ("grunf", "temperature")])
def test_a_mixture_of_temperatures_draws_each_at_its_own(mirror, key, field):
    # (0.5, 1.5): draw i at temperature 0.5 or 1.5 in turn, with the keys that one temperature
    # would give it; mirror images (the second half, when mirroring) at their draw's. So every
    # sample of the mixture is the same-index sample of one of the two single-temperature models.
    t = _trained(key)
    context, rng, s = _window()[:, :N], jax.random.PRNGKey(9), 6
    draws = (s + 1) // 2 if mirror else s

    def run(tau, fn="sample"):
        f = _create(key, **{field: tau}, mirror_samples=mirror)
        if fn == "sample":
            call = quick_jit(f.sample, static_argnames=("horizon", "num_samples"))
            return np.asarray(call(t.final, context, horizon=M, rng=rng, num_samples=s))
        call = quick_jit(f.teacher_forced, static_argnames="num_samples")
        return np.asarray(call(t.final, _window(), rng, num_samples=s))

    mixed, low, high = run((0.5, 1.5)), run(0.5), run(1.5)
    for i in range(s):
        want = low if (i % draws) % 2 == 0 else high
        np.testing.assert_allclose(mixed[i], want[i], rtol=1e-5, atol=1e-6)
    assert not np.allclose(low, high)  # the two temperatures give different samples
    if not mirror:  # the teacher-forced protocol (no mirroring there) mixes them the same way
        mixed, low, high = run((0.5, 1.5), "tf"), run(0.5, "tf"), run(1.5, "tf")
        np.testing.assert_allclose(mixed[0::2], low[0::2], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(mixed[1::2], high[1::2], rtol=1e-5, atol=1e-6)


def test_the_grunf_closed_loop_term_cycles_through_its_temperature_mixture():
    # The energy-score term's k rollouts per window run at the mixture's entries in turn: with
    # (1.0, 1.0) it is the single temperature's loss, with (1.0, 3.0) not; a list is kept as a tuple.
    t, batch = _trained("grunf"), _data()[2]

    def loss(tau):
        return float(quick_jit(_create("grunf", closed_loop_weight=1.0, temperature=tau).loss)(t.final, batch, EVAL_KEY)[0])

    assert loss(1.0) == pytest.approx(loss([1.0, 1.0]), rel=1e-6)
    assert abs(loss((1.0, 3.0)) - loss(1.0)) > 1e-3
    assert _create("grunf", temperature=[0.4, 1.2]).module.temperature == (0.4, 1.2)
    with pytest.raises(ValueError, match="temperature must be a number >= 0"):
        _create("grunf", temperature=(0.5, -1.0))


def test_a_latent_temperature_mixture_leaves_the_loss_alone_and_needs_a_draws_temperature():
    t, batch = _trained("vrnn_eq"), _data()[2]
    losses = [float(quick_jit(_create("vrnn_eq", closed_loop_weight=1.0, latent_temperature=tau).loss)(
        t.final, batch, EVAL_KEY)[0]) for tau in (0.8, (0.4, 0.8, 1.2))]
    assert losses[0] == losses[1]
    f = _create("vrnn_eq", latent_temperature=[0.4, 1.2])  # a list (a config read from JSON) is kept as a tuple
    assert f.module.latent_temperature == (0.4, 1.2)
    scaler = f.scaler_of(t.final)
    with pytest.raises(ValueError, match="is a mixture, drawn per sample"):
        f.module.apply({k: v for k, v in t.final.items() if k != "scaler"}, scaler.transform(_window()[:, :N]),
                       M, scaler.step_scale, rngs={"sample": EVAL_KEY}, method=type(f.module).sample)


@pytest.mark.parametrize("tau", [(), (0.8, 0.0), (-1.0,)])
def test_a_latent_temperature_mixture_must_be_positive(tau):
    with pytest.raises(ValueError, match="latent_temperature must be > 0"):
        _create("vrnn_eq", latent_temperature=tau)


def test_mirrored_samples_average_to_the_damped_momentum_path():
    # Antithetic pairs through the damped momentum path: the second half of the samples mirrors
    # the first, so their mean is that path exactly. The path is computed here from the raw
    # window and the learned per-dimension momentum rho: frame N-1 plus rho + ... + rho^k times
    # its last step (the scaler is affine per dimension, so raw and scaled units agree).
    t = _trained("vrnn_eq")
    window = _window()
    s = _sampler("vrnn_eq")(t.final, window[:, :N], horizon=M, rng=jax.random.PRNGKey(4), num_samples=S)
    s = np.asarray(s)
    rho = np.asarray(t.final["params"]["momentum"])
    last, step = np.asarray(window[:, N - 1]), np.asarray(window[:, N - 1] - window[:, N - 2])
    path = np.stack([last + step * sum(rho**j for j in range(1, k + 1)) for k in range(1, M + 1)], axis=1)
    np.testing.assert_allclose(s.mean(0), path, rtol=1e-4, atol=1e-4)
    pair_sums = s[: S // 2] + s[S // 2 :]
    np.testing.assert_allclose(pair_sums, 2 * np.broadcast_to(path, pair_sums.shape), rtol=1e-4, atol=1e-4)
    assert float(np.min(np.abs(s[0] - s[S // 2]))) > 0  # the mirror image is another sample
