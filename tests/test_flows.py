"""ConditionalRealNVP: invertibility, exact log-determinants, a normalised density, batch statistics,
and use from vmapped and scanned (recurrent) code.

Cost notes: XLA compilation dominates on CPU, so flows and their variables are built once and shared
(``_initial``), and variables are passed to jitted functions as arguments, never closed over
(captured arrays become HLO constants that XLA constant-folds slowly).
"""

import functools
import importlib.util
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import REPO

from kpflow.forecast.flows import ConditionalRealNVP

D, C, B = 6, 3, 5
BLOCKS = 3  # couplings 0..2 with batch-norms 0..1 between them


def _make_flow(norm, dim=D):
    return ConditionalRealNVP(dim=dim, num_blocks=BLOCKS, hidden=16, num_layers=1, norm=norm)


@functools.cache
def _initial(norm, dim=D, cond_dim=C):
    """(flow, freshly initialised variables)."""
    flow = _make_flow(norm, dim)
    cond = jnp.zeros((2, cond_dim)) if cond_dim else None
    init = jax.jit(lambda k, x, c: flow.init({"params": k}, x, c, False, method=flow.log_prob))
    return flow, init(jax.random.PRNGKey(0), jnp.zeros((2, dim)), cond)


def _perturbed(variables, key, scale):
    """Random params (the zero-initialised last layers make every untrained coupling the identity)
    and non-trivial running statistics, so the checks below can fail."""
    k_params, k_mean, k_var = jax.random.split(key, 3)
    leaves, treedef = jax.tree_util.tree_flatten(variables["params"])
    # One draw for all leaves: a random op per leaf shape would be one more compilation each.
    sizes = [p.size for p in leaves]
    noise = np.split(np.asarray(jax.random.normal(k_params, (sum(sizes),))), np.cumsum(sizes)[:-1])
    leaves = [p + scale * n.reshape(p.shape) for p, n in zip(leaves, noise)]
    out = {"params": jax.tree_util.tree_unflatten(treedef, leaves)}
    if "batch_stats" in variables:
        names = sorted(variables["batch_stats"])
        shape = (len(names), variables["batch_stats"][names[0]]["mean"].shape[0])
        means = scale * np.asarray(jax.random.normal(k_mean, shape))
        variances = np.asarray(jax.random.uniform(k_var, shape, minval=0.5, maxval=2.0))
        out["batch_stats"] = {
            n: {"mean": jnp.asarray(means[i]), "var": jnp.asarray(variances[i])}
            for i, n in enumerate(names)
        }
    return out


@functools.cache
def _random_flow(norm, dim=D, cond_dim=C, scale=0.3, seed=2):
    flow, v = _initial(norm, dim, cond_dim)
    return flow, _perturbed(v, jax.random.PRNGKey(seed), scale)


def _inputs(seed=3):
    kz, kc = jax.random.split(jax.random.PRNGKey(seed))
    return jax.random.normal(kz, (B, D)), jax.random.normal(kc, (B, C))


@pytest.mark.parametrize("norm", ["batch", "none"])
def test_inverse_undoes_forward(norm):
    flow, v = _random_flow(norm)
    z, cond = _inputs()

    @jax.jit
    def round_trip(v, z, cond):
        x, fwd_ld = flow.apply(v, z, cond, method=flow.forward_and_log_det)
        z_back, inv_ld = flow.apply(v, x, cond, False, method=flow.inverse_and_log_det)
        return x, z_back, fwd_ld + inv_ld

    x, z_back, ld_sum = round_trip(v, z, cond)
    assert float(jnp.max(jnp.abs(x - z))) > 0.1  # the flow is not the identity
    np.testing.assert_allclose(z_back, z, atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(ld_sum, 0.0, atol=1e-4)

    # The untrained flow is the identity (batch-norm with running (0, 1) scales by sqrt(1 + eps)).
    _, v0 = _initial(norm)
    x0, _, _ = round_trip(v0, z, cond)
    np.testing.assert_allclose(x0, z, rtol=5e-4, atol=1e-5)


def test_log_dets_match_autodiff_jacobians():
    flow, v = _random_flow("batch")
    z, cond = _inputs()
    num_layers = 2 * BLOCKS - 1  # every coupling, every batch-norm (eval mode)
    assert (
        len(flow.apply(v, cond, False, method=lambda m, c, t: tuple(range(len(m.layers(c, t))))))
        == num_layers
    )

    @jax.jit
    def log_dets_and_autodiff(v, zv, c):
        """[(reported log-det, log|det| of the autodiff Jacobian)] per layer, for the flow, its inverse."""

        def layer(i, u):
            x, ld = flow.apply(
                v,
                u[None],
                c[None],
                method=lambda m, u, c: m.layers(c, False)[i].forward_and_log_det(u),
            )
            return x[0], ld[0]

        def forward(u):
            x, ld = flow.apply(v, u[None], c[None], method=flow.forward_and_log_det)
            return x[0], ld[0]

        def inverse(u):
            x, ld = flow.apply(v, u[None], c[None], False, method=flow.inverse_and_log_det)
            return x[0], ld[0]

        fns = [functools.partial(layer, i) for i in range(num_layers)] + [forward]
        out = [(fn(zv)[1], jax.jacfwd(lambda u, fn=fn: fn(u)[0])(zv)) for fn in fns]
        xv = forward(zv)[0]
        out.append((inverse(xv)[1], jax.jacfwd(lambda u: inverse(u)[0])(xv)))
        return [(ld, jnp.linalg.slogdet(jac)[1]) for ld, jac in out]

    for k, (ld, autodiff) in enumerate(log_dets_and_autodiff(v, z[0], cond[0])):
        np.testing.assert_allclose(float(ld), float(autodiff), atol=1e-4, err_msg=f"entry {k}")


def test_log_prob_is_change_of_variables():
    flow, v = _random_flow("batch")
    x, cond = _inputs(seed=7)

    @jax.jit
    def log_probs(v, x, cond):
        def by_hand(xv, c):
            to_z = lambda u: flow.apply(
                v, u[None], c[None], False, method=flow.inverse_and_log_det
            )[0][0]
            z = to_z(xv)
            return (
                -0.5 * jnp.sum(z**2)
                - 0.5 * D * jnp.log(2 * jnp.pi)
                + jnp.linalg.slogdet(jax.jacfwd(to_z)(xv))[1]
            )

        return flow.apply(v, x, cond, False, method=flow.log_prob), jax.vmap(by_hand)(x, cond)

    lp, expected = log_probs(v, x, cond)
    np.testing.assert_allclose(lp, expected, atol=1e-4)


def test_density_integrates_to_one_in_2d():
    flow, v = _random_flow("batch", dim=2, cond_dim=2, scale=0.2, seed=11)
    draw = jax.jit(lambda v, c, k: flow.apply(v, c, rngs={"sample": k}, method=flow.sample))
    log_prob = jax.jit(lambda v, p, c: flow.apply(v, p, c, False, method=flow.log_prob))
    n = 401
    for cond in ([0.0, 0.0], [1.0, -2.0]):
        # Riemann sum of p(x | cond) over a grid covering the flow's samples with a wide margin.
        s = draw(v, jnp.broadcast_to(jnp.asarray(cond), (4000, 2)), jax.random.PRNGKey(0))
        lo, hi = jnp.min(s, 0), jnp.max(s, 0)
        lo, hi = lo - 0.5 * (hi - lo), hi + 0.5 * (hi - lo)
        gx, gy = jnp.linspace(lo[0], hi[0], n), jnp.linspace(lo[1], hi[1], n)
        xx, yy = jnp.meshgrid(gx, gy, indexing="ij")
        points = jnp.stack([xx.ravel(), yy.ravel()], -1)
        lp = log_prob(v, points, jnp.broadcast_to(jnp.asarray(cond), points.shape))
        mass = float(jnp.sum(jnp.exp(lp)) * (gx[1] - gx[0]) * (gy[1] - gy[0]))
        assert abs(mass - 1.0) < 0.01, (cond, mass)


def test_batch_norm_running_stats_update_only_in_training():
    flow, v0 = _initial("batch")
    stats = v0["batch_stats"]
    assert set(stats) == {f"batch_norms_{i}" for i in range(BLOCKS - 1)}  # created by init
    for s in stats.values():
        np.testing.assert_array_equal(s["mean"], 0.0)
        np.testing.assert_array_equal(s["var"], 1.0)
    # Non-trivial couplings, so that every batch-norm sees un-normalised inputs.
    v = {"params": _random_flow("batch")[1]["params"], "batch_stats": stats}
    x, cond = _inputs()
    x = 3.0 * x + 1.0  # far from the initial (0, 1) statistics

    @functools.partial(jax.jit, static_argnames="train")
    def updated(v, x, train):
        """(batch_stats after one log_prob, the first batch-norm's output on x)."""
        _, new = flow.apply(v, x, cond, train, method=flow.log_prob, mutable=["batch_stats"])
        z = flow.apply(
            v, x, method=lambda m, x: m.layers(None, train)[1].inverse(x), mutable=["batch_stats"]
        )[0]
        return new["batch_stats"], z

    moved, z = updated(v, x, train=True)
    for name in stats:
        assert not np.allclose(moved[name]["mean"], stats[name]["mean"], atol=1e-3)
        assert not np.allclose(moved[name]["var"], stats[name]["var"], atol=1e-3)
    # Training normalises with the batch's own statistics: z = standardised x * exp(log_scale) + shift.
    p = v["params"]["batch_norms_0"]
    np.testing.assert_allclose(jnp.mean(z, 0), p["shift"], atol=1e-4)
    np.testing.assert_allclose(jnp.std(z, 0), jnp.exp(p["log_scale"]), rtol=1e-3)

    same, _ = updated(v, x, train=False)
    jax.tree_util.tree_map(np.testing.assert_array_equal, same, stats)


def test_sample_is_keyed_and_vmaps_over_keys():
    flow, v = _random_flow("batch")
    _, cond = _inputs()
    # batch_stats are immutable here, as in Forecaster.sample.
    draw = jax.jit(
        lambda v, keys: jax.vmap(
            lambda k: flow.apply(v, cond, rngs={"sample": k}, method=flow.sample)
        )(keys)
    )
    keys = jax.random.split(jax.random.PRNGKey(5), 4)
    s = draw(v, keys)
    assert s.shape == (4, B, D) and bool(jnp.all(jnp.isfinite(s)))
    np.testing.assert_array_equal(s, draw(v, keys))
    assert float(jnp.min(jnp.abs(s[0] - s[1]))) > 0
    with pytest.raises(ValueError, match="cond or batch_shape"):
        flow.apply(v, None, method=flow.sample, rngs={"sample": keys[0]})


class _FlowCell(nn.Module):
    """A recurrent step whose output is drawn from a flow conditioned on the state (GRU-NF style; a
    tanh RNN stands in for the GRU, whose orthogonal initialiser is slow to compile)."""

    @nn.compact
    def __call__(self, carry, x_true):
        flow = ConditionalRealNVP(
            dim=D, num_blocks=2, hidden=8, num_layers=1, norm="batch", name="flow"
        )
        x = flow.sample(carry)
        lp = flow.log_prob(x_true, carry, train=False)
        carry = jnp.tanh(nn.Dense(carry.shape[-1], name="rnn")(jnp.concatenate([carry, x], -1)))
        return carry, (x, lp)


def test_sample_and_log_prob_inside_scan():
    steps = 4
    scanned = nn.scan(
        _FlowCell,
        variable_broadcast=["params", "batch_stats"],  # read-only inside the loop
        split_rngs={"params": False, "sample": True},  # fresh noise at every step
        in_axes=1,
        out_axes=1,
        length=steps,
    )()
    carry = jnp.zeros((B, 8))
    xs = jax.random.normal(jax.random.PRNGKey(0), (B, steps, D))
    rngs = {"params": jax.random.PRNGKey(1), "sample": jax.random.PRNGKey(2)}
    v = jax.jit(lambda r, c, xs: scanned.init(r, c, xs))(rngs, carry, xs)
    assert "batch_stats" in v

    @jax.jit
    def rollouts(v, keys):
        return jax.vmap(lambda k: scanned.apply(v, carry, xs, rngs={"sample": k})[1])(keys)

    x, lp = rollouts(v, jax.random.split(jax.random.PRNGKey(3), 2))
    assert x.shape == (2, B, steps, D) and lp.shape == (2, B, steps)
    assert bool(jnp.all(jnp.isfinite(x))) and bool(jnp.all(jnp.isfinite(lp)))
    assert float(jnp.min(jnp.abs(x[:, :, 0] - x[:, :, 1]))) > 0  # different noise at each step
    assert float(jnp.min(jnp.abs(x[0] - x[1]))) > 0  # and for each key


class _TrainFlowCell(nn.Module):
    @nn.compact
    def __call__(self, carry, x_true):
        flow = ConditionalRealNVP(
            dim=D, num_blocks=2, hidden=8, num_layers=1, norm="batch", name="flow"
        )
        return carry, flow.log_prob(x_true, carry, train=True)


def test_train_mode_log_prob_in_scan_carries_batch_stats():
    def scanned(**collections):
        return nn.scan(
            _TrainFlowCell, split_rngs={"params": False}, in_axes=1, out_axes=1, **collections
        )()

    # A carried collection must exist before the loop: initialise with it broadcast, then train with
    # it carried, so that the running averages are updated step after step.
    init_scan = scanned(variable_broadcast=["params", "batch_stats"])
    train_scan = scanned(variable_broadcast="params", variable_carry="batch_stats")
    carry = jnp.zeros((B, C))
    xs = 2.0 + jax.random.normal(jax.random.PRNGKey(0), (B, 3, D))
    v = jax.jit(lambda k, c, xs: init_scan.init({"params": k}, c, xs))(
        jax.random.PRNGKey(1), carry, xs
    )
    (_, lp), new = jax.jit(lambda v, c, xs: train_scan.apply(v, c, xs, mutable=["batch_stats"]))(
        v, carry, xs
    )
    assert lp.shape == (B, 3) and bool(jnp.all(jnp.isfinite(lp)))
    np.testing.assert_array_equal(v["batch_stats"]["flow"]["batch_norms_0"]["mean"], 0.0)
    assert not np.allclose(new["batch_stats"]["flow"]["batch_norms_0"]["mean"], 0.0)


def test_the_flows_load_without_tensorflow_and_aiortc_loads_after_them():
    """TFP imports TensorFlow when it is installed, and aiortc crashes the process (a segmentation
    fault) when it loads after TensorFlow: loading the flows must leave TensorFlow out. In a fresh
    process, since this one may have loaded TensorFlow already."""
    # Looked up, not imported: this process may have loaded TensorFlow, and aiortc would crash it.
    if not (importlib.util.find_spec("tensorflow") and importlib.util.find_spec("aiortc")):
        pytest.skip("needs TensorFlow and aiortc: pip install -e '.[tfds,call]'")
    code = ("import sys, kpflow.forecast.flows\n"
            "assert 'tensorflow' not in sys.modules, 'the flows loaded TensorFlow'\n"
            "import kpflow.call.transport\n"
            "import tensorflow\n")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr[-2000:]


def test_the_call_refuses_to_load_after_tensorflow_in_one_line():
    if not (importlib.util.find_spec("tensorflow") and importlib.util.find_spec("aiortc")):
        pytest.skip("needs TensorFlow and aiortc: pip install -e '.[tfds,call]'")
    code = "import tensorflow\nimport kpflow.call.transport\n"
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 1 and "ImportError: kpflow.call: TensorFlow is already loaded" in result.stderr
