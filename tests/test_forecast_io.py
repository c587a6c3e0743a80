"""The shared input/output layer (kpflow.forecast.io) around every forecaster.

Each component once: the inputs and the window's step scale ignore a translation, and a model's
forecasts shift with its context; magnitudes ignore a reflection, the output layer mirrors negated
heads, and a symmetric model mirrors its samples; an untrained residual model without momentum is
hold-last, with zero heads momentum follows the damped path. Then, for each of the five models with
the layer on: training on generated data lowers the loss, and validation forecasts made from whole
windows see only their context. The refactored VRNN draws exactly what the formulas it had before
the layer draw, and configs written before the layer build the same models. Errors in ``model.io``
are one line.

Compilation is the cost on CPU: functions take the variables as arguments and compile at XLA's
cheapest settings (``quick_jit``); each model is trained once (``_trained``) and shared.
"""

import functools
import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import adam_train_step, quick_jit

from kpflow import forecast
from kpflow.data import stack_windows, synthetic_clips
from kpflow.forecast.base import ar1_noise
from kpflow.forecast.gru import GRUForecaster
from kpflow.forecast.io import PLAIN, SHARED, IOLayer, resolve
from kpflow.forecast.vrnn import VRNNForecaster
from kpflow.keypoints import CausalScaler
from kpflow.training.forecaster import eval_step

N, M, K = 4, 3, 2
D = 6 * K
S, B = 4, 5
STEPS = 150


# Tiny widths; frames unbounded (frame_bound clips around the training mean, which a translation
# or a reflection of the context does not move).
TINY = {
    "gru": {"hidden": 16, "num_layers": 1},
    "vae": {"hidden": 32, "latent": 4, "num_layers": 1},
    "nf": {"num_blocks": 2, "hidden": 16, "num_layers": 1, "context_hidden": 16},
    "vrnn": {"hidden": 16, "latent": 4, "prior_hidden": 16, "posterior_hidden": 16, "decoder_hidden": 16},
    "grunf": {"hidden": 16, "num_blocks": 2, "flow_hidden": 16, "flow_layers": 1},
}


def _create(name, io=SHARED, **overrides) -> forecast.Forecaster:
    hparams = {**TINY[name], "frame_bound": None, **overrides}
    return forecast.create(name, dim=D, num_observed=N, horizon=M, io=io, **hparams)


@functools.cache
def _data():
    """(training windows [W, N+M, D], scaler fitted on the clips, a fixed batch [32, N+M, D])."""
    clips = synthetic_clips(num_clips=6, num_keypoints=K, min_frames=60, max_frames=80, seed=0)
    windows = stack_windows(clips, N + M, stride=2)
    return windows, CausalScaler.fit(list(clips.values())), jnp.asarray(windows[::5][:32])


def _window():
    return _data()[2][:B]


def _mirror(frames):
    """``[B, T, D]`` reflected through each window's first frame."""
    return 2.0 * frames[:, :1] - frames


# -- inputs: translation and reflection ----------------------------------------------------------


def _frames(seed=0, shape=(B, N + M, D)):
    return jnp.asarray(np.random.default_rng(seed).normal(size=shape).cumsum(axis=1), jnp.float32)


def test_inputs_and_step_scale_ignore_a_translation_only_with_relative_positions():
    x, offset = _frames(), jnp.asarray(np.random.default_rng(1).normal(size=D), jnp.float32)
    step_scale = jnp.linspace(0.5, 2.0, D)
    for layer in (SHARED, IOLayer(sign_invariant=False), PLAIN):
        scale = layer.window_scale(x[:, :N], step_scale)
        np.testing.assert_allclose(layer.window_scale(x[:, :N] + offset, step_scale), scale, rtol=1e-5)
        moved = layer.series_inputs(x + offset, scale) - layer.series_inputs(x, scale)
        if layer.relative:
            np.testing.assert_allclose(moved, 0.0, atol=1e-5)
        else:  # the papers' inputs hold the frame itself
            np.testing.assert_allclose(moved[..., :D], jnp.broadcast_to(offset, x.shape), rtol=1e-5)


def test_magnitudes_ignore_a_reflection_and_signed_inputs_flip():
    x, step_scale = _frames(2), jnp.linspace(0.5, 2.0, D)
    for layer in (SHARED, IOLayer(sign_invariant=False)):
        scale = layer.window_scale(x[:, :N], step_scale)
        np.testing.assert_allclose(layer.window_scale(_mirror(x)[:, :N], step_scale), scale, rtol=1e-5)
        inputs, mirrored = layer.series_inputs(x, scale), layer.series_inputs(_mirror(x), scale)
        np.testing.assert_allclose(mirrored, inputs if layer.sign_invariant else -inputs, atol=1e-5)
        assert float(jnp.max(jnp.abs(inputs))) > 0.5


# -- outputs: residual, momentum, their inverse ----------------------------------------------------


def test_zero_heads_follow_the_damped_momentum_path_and_hold_last_without_it():
    x, rho = _frames(3), jnp.linspace(0.1, 0.9, D)
    context, scale = x[:, :N], SHARED.window_scale(x[:, :N], jnp.ones(D))
    zeros = jnp.zeros((B, M, D))
    hold = SHARED.heads_to_frames(context, zeros, scale, rho=None)
    np.testing.assert_array_equal(hold, jnp.repeat(context[:, -1:], M, axis=1))
    # Steps rho^k times the last observed step: x_{N-1+k} = x_{N-1} + sum_{j<=k} rho^j dx_{N-1}.
    last_step = context[:, -1] - context[:, -2]
    expected = context[:, -1:] + jnp.cumsum(rho ** jnp.arange(1, M + 1)[:, None] * last_step[:, None], axis=1)
    np.testing.assert_allclose(SHARED.heads_to_frames(context, zeros, scale, rho), expected, rtol=1e-5, atol=1e-5)


def test_frames_to_heads_inverts_heads_to_frames_and_negated_heads_mirror_the_frames():
    x, rho = _frames(4), jnp.linspace(0.1, 0.9, D)
    heads = jnp.asarray(np.random.default_rng(5).normal(size=(B, M, D)), jnp.float32)
    for layer in (SHARED, PLAIN, IOLayer(residual=False)):
        r = rho if layer.uses_momentum else None
        context, scale = x[:, :N], layer.window_scale(x[:, :N], jnp.ones(D))
        frames = layer.heads_to_frames(context, heads, scale, r)
        window = jnp.concatenate([context, frames], axis=1)
        np.testing.assert_allclose(layer.frames_to_heads(window, N, scale, r), heads, rtol=1e-4, atol=1e-4)
        if layer.residual:  # steps flip with the window; a frame head would have to mirror instead
            mirrored = layer.heads_to_frames(_mirror(x)[:, :N], -heads, scale, r)
            np.testing.assert_allclose(mirrored, _mirror(window)[:, N:], rtol=1e-5, atol=1e-4)


# -- the models --------------------------------------------------------------------------------


def _random_variables(f, seed=1):
    """Every parameter drawn from N(0, 0.2^2) (so every input reaches the output), running
    statistics at one, the scaler fitted on the clips; only the initialiser's shapes are traced."""
    _, scaler, fixed = _data()
    shapes = jax.eval_shape(f.init, jax.random.PRNGKey(0), fixed, scaler)
    leaves, tree = jax.tree.flatten(shapes["params"])
    keys = jax.random.split(jax.random.PRNGKey(seed), len(leaves))
    params = jax.tree.unflatten(tree, [0.2 * jax.random.normal(k, x.shape, x.dtype) for x, k in zip(leaves, keys)])
    variables = {"params": params, "scaler": {"loc": scaler.loc, "scale": scaler.scale, "step_scale": scaler.step_scale}}
    for collection in set(shapes) - set(variables):
        variables[collection] = jax.tree.map(lambda x: jnp.ones(x.shape, x.dtype), shapes[collection])
    return variables


@functools.cache
def _trained(name):
    """(forecaster with the shared layer, trained variables, initial loss, final loss) on the fixed batch."""
    f = _create(name)
    windows, scaler, fixed = _data()
    v0 = quick_jit(f.init)(jax.random.PRNGKey(0), fixed, scaler)
    opt = optax.adam(1e-2)

    train_step = adam_train_step(f, opt)

    v, opt_state = v0, opt.init(v0["params"])
    order = np.random.default_rng(0).integers(0, len(windows), (STEPS, 32))
    initial = float(train_step(v0, opt_state, fixed, jax.random.PRNGKey(123))[2])
    for i in range(STEPS):
        v, opt_state, _, _ = train_step(v, opt_state, jnp.asarray(windows[order[i]]), jax.random.PRNGKey(i))
    return f, v, initial, float(train_step(v, opt_state, fixed, jax.random.PRNGKey(123))[2])


@functools.cache
def _sampler(name):
    return quick_jit(_trained(name)[0].sample, static_argnames=("horizon", "num_samples"))


@pytest.mark.parametrize("name", forecast.MODELS)
def test_training_with_the_shared_layer_lowers_the_loss(name):
    _, _, initial, final = _trained(name)
    # The layer's steps are in each window's own volatility, so less is left to learn on these
    # generated clips than in the plain models' units (tests/test_forecasters_gru_vae_nf.py).
    assert np.isfinite(final) and initial - final > 0.1 * abs(initial), (initial, final)


@pytest.mark.parametrize("name", forecast.MODELS)
def test_forecasts_shift_with_the_context(name):
    _, v, _, _ = _trained(name)
    context = _window()[:, :N]
    offset = jnp.asarray(np.random.default_rng(6).uniform(-0.5, 0.5, D), jnp.float32)
    a = _sampler(name)(v, context, horizon=M, rng=jax.random.PRNGKey(7), num_samples=S)
    b = _sampler(name)(v, context + offset, horizon=M, rng=jax.random.PRNGKey(7), num_samples=S)
    np.testing.assert_allclose(b - offset, a, atol=1e-4)
    assert float(jnp.min(jnp.max(jnp.abs(a - context[:, -1:]), axis=-1))) > 1e-3  # they do move


@pytest.mark.parametrize("name", forecast.MODELS)
def test_validation_forecasts_see_only_the_context(name, recorded):
    # Through the trainer's validation step, which slices each window itself: the samples it draws
    # must not move when the frames after N do; its scores, made against those frames, must.
    f, v, _, _ = _trained(name)
    spy, tape = recorded(f)
    window = _window()
    altered = window.at[:, N:].set(window[::-1, N:] + 1.0)
    units, mask = jnp.ones((B, D)), jnp.ones(B, bool)
    scores = [eval_step(v, w, units, mask, jax.random.PRNGKey(1), forecaster=spy, num_samples=S)
              for w in (window, altered)]
    jax.effects_barrier()
    assert len(tape) == 2 and tape[0].shape == (S, B, M, D)
    np.testing.assert_array_equal(tape[0], tape[1])
    assert abs(float(scores[0]["mae_mean"]) - float(scores[1]["mae_mean"])) > 0.1


@pytest.mark.parametrize("name", forecast.MODELS)
def test_untrained_residual_model_without_momentum_is_hold_last(name):
    # Every core starts with a zero head: the GRU's and the decoders' last layers, the flows'
    # identity couplings. The VRNN's point forecast is its momentum path whatever its weights.
    f = _create(name, io=IOLayer(momentum=False))
    _, scaler, fixed = _data()
    v = quick_jit(f.init)(jax.random.PRNGKey(0), fixed, scaler)
    assert "momentum" not in v["params"]
    point = quick_jit(f.point_forecast, static_argnames="horizon")(v, fixed[:B, :N], horizon=M)
    np.testing.assert_allclose(point, jnp.repeat(fixed[:B, N - 1 : N], M, axis=1), atol=1e-5)


@pytest.mark.parametrize("name", ["gru", "vae", "nf", "vrnn", "grunf"])
def test_mirrored_samples_centre_on_the_damped_momentum_path(name):
    # Antithetic sampling is the layer's, for every model: the mean of an even number of samples is
    # x_{N-1} + sum_{j<=k} rho^j dx_{N-1} (the scaler is affine per dimension, so in raw units too),
    # whatever the core draws. Without it, a random core's samples do not average to that path.
    context = _window()[:, :N]
    for mirror in (True, False):
        f = _create(name, mirror_samples=mirror)
        v = _random_variables(f)
        sample = quick_jit(f.sample, static_argnames=("horizon", "num_samples"))
        samples = sample(v, context, horizon=M, rng=jax.random.PRNGKey(3), num_samples=2 * S)
        rho = v["params"]["momentum"]
        last_step = context[:, -1] - context[:, -2]
        path = context[:, -1:] + jnp.cumsum(rho ** jnp.arange(1, M + 1)[:, None] * last_step[:, None], axis=1)
        gap = float(jnp.max(jnp.abs(samples.mean(axis=0) - path)))
        assert (gap < 1e-4) if mirror else (gap > 1e-2), (mirror, gap)
        if mirror:  # pairs, not copies: the draws differ from their images
            assert float(jnp.max(jnp.abs(samples[0] - samples[S]))) > 1e-2


class AntitheticGRU(GRUForecaster):
    """The GRU drawing the negated noise of each key: the same law as the GRU's, draw by draw mirrored."""

    def _draw(self, h, noise=True, eps=None, temperature=1.0):
        mean, std = self._head_params(h)
        if not noise:
            return mean, eps
        eps = -jax.random.normal(self.make_rng("sample"), mean.shape, mean.dtype)
        return mean + temperature * std * eps, eps


def test_a_symmetric_model_mirrors_its_samples():
    # With sign-invariant inputs and a head whose mean is zero (a symmetric law of steps), drawing
    # from a reflected context with the noise negated retraces the reflection of each sample: the
    # two sample laws are mirror images. A head with a mean breaks it, so the check can fail.
    f = _create("gru")
    mirror_f = forecast.Forecaster("gru", AntitheticGRU(**{k: getattr(f.module, k) for k in
                                                          ("dim", "num_observed", "horizon", "io", "hidden",
                                                           "num_layers", "frame_bound")}))
    sample = quick_jit(f.sample, static_argnames=("horizon", "num_samples"))
    sample_mirrored = quick_jit(mirror_f.sample, static_argnames=("horizon", "num_samples"))
    v = _random_variables(f)
    kernel, bias = v["params"]["head"]["kernel"], v["params"]["head"]["bias"]
    symmetric = {**v, "params": {**v["params"], "head": {"kernel": kernel.at[:, :D].set(0.0),
                                                         "bias": bias.at[:D].set(0.0)}}}
    context = _window()[:, :N]
    for variables, holds in ((symmetric, True), (v, False)):
        a = sample(variables, context, horizon=M + 2, rng=jax.random.PRNGKey(8), num_samples=S)
        b = sample_mirrored(variables, _mirror(context), horizon=M + 2, rng=jax.random.PRNGKey(8), num_samples=S)
        mirrored = 2.0 * context[:, :1] - a
        if holds:
            np.testing.assert_allclose(b, mirrored, atol=1e-4)
        else:
            assert float(jnp.max(jnp.abs(b - mirrored))) > 1e-2


# -- the VRNN's numbers --------------------------------------------------------------------------


class FormerVRNN(VRNNForecaster):
    """The VRNN with the input/output formulas it had before the shared layer, copied as they were."""

    def _scale(self, context, step_scale):
        steps = jnp.diff(context, axis=1)
        p = jnp.maximum(self.io.adaptive_scale, 0.0)
        num = p * step_scale**2 + jnp.sum(steps**2, axis=1)
        adaptive = jnp.maximum(jnp.sqrt(num / (p + steps.shape[1])), 1e-3 * step_scale)
        return jnp.where(self.io.adaptive_scale < 0, jnp.broadcast_to(step_scale, adaptive.shape), adaptive)

    def _features(self, frame, prev, anchor, scale, magnitudes=False, sign=1.0):
        step = (frame - prev) / scale
        parts = [(frame - anchor) / scale, step] if self.position_features else [step]
        feats = sign * jnp.concatenate(parts, -1)
        feats = jnp.abs(feats) if magnitudes else feats
        return nn.relu(self.phi_x(feats)) if self.embed_inputs else feats

    def momentum_shift(self, last_step):
        return self.rho * last_step

    def _to_frame(self, prev, head, scale):
        return prev + head * scale

    def _to_head(self, prev, frame, scale):
        return (frame - prev) / scale


# The :cpu VRNN (configs/vrnn_vox.py) at tiny sizes, but for its closed-loop training term (which
# feeds the same steps through the same layer and would only add compilation), and the VRNN of a
# config without ``io``.
CPU_VRNN = {**TINY["vrnn"], "kl_weight": 0.2, "decoder_temperature": 0.0,
            "latent_persistence": 0.9, "fresh_forecast_latent": True, "equivariant": True,
            "latent_temperature": (0.4, 0.8, 1.2), "mirror_samples": True}


@pytest.mark.parametrize("hparams", [{**CPU_VRNN, "io": SHARED}, {**TINY["vrnn"], "decoder_temperature": 0.5}],
                         ids=["cpu", "legacy"])
def test_vrnn_draws_what_its_former_formulas_draw(hparams):
    new = forecast.create("vrnn", dim=D, num_observed=N, horizon=M, **hparams)
    former = forecast.Forecaster("vrnn", FormerVRNN(**{f: getattr(new.module, f) for f in (
        "dim", "num_observed", "horizon", *hparams)}))
    v, window = _random_variables(new), _window()

    def outputs(f):
        return quick_jit(lambda v: {
            "sample": f.sample(v, window[:, :N], M + 2, jax.random.PRNGKey(9), num_samples=S),
            "point": f.point_forecast(v, window[:, :N], M),
            "teacher_forced": f.teacher_forced(v, window, jax.random.PRNGKey(10), num_samples=S),
            "loss": f.loss(v, window, jax.random.PRNGKey(11))[0],
        })(v)

    got, expected = outputs(new), outputs(former)
    for key in expected:
        np.testing.assert_array_equal(got[key], expected[key], err_msg=key)


# -- configs and errors ------------------------------------------------------------------------


# The model blocks of the :cpu VRNN and GRU-NF and a GRU as configs wrote them before ``io``.
FORMER_CONFIGS = {
    "vrnn": ({**CPU_VRNN, "residual": True, "adaptive_scale": 4.0, "momentum": True, "sign_invariant": True}, SHARED),
    "grunf": ({**TINY["grunf"], "residual": True, "temperature": 0.85, "adaptive_scale": 4.0, "momentum": True,
               "sign_invariant": True}, SHARED),
    "gru": ({**TINY["gru"], "residual": True, "deterministic": False}, PLAIN),
}


@pytest.mark.parametrize("name", FORMER_CONFIGS)
def test_configs_written_before_the_layer_build_the_same_model(name):
    hparams, layer = FORMER_CONFIGS[name]
    f = forecast.create(name, dim=D, num_observed=N, horizon=M, **hparams)
    assert f.module.io == layer
    now = forecast.create(name, dim=D, num_observed=N, horizon=M, io=layer,
                          **{k: v for k, v in hparams.items() if k not in vars(layer)})
    assert f.module == now.module
    # Parameter names as they were: momentum is ``params["momentum"] [D]`` where the layer has it.
    shapes = jax.eval_shape(f.init, jax.random.PRNGKey(0), _data()[2], _data()[1])["params"]
    assert ("momentum" in shapes) == layer.uses_momentum
    # Without io, the layer each model had: VRNN and GRU-NF all but sign invariance, the others plain.
    bare = forecast.create(name, dim=D, num_observed=N, horizon=M, **TINY[name]).module.io
    assert bare == (PLAIN if name == "gru" else IOLayer(sign_invariant=False))


ERRORS = {
    "unknown field": ({"io": {"momentun": True}}, "model.io: unknown field(s) ['momentun']; it takes:"),
    "unknown preset": ({"io": "fancy"}, "model.io: unknown preset 'fancy'; choose one of: shared, plain"),
    "not a flag": ({"io": {"momentum": 1}}, "model.io.momentum must be a boolean, got 1"),
    "not a number": ({"io": {"adaptive_scale": "4"}}, "model.io.adaptive_scale must be a finite number"),
    "flat and io": ({"io": "shared", "momentum": False}, "model: ['momentum'] belong in model.io; give them there only"),
    "absolute equivariant": ({"io": "plain", "equivariant": True}, "vrnn: equivariant needs io.relative"),
}


@pytest.mark.parametrize("case", ERRORS)
def test_a_bad_io_block_is_a_one_line_value_error(case):
    hparams, message = ERRORS[case]
    with pytest.raises(ValueError, match=re.escape(message)) as e:
        forecast.create("vrnn", dim=D, **hparams)
    assert "\n" not in str(e.value)


def test_an_io_block_names_a_preset_or_some_fields_over_the_shared_defaults():
    assert resolve(None, PLAIN) is PLAIN and resolve("plain", SHARED) is PLAIN
    assert resolve({"momentum": False}, PLAIN) == IOLayer(momentum=False)
    assert SHARED == IOLayer() and not PLAIN.relative and PLAIN.adaptive_scale < 0


# -- the samplers' noise ---------------------------------------------------------------------------


def test_ar1_noise_keeps_standard_normal_steps_that_share_a_direction():
    fresh = jax.random.normal(jax.random.PRNGKey(0), (12, 20000))
    eps, path = None, []
    for t in range(12):
        eps = ar1_noise(fresh[t], eps, 0.9)
        path.append(eps)
    path = jnp.stack(path)
    np.testing.assert_allclose(jnp.std(path, axis=1), 1.0, atol=0.03)
    np.testing.assert_allclose(jnp.mean(path[1:] * path[:-1], axis=1), 0.9, atol=0.03)
    np.testing.assert_array_equal(ar1_noise(fresh[1], fresh[0], 0.0), fresh[1])


def _lag1_step_correlation(samples, context):
    """``[S, B, M, D]`` closed-loop samples -> the correlation of successive steps over samples,
    each (window, step, dimension) centred on its mean over samples."""
    frames = jnp.concatenate([jnp.broadcast_to(context[None, :, -1:], samples[:, :, :1].shape), samples], axis=2)
    steps = jnp.diff(frames, axis=2)
    steps = steps - steps.mean(axis=0)
    a, b = steps[:, :, :-1], steps[:, :, 1:]
    return float(jnp.sum(a * b) / jnp.sqrt(jnp.sum(a * a) * jnp.sum(b * b)))


@pytest.mark.parametrize("name", ["gru", "grunf"])
def test_noise_persistence_makes_each_sample_a_path(name):
    # Untrained, the GRU's head and the GRU-NF's flow turn standardised noise into the step (times the
    # step scale), plus momentum's 0.3 of the last step. With fresh noise, successive steps correlate
    # through momentum only (about 0.3); with AR(1) noise of rho 0.9 a sample keeps its direction. The
    # first step's noise is standard normal either way, so its spread does not change.
    _, scaler, fixed = _data()
    context = _window()[:, :N]
    spread, corr = {}, {}
    for rho in (0.0, 0.9):
        f = _create(name, noise_persistence=rho)
        variables = quick_jit(f.init)(jax.random.PRNGKey(0), fixed, scaler)
        sample = quick_jit(f.sample, static_argnames=("horizon", "num_samples"))
        samples = sample(variables, context, horizon=2 * M, rng=jax.random.PRNGKey(0), num_samples=64)
        corr[rho] = _lag1_step_correlation(samples, context)
        spread[rho] = float(jnp.std(samples[:, :, 0] - context[None, :, -1]))
    assert 0.15 < corr[0.0] < 0.45 and corr[0.9] > 0.85, corr
    np.testing.assert_allclose(spread[0.9], spread[0.0], rtol=0.1)
    with pytest.raises(ValueError, match="noise_persistence must be in"):
        _create(name, noise_persistence=1.0)
    with pytest.raises(ValueError, match="temperature must be a number >= 0"):
        _create(name, temperature=-0.5)
