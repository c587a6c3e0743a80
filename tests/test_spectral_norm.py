"""The discriminator's spectrally normalised convolution (``kpflow.fomm.discriminator.SNConv``) against
``torch.nn.utils.spectral_norm`` on a ``Conv2d``: from the same weight and the same ``u``, ``v``
vectors, the same power iteration gives the same normalised weight, the same sigma and the same
vectors, step after step in training mode (where the vectors advance once per call, while the weight
changes as it would under an optimizer), and in evaluation mode (where they stay put).

The normalised kernel is read back from the Flax layer by convolving one-hot probes: with a zero
bias, probe ``p`` (a one at kernel position ``p``, HWC order) returns row ``p`` of the kernel.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kpflow.fomm.discriminator import SNConv

torch = pytest.importorskip("torch")

C_IN, C_OUT, KSIZE = 3, 5, 3
STEPS = 4


def _probes() -> np.ndarray:
    """``[k*k*C, k, k, C]`` one-hot inputs; a VALID convolution of probe p gives kernel row p."""
    return np.eye(KSIZE * KSIZE * C_IN, dtype=np.float32).reshape(-1, KSIZE, KSIZE, C_IN)


class Pair:
    """The same spectrally normalised convolution in PyTorch and in Flax, run side by side."""

    def __init__(self, weight: np.ndarray):
        self.conv = torch.nn.utils.spectral_norm(torch.nn.Conv2d(C_IN, C_OUT, KSIZE, padding=0))
        with torch.no_grad():
            self.conv.bias.zero_()
        self.layer = SNConv(C_OUT, KSIZE, spectral_norm=True)
        init = self.layer.init(jax.random.PRNGKey(0), jnp.zeros((1, KSIZE, KSIZE, C_IN)))
        assert init["params"]["kernel"].shape == (KSIZE, KSIZE, C_IN, C_OUT)
        assert init["batch_stats"]["u"].shape == (C_OUT,)
        # Both start from PyTorch's random unit vectors.
        self.stats = {"u": jnp.asarray(self.conv.weight_u.numpy()), "v": jnp.asarray(self.conv.weight_v.numpy())}
        self.set_weight(weight)

    def set_weight(self, weight: np.ndarray):
        """``weight [O, I, k, k]`` (PyTorch's layout) into both."""
        with torch.no_grad():
            self.conv.weight_orig.copy_(torch.from_numpy(weight))
        self.weight = weight

    def torch_step(self):
        """One forward -> (normalised weight [O, I, k, k], sigma, u, v)."""
        with torch.no_grad():
            self.conv(torch.zeros(1, C_IN, KSIZE, KSIZE))
            u, v = self.conv.weight_u.numpy().copy(), self.conv.weight_v.numpy().copy()
            sigma = float(u @ (self.weight.reshape(C_OUT, -1) @ v))
            return self.conv.weight.numpy().copy(), sigma, u, v

    def flax_step(self, train: bool):
        """One call on the probes -> (normalised weight [O, I, k, k], sigma, u, v)."""
        params = {"kernel": jnp.asarray(self.weight.transpose(2, 3, 1, 0)), "bias": jnp.zeros(C_OUT)}
        out, updated = self.layer.apply({"params": params, "batch_stats": self.stats}, jnp.asarray(_probes()), train,
                                        mutable=["batch_stats"])
        self.stats = updated["batch_stats"]
        kernel = np.asarray(out[:, 0, 0, :]).reshape(KSIZE, KSIZE, C_IN, C_OUT).transpose(3, 2, 0, 1)
        sigma = float(np.sum(self.weight**2) / np.sum(self.weight * kernel))  # weight = sigma * kernel
        return kernel, sigma, np.asarray(self.stats["u"]), np.asarray(self.stats["v"])


def _assert_same(a, b):
    for name, x, y in zip(("normalised weight", "sigma", "u", "v"), a, b):
        np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6, err_msg=name)


def test_training_mode_matches_torch_step_after_step():
    rng = np.random.default_rng(0)
    pair = Pair(rng.normal(size=(C_OUT, C_IN, KSIZE, KSIZE)).astype(np.float32))
    pair.conv.train()
    sigmas = []
    for step in range(STEPS):
        if step:  # an optimizer's change between calls: the vectors keep chasing the new weight
            pair.set_weight((pair.weight + 0.1 * rng.normal(size=pair.weight.shape)).astype(np.float32))
        ours, theirs = pair.flax_step(train=True), pair.torch_step()
        _assert_same(ours, theirs)
        sigmas.append(theirs[1])
    # The vectors advanced: one iteration from random vectors is far from converged at first.
    assert abs(sigmas[1] - sigmas[0]) > 1e-3
    top = np.linalg.svd(pair.weight.reshape(C_OUT, -1), compute_uv=False)[0]
    assert 0.5 * top < sigmas[-1] <= top * (1 + 1e-5)  # a power-iteration estimate never exceeds it


def test_evaluation_mode_matches_torch_and_keeps_the_vectors():
    rng = np.random.default_rng(1)
    pair = Pair(rng.normal(size=(C_OUT, C_IN, KSIZE, KSIZE)).astype(np.float32))
    pair.conv.train()
    _assert_same(pair.flax_step(train=True), pair.torch_step())  # vectors away from their start
    pair.conv.eval()
    before = np.asarray(pair.stats["u"]), np.asarray(pair.stats["v"])
    for _ in range(2):
        ours, theirs = pair.flax_step(train=False), pair.torch_step()
        _assert_same(ours, theirs)
        np.testing.assert_array_equal(ours[2], before[0])
        np.testing.assert_array_equal(ours[3], before[1])


def test_convolution_output_matches_torch():
    rng = np.random.default_rng(2)
    pair = Pair(rng.normal(size=(C_OUT, C_IN, KSIZE, KSIZE)).astype(np.float32))
    with torch.no_grad():
        pair.conv.bias.copy_(torch.from_numpy(rng.normal(size=C_OUT).astype(np.float32)))
    pair.conv.eval()
    x = rng.normal(size=(2, 7, 6, C_IN)).astype(np.float32)
    with torch.no_grad():
        want = pair.conv(torch.from_numpy(x.transpose(0, 3, 1, 2))).numpy().transpose(0, 2, 3, 1)
    params = {"kernel": jnp.asarray(pair.weight.transpose(2, 3, 1, 0)),
              "bias": jnp.asarray(pair.conv.bias.detach().numpy())}
    got = pair.layer.apply({"params": params, "batch_stats": pair.stats}, jnp.asarray(x), False)
    assert got.shape == (2, 5, 4, C_OUT)
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-5)
