"""Conditional RealNVP (Dinh, Sohl-Dickstein and Bengio, 2017) built from distrax bijectors.

The flow is a bijection ``x = f(z; cond)`` from a standard-normal base ``z [.., D]`` to data
``x [.., D]``. Following distrax, a bijector's *forward* is the generative direction (z -> x) and its
*inverse* the normalising one (x -> z), so ``log p(x | cond) = log N(f^{-1}(x); 0, I) + log|det
d f^{-1} / dx|`` (the change of variables, section 3.1 of the paper).

Layers, listed from the data side (what the normalising pass meets first)::

    coupling_0, batch_norm_0, coupling_1, batch_norm_1, ..., coupling_{K-1}

- ``coupling_k``: a :class:`distrax.MaskedCoupling` with an alternating binary (parity) mask;
  the unmasked half gets an element-wise affine map whose shift and log-scale come from two MLPs
  (the "translation" and "scale" nets) fed with the masked half concatenated with ``cond``
  (sections 3.2-3.4). The log-scale is soft-bounded, ``b * tanh(s / b)``, and both nets' last
  layers start at zero, so the untrained flow is the identity.
- ``batch_norm_k`` (``norm="batch"``): the batch-normalisation bijector of the paper's section
  3.7, :class:`BatchNormBijector`, with statistics in the Flax ``batch_stats`` collection.

Calling the flow from recurrent code: ``sample`` and ``log_prob(train=False)`` only *read*
``batch_stats``, so they run under ``jax.vmap`` and inside ``nn.scan`` with
``variable_broadcast=("params", "batch_stats")``. ``log_prob(train=True)`` *writes* the running
averages: preferably call it once, outside the scan, on the stacked per-step inputs
(``x [B*T, D]``, ``cond [B*T, C]``), which also takes batch statistics over all steps; or scan
with ``variable_carry="batch_stats"`` (the collection must then exist before the loop: initialise
through a scan that broadcasts it).
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp


def _import_distrax():
    """distrax, without loading TensorFlow.

    TFP's JAX substrate, which distrax imports, imports TensorFlow whenever it is installed (the
    ``tfds`` extra installs it) only to copy docstrings. That costs seconds of start-up, and a
    TensorFlow loaded before aiortc (the ``call`` extra) crashes the process with a segmentation
    fault when aiortc initialises libsrtp. TensorFlow is hidden while distrax loads (TFP then
    skips the docstrings) and importable again afterwards.
    """
    if "distrax" in sys.modules or "tensorflow" in sys.modules:
        return importlib.import_module("distrax")
    sys.modules["tensorflow"] = None  # ``import tensorflow...`` raises ImportError
    try:
        return importlib.import_module("distrax")
    finally:
        del sys.modules["tensorflow"]


distrax = _import_distrax()

ACTIVATIONS: dict[str, Callable[[jnp.ndarray], jnp.ndarray]] = {"tanh": jnp.tanh, "relu": nn.relu}
NORMS = ("batch", "none")


class MLP(nn.Module):
    """``num_layers`` hidden layers of width ``hidden``, then a linear layer to ``out`` features.

    ``[.., F] -> [.., out]``. ``zero_init_last`` starts the output at exactly zero (identity couplings).
    """

    hidden: int
    num_layers: int
    out: int
    activation: str = "tanh"
    zero_init_last: bool = False

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        act = ACTIVATIONS[self.activation]
        for i in range(self.num_layers):
            x = act(nn.Dense(self.hidden, name=f"hidden_{i}")(x))
        init = nn.initializers.zeros if self.zero_init_last else nn.initializers.lecun_normal()
        return nn.Dense(self.out, kernel_init=init, name="out")(x)


class BatchNormBijector(distrax.Bijector):
    """The batch-normalisation bijector of Dinh et al. (2017), section 3.7, on events ``[.., D]``.

    Normalising direction (``inverse``, x -> z)::

        z = (x - mean) / sqrt(var + eps) * exp(log_scale) + shift,
        log|det dz/dx| = sum_d [log_scale_d - 0.5 log(var_d + eps)].

    ``mean`` and ``var`` are the running averages, or, when ``batch_statistics`` is given (training),
    the statistics of the batch being normalised, returned by ``batch_statistics(x)``. The log-det
    above is exact for fixed statistics; with batch statistics it treats them as constants, as in the
    paper. The generative ``forward`` (z -> x) always uses the running averages: the statistics of
    its output are not known before it is computed.
    """

    def __init__(
        self,
        log_scale: jnp.ndarray,
        shift: jnp.ndarray,
        running_mean: jnp.ndarray,
        running_var: jnp.ndarray,
        eps: float,
        batch_statistics: Callable[[jnp.ndarray], tuple[jnp.ndarray, jnp.ndarray]] | None = None,
    ):
        super().__init__(event_ndims_in=1)
        self._log_scale = log_scale
        self._shift = shift
        self._running = (running_mean, running_var)
        self._eps = eps
        self._batch_statistics = batch_statistics

    def _normalising_log_det(self, var: jnp.ndarray, batch_shape: tuple[int, ...]) -> jnp.ndarray:
        """``log|det dz/dx|`` broadcast to ``[*batch_shape]``, for statistics ``var [D]``."""
        per_dim = self._log_scale - 0.5 * jnp.log(var + self._eps)
        return jnp.broadcast_to(jnp.sum(per_dim), batch_shape)

    def forward_and_log_det(self, z: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray]:
        """``z [.., D]`` -> ``x [.., D]``, ``log|det dx/dz| [..]`` (running statistics)."""
        mean, var = self._running
        x = (z - self._shift) * jnp.exp(-self._log_scale) * jnp.sqrt(var + self._eps) + mean
        return x, -self._normalising_log_det(var, z.shape[:-1])

    def inverse_and_log_det(self, x: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray]:
        """``x [.., D]`` -> ``z [.., D]``, ``log|det dz/dx| [..]`` (batch statistics when training)."""
        mean, var = self._running if self._batch_statistics is None else self._batch_statistics(x)
        z = (x - mean) * jax.lax.rsqrt(var + self._eps) * jnp.exp(self._log_scale) + self._shift
        return z, self._normalising_log_det(var, x.shape[:-1])


class BatchNormLayer(nn.Module):
    """Flax owner of one :class:`BatchNormBijector`: ``params`` (log_scale, shift) and ``batch_stats``
    (running mean and var, updated as ``m * old + (1 - m) * batch``, except during ``init``)."""

    dim: int
    momentum: float = 0.95
    eps: float = 1e-4

    def setup(self):
        self.log_scale = self.param("log_scale", nn.initializers.zeros, (self.dim,))
        self.shift = self.param("shift", nn.initializers.zeros, (self.dim,))
        self.running_mean = self.variable(
            "batch_stats", "mean", jnp.zeros, (self.dim,), jnp.float32
        )
        self.running_var = self.variable("batch_stats", "var", jnp.ones, (self.dim,), jnp.float32)

    def bijector(self, train: bool) -> BatchNormBijector:
        return BatchNormBijector(
            self.log_scale,
            self.shift,
            self.running_mean.value,
            self.running_var.value,
            self.eps,
            batch_statistics=self._batch_statistics if train else None,
        )

    def _batch_statistics(self, x: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray]:
        """Mean and (biased) variance of ``x [.., D]`` over all leading axes; updates running averages."""
        axes = tuple(range(x.ndim - 1))
        mean = jnp.mean(x, axis=axes)
        var = jnp.mean(jnp.square(x - mean), axis=axes)
        if not self.is_initializing():
            m = self.momentum
            self.running_mean.value = m * self.running_mean.value + (1 - m) * jax.lax.stop_gradient(
                mean
            )
            self.running_var.value = m * self.running_var.value + (1 - m) * jax.lax.stop_gradient(
                var
            )
        return mean, var


def parity_mask(dim: int, block: int) -> jnp.ndarray:
    """``[dim]`` bool, True = passed through unchanged; even and odd blocks swap the halves."""
    return (jnp.arange(dim) + block) % 2 == 0


class ConditionalRealNVP(nn.Module):
    """Conditional RealNVP density ``p(x | cond)`` over ``x [.., D]`` (see the module docstring).

    Attributes:
      dim: event size D.
      num_blocks: coupling blocks K (with ``norm="batch"``, K - 1 batch-norm bijectors between them).
      hidden: width of each scale / translation net.
      num_layers: hidden layers per scale / translation net.
      activation: "tanh" or "relu".
      norm: "batch" (batch-norm bijector between blocks) or "none".
      max_log_scale: soft bound ``b`` on each coupling's log-scale, ``b * tanh(s / b)``.
      momentum: of the batch-norm running averages.
    """

    dim: int
    num_blocks: int = 12
    hidden: int = 2048
    num_layers: int = 5
    activation: str = "tanh"
    norm: str = "batch"
    max_log_scale: float = 2.0
    momentum: float = 0.95

    def setup(self):
        if self.activation not in ACTIVATIONS:
            raise ValueError(
                f"activation must be one of {sorted(ACTIVATIONS)}, got {self.activation!r}"
            )
        if self.norm not in NORMS:
            raise ValueError(f"norm must be one of {NORMS}, got {self.norm!r}")

        def net():
            return MLP(self.hidden, self.num_layers, self.dim, self.activation, zero_init_last=True)

        self.scale_nets = [net() for _ in range(self.num_blocks)]
        self.shift_nets = [net() for _ in range(self.num_blocks)]
        if self.norm == "batch":
            self.batch_norms = [
                BatchNormLayer(self.dim, self.momentum) for _ in range(self.num_blocks - 1)
            ]

    def _coupling(self, block: int, cond: jnp.ndarray | None) -> distrax.MaskedCoupling:
        """Block ``block``'s affine coupling; its conditioner sees ``[masked x, cond]``."""

        def conditioner(masked_x: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray]:
            inputs = masked_x
            if cond is not None:
                c = jnp.broadcast_to(cond, masked_x.shape[:-1] + cond.shape[-1:])
                inputs = jnp.concatenate([masked_x, c], axis=-1)
            raw = self.scale_nets[block](inputs)
            log_scale = self.max_log_scale * jnp.tanh(raw / self.max_log_scale)
            return self.shift_nets[block](inputs), log_scale

        def affine(params: tuple[jnp.ndarray, jnp.ndarray]) -> distrax.ScalarAffine:
            shift, log_scale = params
            return distrax.ScalarAffine(shift=shift, log_scale=log_scale)

        return distrax.MaskedCoupling(
            mask=parity_mask(self.dim, block), conditioner=conditioner, bijector=affine
        )

    def layers(self, cond: jnp.ndarray | None, train: bool) -> list[distrax.Bijector]:
        """The bijectors from the data side: ``[coupling_0, batch_norm_0, coupling_1, ...]``.

        Only usable while the module is bound (inside ``apply`` or a parent's method): the couplings'
        conditioners call this module's nets, and train-mode batch-norm writes its ``batch_stats``.
        """
        out: list[distrax.Bijector] = []
        for k in range(self.num_blocks):
            if k > 0 and self.norm == "batch":
                out.append(self.batch_norms[k - 1].bijector(train))
            out.append(self._coupling(k, cond))
        return out

    def bijector(self, cond: jnp.ndarray | None, train: bool) -> distrax.Chain:
        """The whole flow as one bijector; forward = generative ``z [.., D] -> x [.., D]``."""
        # distrax.Chain applies its last bijector first in `forward`, so the data side comes first.
        return distrax.Chain(self.layers(cond, train))

    def base(self) -> distrax.MultivariateNormalDiag:
        """The standard-normal base ``N(0, I_D)``."""
        return distrax.MultivariateNormalDiag(loc=jnp.zeros((self.dim,), jnp.float32))

    def log_prob(self, x: jnp.ndarray, cond: jnp.ndarray | None, train: bool) -> jnp.ndarray:
        """``log p(x | cond)``: ``x [B, D]``, ``cond [B, C]`` or None -> ``[B]``.

        ``train=True`` normalises with batch statistics and updates the running averages (make
        ``batch_stats`` mutable); ``train=False`` uses the running averages and writes nothing.
        """
        # Change of variables (Dinh et al. 2017, section 3.1). Not distrax.Transformed: its `sample` vmaps
        # the bijector over the sample axis, which would separate the rows from their conditions.
        z, log_det = self.bijector(cond, train).inverse_and_log_det(x)
        return self.base().log_prob(z) + log_det

    def sample(
        self, cond: jnp.ndarray | None, batch_shape: int | Sequence[int] | None = None, temperature: float = 1.0
    ) -> jnp.ndarray:
        """One draw per condition: ``cond [B, C] -> x [B, D]``; with ``cond=None``, ``batch_shape`` gives B.

        Base noise comes from ``self.make_rng("sample")``; batch-norm uses the running averages.
        ``temperature`` scales the base noise (Kingma & Dhariwal 2018, sec. 5): below 1 it trades
        calibration for sharper, more typical samples.
        """
        if cond is not None:
            shape = tuple(cond.shape[:-1])
        elif batch_shape is None:
            raise ValueError("ConditionalRealNVP.sample: pass cond or batch_shape")
        else:
            shape = (batch_shape,) if isinstance(batch_shape, int) else tuple(batch_shape)
        return self.forward(temperature * self.base_noise(shape), cond)

    def base_noise(self, batch_shape: Sequence[int]) -> jnp.ndarray:
        """Standard-normal base noise ``[*batch_shape, D]`` from ``self.make_rng("sample")``."""
        return jax.random.normal(self.make_rng("sample"), tuple(batch_shape) + (self.dim,), jnp.float32)

    def forward(self, z: jnp.ndarray, cond: jnp.ndarray | None) -> jnp.ndarray:
        """Generative map of given base noise ``z [B, D] -> x [B, D]`` (running statistics)."""
        return self.bijector(cond, train=False).forward(z)

    def forward_and_log_det(
        self, z: jnp.ndarray, cond: jnp.ndarray | None
    ) -> tuple[jnp.ndarray, jnp.ndarray]:
        """Generative map ``z [B, D] -> x [B, D]`` and ``log|det dx/dz| [B]`` (running statistics)."""
        return self.bijector(cond, train=False).forward_and_log_det(z)

    def inverse_and_log_det(
        self, x: jnp.ndarray, cond: jnp.ndarray | None, train: bool = False
    ) -> tuple[jnp.ndarray, jnp.ndarray]:
        """Normalising map ``x [B, D] -> z [B, D]`` and ``log|det dz/dx| [B]``."""
        return self.bijector(cond, train).inverse_and_log_det(x)
