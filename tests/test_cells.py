"""kpflow.forecast.cells: the GRU cell matches Flax's, and bfloat16 matrix products stay close to float32."""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kpflow import forecast
from kpflow.forecast import cells


def test_gru_cell_has_flax_parameters_and_outputs():
    key = jax.random.PRNGKey(0)
    h = jax.random.normal(key, (5, 16))
    x = jax.random.normal(jax.random.fold_in(key, 1), (5, 12))
    ours, theirs = cells.GRUCell(16), nn.GRUCell(16)
    params = theirs.init(key, h, x)
    # Same tree, so a checkpoint written with either cell restores into the other ...
    assert jax.tree_util.tree_structure(ours.init(key, h, x)) == jax.tree_util.tree_structure(params)
    shapes = lambda p: jax.tree_util.tree_map(jnp.shape, p)
    assert shapes(ours.init(key, h, x)) == shapes(params)
    # ... and the same numbers from the same parameters.
    np.testing.assert_allclose(ours.apply(params, h, x)[0], theirs.apply(params, h, x)[0], rtol=1e-6, atol=1e-6)


def test_split_dense_is_dense_of_the_concatenation():
    key = jax.random.PRNGKey(0)
    a = jax.random.normal(key, (3, 7))
    b = jax.random.normal(jax.random.fold_in(key, 1), (3, 5))
    ours, theirs = cells.SplitDense(4), nn.Dense(4)
    params = theirs.init(key, jnp.concatenate([a, b], -1))
    # The same parameter tree and, from the same key, the same initial values ...
    mine = ours.init(key, a, b)
    assert jax.tree_util.tree_structure(mine) == jax.tree_util.tree_structure(params)
    for x, y in zip(jax.tree_util.tree_leaves(mine), jax.tree_util.tree_leaves(params)):
        np.testing.assert_array_equal(x, y)
    params = jax.tree_util.tree_map(lambda p: p + 0.1, params)  # a non-zero bias too
    # ... and the same outputs from the same parameters, for any split of the input.
    want = theirs.apply(params, jnp.concatenate([a, b], -1))
    np.testing.assert_allclose(ours.apply(params, a, b), want, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(ours.apply(params, a[:, :2], a[:, 2:], b), want, rtol=1e-6, atol=1e-6)
    # bfloat16 products stay close.
    low = cells.SplitDense(4, "bfloat16").apply(params, a, b)
    assert low.dtype == jnp.float32 and float(jnp.max(jnp.abs(low - want))) < 0.05


def test_bfloat16_products_accumulate_in_float32():
    dot = cells.mixed_dot_general("bfloat16")
    a = jnp.full((1, 4096), 1.0 + 2.0**-7, jnp.float32)  # exactly representable in bfloat16
    b = jnp.ones((4096, 1), jnp.float32)
    out = dot(a, b, (((1,), (0,)), ((), ())))
    assert out.dtype == jnp.float32
    # A bfloat16 accumulator would have stalled far below the exact sum (8 bits of mantissa).
    assert float(out[0, 0]) == pytest.approx(4096 * (1.0 + 2.0**-7), rel=1e-6)
    assert cells.mixed_dot_general("float32") is None and cells.mixed_dot_general(None) is None


def test_vrnn_bfloat16_samples_match_float32():
    f = forecast.create("vrnn", dim=12, num_observed=4, horizon=3, hidden=32, latent=4)
    window = jax.random.normal(jax.random.PRNGKey(0), (2, 7, 12)) * 0.1
    variables = f.init(jax.random.PRNGKey(1), window)
    low = dataclasses.replace(f, module=f.module.clone(matmul_dtype="bfloat16"))
    key = jax.random.PRNGKey(2)
    ref = np.asarray(f.sample(variables, window[:, :4], 3, key, 16))
    out = np.asarray(low.sample(variables, window[:, :4], 3, key, 16))
    spread = np.mean(np.abs(ref - ref.mean(axis=0)))
    assert 0 < np.mean(np.abs(out - ref)) < 0.05 * spread


def test_unknown_matmul_dtype_is_refused():
    with pytest.raises(ValueError, match="matmul_dtype must be one of"):
        cells.mixed_dot_general("float16")
    with pytest.raises(ValueError, match="matmul_dtype"):
        forecast.create("vrnn", dim=12, num_observed=4, horizon=3, hidden=8, latent=2, matmul_dtype="int8")
