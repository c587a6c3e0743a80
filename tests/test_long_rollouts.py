"""Long closed-loop rollouts stay in the training data's range, for every forecaster.

Each model of the registry, at the sizes of ``configs/demo.py``, is trained briefly on one shared
generated dataset (the trainer's own optimizer and step), then rolled 1,000 frames closed loop
(:data:`S` samples from each of :data:`B` real contexts). A model that forecasts only its trained
horizon (VAE, NF) is chained: each forecast's last N frames are the next context.

The range, per dimension d and in raw keypoint units: ``[lo_d, hi_d]`` are the smallest and largest
value of dimension d over every training frame; every value of every rollout must be finite and
within ``centre_d +- 3 * half_d``, where ``centre_d = (lo_d + hi_d) / 2`` and
``half_d = (hi_d - lo_d) / 2`` (three times the data's range, centred on it).

Every model stays inside it through ``frame_bound`` (``kpflow.forecast.base.bound_forecast_frame``);
without it the same trained models leave it (checked below). The VRNN's and GRU-NF's sampling
paths are checked on their own further down: mirror images and temperature mixtures are bounded
too, while their training loss and teacher-forced protocol are not touched.
"""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import quick_jit

from configs import demo
from kpflow import forecast
from kpflow.data import epoch_batches, stack_windows, synthetic_clips
from kpflow.forecast.base import bound_forecast_frame
from kpflow.keypoints import CausalScaler
from kpflow.training.forecaster import create_train_state, make_optimizer, train_step

K = 2  # keypoints: D = 12
STEPS = 100  # optimizer steps: a short training
LONG = 1000  # closed-loop frames
S, B = 4, 4  # samples per context, contexts
RANGES = 3.0  # allowed distance from the centre, in half-spans of the data's range



@functools.cache
def _data():
    """(training clips [T_i, D], per-dimension centre [D] and half-span [D] of their range)."""
    clips = list(synthetic_clips(num_clips=8, num_keypoints=K, min_frames=60, max_frames=100, seed=0).values())
    frames = np.concatenate(clips)
    lo, hi = frames.min(0), frames.max(0)
    return clips, (lo + hi) / 2, (hi - lo) / 2


@functools.cache
def _rollouts(name):
    """``{"bounded": [S, B, LONG, D], "unbounded": ..}`` (raw units) of the demo model ``name`` after
    STEPS training steps; "unbounded" is the same trained model with ``frame_bound=None``.

    Initialisation, training (the trainer's own ``create_train_state``, ``train_step`` and
    optimizer, on ``epoch_batches`` of the shared clips) and the rollouts run as one program
    compiled at XLA's cheapest settings: on CPU compilation, not computation, is the cost.
    """
    config = demo.get_config(name)
    n, m = config.num_observed, config.num_predicted
    hparams = {k: tuple(v) if isinstance(v, list) else v for k, v in config.model.items() if k != "name"}
    f = forecast.create(name, dim=6 * K, num_observed=n, horizon=m, **hparams)
    variants = {"bounded": f, "unbounded": dataclasses.replace(f, module=f.module.clone(frame_bound=None))}
    clips = _data()[0]
    windows = stack_windows(clips, n + m, stride=1)
    size = int(config.train.batch_size)
    batches = epoch_batches(windows, size, 0, 1, tuple(config.data.augment))
    batches = np.stack([next(batches) for _ in range(STEPS)])  # [STEPS, batch, N+M, D]
    contexts = windows[:: len(windows) // B][:B, :n]
    tx = make_optimizer(config.train, STEPS)

    @quick_jit
    def train_and_roll(batches, scaler, contexts):
        state = create_train_state(jax.random.key(0), f, batches[0], scaler, tx)
        state, _ = jax.lax.scan(lambda st, batch: train_step(st, batch, forecaster=f, tx=tx), state, batches)
        return {k: closed_loop_rollout(g, state.variables, contexts, LONG, jax.random.PRNGKey(1), S)
                for k, g in variants.items()}

    return jax.tree.map(np.asarray, train_and_roll(batches, CausalScaler.fit(clips), contexts))


def closed_loop_rollout(f: forecast.Forecaster, variables, context, steps: int, rng, num_samples: int):
    """``context [B, N, D]`` -> ``[S, B, steps, D]``: ``steps`` frames, each fed its predecessors.

    A model with ``any_horizon`` rolls in one ``sample`` call. A fixed-horizon one is chained: S
    chains per context, each forecast's last N frames (the model's own output) the next context.
    """
    if type(f.module).any_horizon:
        return f.sample(variables, context, steps, rng, num_samples)
    n, m = f.num_observed, f.horizon
    b, d = context.shape[0], context.shape[-1]

    def link(history, key):  # history [S*B, N, D]: the latest N frames of each chain (row s*B + b)
        out = f.sample(variables, history, m, key, 1)[0]
        return jnp.concatenate([history, out], axis=1)[:, -n:], out

    start = jnp.tile(context, (num_samples, 1, 1))
    links = -(-steps // m)
    _, outs = jax.lax.scan(link, start, jax.random.split(rng, links))  # [L, S*B, M, D]
    frames = jnp.swapaxes(outs, 0, 1).reshape(num_samples, b, links * m, d)
    return frames[:, :, :steps]


def _ranges_away(rollout: np.ndarray) -> float:
    """Largest ``|x - centre_d| / half_d`` over every value of ``rollout [.., D]``."""
    _, centre, half = _data()
    return float(np.max(np.abs(rollout - centre) / half))


# The VRNN's training steps compile for ~20 s.
LONG_CASES = [pytest.param(m, marks=pytest.mark.slow) if m == "vrnn" else m for m in forecast.MODELS]


@pytest.mark.parametrize("name", LONG_CASES)
def test_thousand_frame_rollouts_stay_within_three_ranges(name):
    rollout = _rollouts(name)["bounded"]
    assert rollout.shape == (S, B, LONG, 6 * K)
    assert np.isfinite(rollout).all()
    assert _ranges_away(rollout) <= RANGES, f"{name}: {_ranges_away(rollout):.1f} half-spans from the centre"


@pytest.mark.parametrize("name", LONG_CASES)
def test_the_same_models_without_frame_bound_leave_the_range(name):
    # The check above can fail: the bound, not the short training, keeps these models in range.
    assert _ranges_away(_rollouts(name)["unbounded"]) > RANGES


def test_frame_bound_clips_to_the_region_widened_to_the_last_observed_frame():
    # Scaled units: 4 training standard deviations, or the last observed frame's distance if farther,
    # so a context already outside the region is not pulled back.
    last = jnp.array([0.5, -6.0, 2.0, 0.0])
    frame = jnp.array([5.0, -7.0, -4.5, 3.9])
    np.testing.assert_array_equal(bound_forecast_frame(frame, last, 4.0), jnp.array([4.0, -6.0, -4.0, 3.9]))
    np.testing.assert_array_equal(bound_forecast_frame(frame, last, None), frame)


@pytest.mark.parametrize("name", forecast.MODELS)
@pytest.mark.parametrize("bad", [0, -1.0, "4", True])
def test_bad_frame_bound_is_a_one_line_error(name, bad):
    with pytest.raises(ValueError, match=f"^{name}: frame_bound must be a positive number") as e:
        forecast.create(name, dim=12, frame_bound=bad)
    assert "\n" not in str(e.value)


# -- the VRNN's and GRU-NF's sampling paths, on untrained tiny models (identity scaler: scaled units
# are raw ones, so the region is |x| <= max(4, |last observed frame|) per dimension) ----------------
PATHS = {
    # The :cpu sampler's paths: mirror images through the damped momentum path, and a mixture of
    # latent temperatures (decoder noise on, so an untrained model wanders).
    "vrnn": ("vrnn", {"equivariant": True, "latent_persistence": 0.9, "fresh_forecast_latent": True,
                      "mirror_samples": True, "latent_temperature": (0.5, 1.5)}),
    "grunf": ("grunf", {"num_blocks": 2, "flow_hidden": 8, "flow_layers": 1}),
}
PATH_N, PATH_LONG = 6, 100
# The VRNN's programs compile for ~10 s each on a 2-core CPU.
PATH_CASES = [pytest.param(k, marks=pytest.mark.slow) if k == "vrnn" else k for k in PATHS]


def _tiny(key, **overrides) -> forecast.Forecaster:
    name, hparams = PATHS[key]
    small = {"hidden": 8} | ({"latent": 4, "prior_hidden": 8, "posterior_hidden": 8, "decoder_hidden": 8}
                             if name == "vrnn" else {})
    return forecast.create(name, dim=6 * K, num_observed=PATH_N, horizon=PATH_LONG, **small, **hparams, **overrides)


@functools.cache
def _path_window():
    """``[B, PATH_N + PATH_LONG, D]``: a random walk from 0 whose context moves little (its last frame
    lies inside the region) and whose future leaves the region."""
    steps = jax.random.normal(jax.random.key(3), (B, PATH_N + PATH_LONG, 6 * K)).at[:, 0].set(0.0)
    size = jnp.concatenate([jnp.full(PATH_N, 0.3), jnp.full(PATH_LONG, 1.0)])[:, None]  # per frame
    return jnp.cumsum(steps * size, axis=1)


@functools.cache
def _untrained(key):
    """Random variables of ``_tiny(key)`` (whatever the overrides: the tests vary no parameter's shape);
    jitted, as an eager initialisation costs more than compiling it."""
    f = _tiny(key)
    return quick_jit(lambda w: f.init(jax.random.key(0), w))(_path_window())


@pytest.mark.parametrize("key", PATH_CASES)
def test_vrnn_and_grunf_samples_stay_within_the_region_and_leave_it_without_the_bound(key):
    f, variables, window = _tiny(key), _untrained(key), _path_window()
    last = np.asarray(window[:, PATH_N - 1])  # [B, D]
    assert float(np.max(np.abs(last))) < 4.0
    free = dataclasses.replace(f, module=f.module.clone(frame_bound=None))
    # One program for both: compiling, not running, is the cost.
    both = quick_jit(lambda v, c: [g.sample(v, c, PATH_LONG, jax.random.key(1), S) for g in (f, free)])
    bounded, unbounded = (np.asarray(x) for x in both(variables, window[:, :PATH_N]))
    assert np.isfinite(bounded).all()
    assert np.all(np.abs(bounded) <= 4.0 + 1e-5)  # every sample, mirror images included
    assert np.max(np.abs(bounded)) > 3.9  # it reaches the bound ...
    assert np.max(np.abs(unbounded)) > 8.0  # ... which the same samples cross without it


@pytest.mark.parametrize("key", PATH_CASES)
def test_the_bound_leaves_the_training_loss_and_the_teacher_forced_protocol_alone(key):
    # The closed-loop training term rolls PATH_LONG frames (which leave the region untrained) and the
    # teacher-forced protocol predicts frames of a window that leaves it: neither is clipped.
    f, variables, window = _tiny(key, closed_loop_weight=1.0, closed_loop_samples=2), _untrained(key), _path_window()
    free = dataclasses.replace(f, module=f.module.clone(frame_bound=None))

    rng = jax.random.key(2)
    both = quick_jit(lambda v, w: [(g.loss(v, w, rng)[0], g.teacher_forced(v, w, rng, 2)) for g in (f, free)])
    (loss, tf), (free_loss, free_tf) = both(variables, window)
    assert float(loss) == float(free_loss)
    np.testing.assert_array_equal(np.asarray(tf), np.asarray(free_tf))
    assert np.max(np.abs(np.asarray(tf))) > 8.0  # a bound would have changed them
