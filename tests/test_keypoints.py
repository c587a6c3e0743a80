"""Keypoints layout, vector round trips, scalers and series validation (kpflow.keypoints)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kpflow.keypoints import (
    CausalScaler,
    Keypoints,
    MinMaxScaler,
    check_series,
    keypoints_to_vector,
    vector_to_keypoints,
)


def _random_keypoints(rng, leading=(3,), k=10):
    value = rng.uniform(-1, 1, leading + (k, 2)).astype(np.float32)
    jacobian = rng.normal(size=leading + (k, 2, 2)).astype(np.float32)
    return value, jacobian


# -- layout ---------------------------------------------------------------------------------------
def test_vector_layout_is_x_y_j00_j01_j10_j11_per_keypoint():
    # Two keypoints with every number distinct, so any permutation of the layout shows up.
    value = np.array([[[1.0, 2.0], [7.0, 8.0]]], np.float32)  # [T=1, K=2, 2]
    jacobian = np.array(
        [[[[3.0, 4.0], [5.0, 6.0]], [[9.0, 10.0], [11.0, 12.0]]]], np.float32
    )  # [T=1, K=2, 2, 2]; [k, row, col] so j01 is row 0, column 1
    vec = keypoints_to_vector(value, jacobian)
    np.testing.assert_array_equal(vec, [[1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]])
    assert vec.shape == (1, 12)


def test_from_vector_reads_the_same_layout():
    vec = jnp.arange(1.0, 13.0)  # one frame, two keypoints
    kp = Keypoints.from_vector(vec)
    np.testing.assert_array_equal(kp.value, [[1, 2], [7, 8]])
    np.testing.assert_array_equal(kp.jacobian, [[[3, 4], [5, 6]], [[9, 10], [11, 12]]])
    assert kp.num_keypoints == 2


@pytest.mark.parametrize("leading", [(), (5,), (2, 3)])
def test_round_trip_numpy_and_jax(leading):
    value, jacobian = _random_keypoints(np.random.default_rng(0), leading)
    for xp in (np, jnp):
        kp = Keypoints(xp.asarray(value), xp.asarray(jacobian))
        vec = kp.to_vector()
        assert vec.shape == leading + (60,)
        back = Keypoints.from_vector(vec)
        np.testing.assert_array_equal(np.asarray(back.value), value)
        np.testing.assert_array_equal(np.asarray(back.jacobian), jacobian)


def test_numpy_helpers_round_trip():
    value, jacobian = _random_keypoints(np.random.default_rng(1), (7,))
    v2, j2 = vector_to_keypoints(keypoints_to_vector(value, jacobian))
    assert isinstance(v2, np.ndarray) and isinstance(j2, np.ndarray)
    np.testing.assert_array_equal(v2, value)
    np.testing.assert_array_equal(j2, jacobian)


def test_round_trip_under_jit_and_vmap():
    value, jacobian = _random_keypoints(np.random.default_rng(2), (4, 6))

    @jax.jit
    def through_vector(kp):
        return Keypoints.from_vector(kp.to_vector() * 2.0)

    out = through_vector(Keypoints(jnp.asarray(value), jnp.asarray(jacobian)))
    np.testing.assert_allclose(out.value, 2 * value)
    np.testing.assert_allclose(out.jacobian, 2 * jacobian)

    vec = jax.vmap(lambda kp: kp.to_vector())(Keypoints(jnp.asarray(value), jnp.asarray(jacobian)))
    np.testing.assert_array_equal(vec, keypoints_to_vector(value, jacobian))


@pytest.mark.parametrize("d", [59, 61, 8])
def test_from_vector_rejects_dimension_not_multiple_of_six(d):
    with pytest.raises(ValueError, match=f"last dimension {d}"):
        Keypoints.from_vector(np.zeros((3, d), np.float32))


# -- scalers --------------------------------------------------------------------------------------
def test_minmax_maps_fit_frames_to_unit_interval_and_round_trips():
    rng = np.random.default_rng(3)
    frames = rng.normal(2.0, 3.0, (50, 12))
    scaler = MinMaxScaler.fit(frames)
    z = scaler.transform(frames)
    np.testing.assert_allclose(z.min(axis=0), 0.0, atol=1e-12)
    np.testing.assert_allclose(z.max(axis=0), 1.0, atol=1e-12)
    other = rng.normal(size=(9, 12))
    np.testing.assert_allclose(scaler.inverse(scaler.transform(other)), other, atol=1e-12)
    # Errors are expressed by the range only (no offset).
    np.testing.assert_allclose(scaler.scale_error(np.ones(12)), 1.0 / (frames.max(0) - frames.min(0)))


def test_minmax_constant_dimension_is_left_unscaled():
    frames = np.zeros((4, 6))
    frames[:, 0] = [0.0, 1.0, 2.0, 4.0]
    scaler = MinMaxScaler.fit(frames)
    z = scaler.transform(frames)
    assert np.all(np.isfinite(z))
    np.testing.assert_allclose(z[:, 0], [0, 0.25, 0.5, 1.0])
    np.testing.assert_allclose(z[:, 1:], 0.0)


def test_minmax_fit_rejects_no_frames():
    with pytest.raises(ValueError, match="at least one frame"):
        MinMaxScaler.fit(np.zeros((0, 6)))


def test_causal_scaler_round_trip_and_statistics():
    rng = np.random.default_rng(4)
    train = [rng.normal(1.0, 2.0, (40, 12)), rng.normal(-1.0, 0.5, (25, 12))]
    scaler = CausalScaler.fit(train)
    frames = np.concatenate(train)
    np.testing.assert_allclose(scaler.loc, frames.mean(0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(scaler.scale, frames.std(0), rtol=1e-5)
    # step_scale: RMS of within-clip increments (never across the clip boundary), in scaled units.
    steps = np.concatenate([np.diff(s, axis=0) for s in train]) / frames.std(0)
    np.testing.assert_allclose(scaler.step_scale, np.sqrt((steps**2).mean(0)), rtol=1e-5)
    x = rng.normal(size=(3, 7, 12)).astype(np.float32)
    np.testing.assert_allclose(scaler.inverse(scaler.transform(x)), x, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(jax.jit(lambda s, v: s.inverse(s.transform(v)))(scaler, x), x, rtol=1e-5, atol=1e-5)


def test_causal_scaler_statistics_come_only_from_fitted_series():
    rng = np.random.default_rng(5)
    train = [rng.normal(size=(30, 6)) for _ in range(3)]
    heldout = rng.normal(100.0, 50.0, (30, 6))  # wildly different: it must not move the fit
    a = CausalScaler.fit(train)
    b = CausalScaler.fit([t.copy() for t in train])
    for field in ("loc", "scale", "step_scale"):
        np.testing.assert_array_equal(getattr(a, field), getattr(b, field))
    # Transforming held-out data does not refit, and the statistics are far from the held-out ones.
    a.transform(heldout)
    np.testing.assert_array_equal(a.loc, b.loc)
    assert np.all(np.abs(np.asarray(a.loc)) < 1.0)
    with_heldout = CausalScaler.fit(train + [heldout])
    assert not np.allclose(with_heldout.loc, a.loc)


def test_causal_scaler_dict_round_trip_and_identity():
    scaler = CausalScaler.fit([np.random.default_rng(6).normal(size=(20, 6))])
    back = CausalScaler.from_dict(scaler.to_dict())
    for field in ("loc", "scale", "step_scale"):
        np.testing.assert_allclose(getattr(back, field), getattr(scaler, field))
    ident = CausalScaler.identity(6)
    x = np.arange(6.0)
    np.testing.assert_array_equal(ident.transform(x), x)


def test_causal_scaler_fit_rejects_empty():
    with pytest.raises(ValueError, match="non-empty"):
        CausalScaler.fit([np.zeros((0, 6))])


# -- check_series ---------------------------------------------------------------------------------
def test_check_series_returns_float32():
    out = check_series(np.zeros((5, 60), np.float64))
    assert out.dtype == np.float32 and out.shape == (5, 60)


@pytest.mark.parametrize("shape", [(60,), (2, 5, 60)])
def test_check_series_rejects_wrong_rank(shape):
    with pytest.raises(ValueError, match=r"clipA: expected a keypoint series \[T, 6K\]"):
        check_series(np.zeros(shape), name="clipA")


def test_check_series_rejects_wrong_dimension():
    with pytest.raises(ValueError, match="not 6K"):
        check_series(np.zeros((5, 59)))
    with pytest.raises(ValueError, match="not 6K"):
        check_series(np.zeros((5, 0)))
    with pytest.raises(ValueError, match="model expects 60"):
        check_series(np.zeros((5, 54)), dim=60)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_check_series_rejects_non_finite_naming_frame(bad):
    series = np.zeros((10, 60), np.float32)
    series[7, 13] = bad
    series[9, 0] = bad
    with pytest.raises(ValueError, match=r"clipB: contains NaN.*first at frame 7"):
        check_series(series, name="clipB")
