"""kpflow.pipeline: the streaming schedule, causality, transfer normalisation and batched rendering."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs.fomm_common import fomm_config
from kpflow import forecast
from kpflow import pipeline as pl
from kpflow.fomm.model import random_fomm
from kpflow.keypoints import Keypoints

K = 10
D = 6 * K


@pytest.fixture(scope="module")
def fomm():
    """A tiny randomly initialised FOMM (64x64 frames)."""
    return random_fomm(fomm_config("vox", "tiny"))


def random_series(t: int, seed: int = 0) -> np.ndarray:
    """``[T, 6K]`` plausible keypoints: values in [-0.6, 0.6] drifting, Jacobians near the identity."""
    rng = np.random.default_rng(seed)
    value = np.clip(rng.uniform(-0.5, 0.5, (1, K, 2)) + np.cumsum(rng.normal(0, 0.01, (t, K, 2)), 0), -0.9, 0.9)
    jac = np.eye(2)[None, None] + rng.normal(0, 0.05, (t, K, 2, 2))
    return np.asarray(Keypoints(value.astype(np.float32), jac.astype(np.float32)).to_vector())


def linear_predictor(context, horizon, rng, num_samples):
    """Deterministic predictor (velocity extrapolation) plus sample-dependent offsets."""
    v = context[:, -1] - context[:, -2]
    steps = jnp.arange(1, horizon + 1, dtype=context.dtype)[None, :, None]
    point = context[:, -1:] + steps * v[:, None]
    offsets = jax.random.normal(rng, (num_samples, 1, 1, 1)) * 0.01
    return point[None] + offsets


# -- schedule ------------------------------------------------------------------------------------


def test_schedule_blocks_cover_the_clip_with_a_partial_last_block():
    s = pl.Schedule.parse("12-12")
    blocks = s.blocks(40)
    assert [(b.start, b.num_observed, b.stop) for b in blocks] == [(0, 12, 24), (24, 12, 40)]
    assert list(blocks[1].forecast) == list(range(36, 40))
    # A last block shorter than N is all observed.
    assert [(b.start, b.num_observed, b.stop) for b in s.blocks(30)] == [(0, 12, 24), (24, 6, 30)]
    mask = s.observed_mask(30)
    assert mask[:12].all() and not mask[12:24].any() and mask[24:].all()
    assert s.transmitted_fraction(48) == 0.5
    assert pl.frames_needed(s, 30, 100) == 18 + 100 * 12


def test_schedule_rejects_bad_input():
    with pytest.raises(ValueError, match="N-M"):
        pl.Schedule.parse("12x12")
    with pytest.raises(ValueError, match="N >= 1"):
        pl.Schedule(0, 4)
    with pytest.raises(ValueError, match="needs at least 24"):
        pl.Schedule(12, 12).check_clip(20, "clip a")


def test_forecaster_never_sees_unobserved_frames():
    s = pl.Schedule(6, 6)
    series = random_series(40)
    seen = []

    def spy(context, horizon, rng, num_samples):
        seen.append(np.asarray(context))
        return linear_predictor(context, horizon, rng, num_samples)

    out = pl.forecast_series(spy, series, s, jax.random.key(0), num_samples=3)
    # Blocks at 0, 12, 24 forecast; the last, 36-39, is only 4 frames: all observed, no context sent.
    assert len(seen) == 1 and seen[0].shape == (3, 6, D)
    for i, start in enumerate((0, 12, 24)):
        np.testing.assert_array_equal(seen[0][i], series[start : start + 6])
    # Corrupting every frame that is not transmitted changes nothing.
    mask = s.observed_mask(40)
    corrupted = series.copy()
    corrupted[~mask] = 1e6
    again = pl.forecast_series(linear_predictor, corrupted, s, jax.random.key(0), num_samples=3)
    np.testing.assert_array_equal(out, again)
    # Transmitted frames are passed through in every sample; forecast frames differ between samples.
    np.testing.assert_array_equal(out[:, mask], np.broadcast_to(series[mask], out[:, mask].shape))
    assert not np.allclose(out[0, ~mask], out[1, ~mask])


def test_last_partial_block_is_truncated():
    s = pl.Schedule(4, 8)
    series = random_series(18)  # blocks: 0-11 (4 observed + 8 forecast), 12-17 (4 observed + 2 forecast)
    out = pl.forecast_series(pl.hold_last_predictor, series, s, jax.random.key(0), num_samples=2)
    assert out.shape == (2, 18, D)
    np.testing.assert_array_equal(out[:, 16:], np.broadcast_to(series[15], (2, 2, D)))
    np.testing.assert_array_equal(out[:, 4:12], np.broadcast_to(series[3], (2, 8, D)))


def test_predictor_shape_mismatch_is_reported():
    bad = lambda context, horizon, rng, num_samples: jnp.zeros((num_samples, 1, horizon, D))
    with pytest.raises(ValueError, match="expected"):
        pl.forecast_series(bad, random_series(30), pl.Schedule(6, 6), jax.random.key(0), 2)


def test_forecaster_predictor_wires_a_real_forecaster():
    f = forecast.create("vrnn", dim=D, num_observed=6, horizon=6, hidden=16, latent=4)
    variables = f.init(jax.random.key(0), jnp.asarray(random_series(12)[None]))
    predict = pl.forecaster_predictor(f, variables)
    out = pl.forecast_series(predict, random_series(30, seed=1), pl.Schedule(6, 6), jax.random.key(1), num_samples=5)
    assert out.shape == (5, 30, D) and np.isfinite(out).all()
    assert not np.allclose(out[0, 6:12], out[1, 6:12])  # samples differ


# -- transfer-mode normalisation -------------------------------------------------------------------


def test_relative_motion_matches_hand_computed_values():
    src = Keypoints(jnp.array([[0.1, 0.2], [-0.3, 0.0]]), jnp.array([[[2.0, 0.0], [0.0, 2.0]], [[1.0, 1.0], [0.0, 1.0]]]))
    init = Keypoints(jnp.array([[0.0, 0.0], [0.5, 0.5]]), jnp.array([[[1.0, 0.0], [0.0, 4.0]], [[1.0, 0.0], [0.0, 1.0]]]))
    drv = Keypoints(jnp.array([[[0.2, -0.1], [0.5, 0.7]]]), jnp.array([[[[3.0, 0.0], [0.0, 2.0]], [[0.0, 1.0], [1.0, 0.0]]]]))
    out = pl.relative_motion(src, drv, init, scale=2.0)
    # value = src + 2 (drv - init): [0.1 + 0.4, 0.2 - 0.2], [-0.3 + 0, 0 + 0.4]
    np.testing.assert_allclose(out.value, [[[0.5, 0.0], [-0.3, 0.4]]], atol=1e-6)
    # jacobian = drv inv(init) src: diag(3, 2) diag(1, 1/4) diag(2, 2) = diag(6, 1);
    # [[0, 1], [1, 0]] I [[1, 1], [0, 1]] = [[0, 1], [1, 1]]
    np.testing.assert_allclose(out.jacobian, [[[[6.0, 0.0], [0.0, 1.0]], [[0.0, 1.0], [1.0, 1.0]]]], atol=1e-6)
    # Without relative Jacobians the driving ones pass through; without relative movement, everything.
    np.testing.assert_allclose(pl.relative_motion(src, drv, init, relative_jacobian=False).jacobian, drv.jacobian)
    same = pl.relative_motion(src, drv, init, relative_movement=False)
    np.testing.assert_array_equal(same.value, drv.value)


def test_movement_scale_is_the_root_of_the_hull_area_ratio():
    square2 = [[-1, -1], [1, -1], [1, 1], [-1, 1], [0, 0]]  # area 4; the interior point is ignored
    square1 = [[0, 0], [1, 0], [1, 1], [0, 1]]  # area 1
    assert pl.convex_hull_area(square2) == pytest.approx(4.0)
    assert pl.convex_hull_area([[0, 0], [2, 0], [0, 3]]) == pytest.approx(3.0)
    assert pl.movement_scale(square2, square1) == pytest.approx(2.0)
    with pytest.raises(ValueError, match="collinear"):
        pl.movement_scale(square1, [[0, 0], [1, 1], [2, 2]])


# -- rendering -----------------------------------------------------------------------------------


def test_rendering_samples_in_one_batch_equals_one_by_one(fomm):
    rng = np.random.default_rng(0)
    source = rng.uniform(0, 1, (64, 64, 3)).astype(np.float32)
    kp_source = jax.tree.map(lambda x: x[0], fomm.detect(source[None]))
    series = np.stack([random_series(5, seed=s) for s in range(3)])  # [S=3, T=5, D]
    shared = np.array([True, False, False, True, False])
    series[:, shared] = series[0, shared]
    kp = Keypoints.from_vector(series)
    together = pl.render_samples(pl.Renderer(fomm, chunk_size=4), source, kp_source, kp, shared=shared)
    alone = pl.Renderer(fomm, chunk_size=3)
    for s in range(3):
        one = alone.render(source, kp_source, Keypoints(kp.value[s], kp.jacobian[s]))
        np.testing.assert_allclose(together[s], one, atol=2e-5)
    assert together.shape == (3, 5, 64, 64, 3)
    assert not np.allclose(together[0, 1], together[1, 1])


def test_transfer_with_the_clip_own_first_frame_equals_reconstruction(fomm):
    rng = np.random.default_rng(1)
    frames = rng.uniform(0, 1, (8, 64, 64, 3)).astype(np.float32)
    series = np.asarray(fomm.detect(frames).to_vector())
    s = pl.Schedule(4, 4)
    rec = pl.MotionTransfer(fomm, pl.hold_last_predictor, s, "reconstruction", chunk_size=4)
    tra = pl.MotionTransfer(fomm, pl.hold_last_predictor, s, "transfer", chunk_size=4)
    a = rec.run(frames[0], series, jax.random.key(0), num_samples=2)
    b = tra.run(frames[0], series, jax.random.key(0), num_samples=2)
    # relative motion from the clip's own first frame is the identity: same keypoints, same frames
    np.testing.assert_allclose(a.frames, b.frames, atol=1e-4)
    assert a.frames.shape == (2, 8, 64, 64, 3) and a.observed.tolist() == [True] * 4 + [False] * 4
    # Hold-last forecast frames are the last observed frame re-rendered.
    np.testing.assert_allclose(a.frames[:, 4:], np.broadcast_to(a.frames[:, 3:4], a.frames[:, 4:].shape), atol=1e-5)


def test_without_a_forecaster_every_frame_is_transmitted(fomm):
    frames = np.random.default_rng(2).uniform(0, 1, (5, 64, 64, 3)).astype(np.float32)
    series = np.asarray(fomm.detect(frames).to_vector())
    out = pl.MotionTransfer(fomm, None, pl.Schedule(2, 2), chunk_size=8).run(frames[0], series, jax.random.key(0))
    assert out.observed.all() and out.frames.shape == (1, 5, 64, 64, 3)
    direct = fomm.generate(np.repeat(frames[:1], 5, 0), jax.tree.map(lambda x: jnp.repeat(x[None], 5, 0), out.kp_source),
                           Keypoints.from_vector(jnp.asarray(series)))
    np.testing.assert_allclose(out.frames[0], direct, atol=2e-5)


def test_bad_inputs_give_one_line_errors(fomm):
    mt = pl.MotionTransfer(fomm, None, pl.Schedule(2, 2))
    series = random_series(5)
    with pytest.raises(ValueError, match="resize"):
        mt.run(np.zeros((32, 32, 3)), series, jax.random.key(0))
    with pytest.raises(ValueError, match=r"\[T, 60\]"):
        mt.run(np.zeros((64, 64, 3)), series[:, :30], jax.random.key(0))
    with pytest.raises(ValueError, match="mode"):
        pl.MotionTransfer(fomm, None, pl.Schedule(2, 2), mode="animate")
