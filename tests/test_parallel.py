"""Data parallelism: the sharded training step on 8 simulated CPU devices equals the one-device step."""

import os
import pathlib
import subprocess
import sys
import textwrap

REPO = pathlib.Path(__file__).resolve().parent.parent

# Runs in a fresh process: the device count is fixed when JAX starts.
SCRIPT = textwrap.dedent("""
    import jax, numpy as np, optax
    from kpflow import forecast, parallel
    from kpflow.data import synthetic_clips
    from kpflow.keypoints import CausalScaler
    from kpflow.training.forecaster import create_train_state, train_step

    assert jax.device_count() == 8, jax.devices()
    clips = list(synthetic_clips(num_clips=4, num_speakers=2, min_frames=40, max_frames=40, num_keypoints=2, seed=0).values())
    windows = np.stack([c[i : i + 8] for c in clips for i in range(0, 32, 8)])[:16]  # [16, 8, 12] global batch
    f = forecast.create("vrnn", dim=12, num_observed=4, horizon=4, hidden=16, latent=4,
                        prior_hidden=16, posterior_hidden=16, decoder_hidden=16)
    tx = optax.adamw(1e-2)
    state0 = create_train_state(jax.random.key(0), f, windows, CausalScaler.fit(clips), tx)

    def train(mesh, steps=3):
        state = parallel.replicate(state0, mesh)
        batch = parallel.shard_batch(windows, mesh)
        assert batch.sharding.shard_shape(batch.shape)[0] == 16 // mesh.size
        losses = []
        for _ in range(steps):
            state, m = train_step(state, batch, forecaster=f, tx=tx)
            losses.append(float(m["loss"]))
        assert all(len(x.sharding.device_set) == mesh.size for x in jax.tree.leaves(state.params))
        return losses, jax.device_get(state.params)

    one_loss, one_params = train(parallel.make_mesh(devices=jax.devices()[:1]))
    eight_loss, eight_params = train(parallel.make_mesh())
    np.testing.assert_allclose(eight_loss, one_loss, rtol=1e-5)
    assert one_loss[-1] < one_loss[0], one_loss  # it trained
    for a, b in zip(jax.tree.leaves(one_params), jax.tree.leaves(eight_params), strict=True):
        np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-6)
    print("losses", one_loss, eight_loss)
""")


def test_sharded_step_equals_one_device_step():
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu")
    result = subprocess.run([sys.executable, "-c", SCRIPT], cwd=REPO, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "losses" in result.stdout
