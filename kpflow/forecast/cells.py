"""Recurrent cells and dense layers whose matrix products can run in a lower precision.

``matmul_dtype="bfloat16"`` multiplies bfloat16 operands and accumulates in float32 (the default
precision of TPU matrix units); everything else (activations, the recurrent state, parameters)
stays float32. On a CPU with AVX512-BF16 each product of the authors'-size VRNN is about 1.5x
faster, and sampling as a whole 1.05-1.25x (``python -m eval.bench forecast --dtypes
float32,bfloat16``); on GPUs and TPUs it uses the bf16 units. ``None`` or ``"float32"`` is
ordinary float32 arithmetic.

:class:`GRUCell` has exactly the parameters of ``flax.linen.GRUCell`` (``ir``, ``iz``, ``in`` with
biases; ``hr``, ``hz`` without; ``hn`` with), so checkpoints move between the two.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import flax.linen as nn
import jax.numpy as jnp
from jax import lax

MATMUL_DTYPES = ("float32", "bfloat16")


def check_matmul_dtype(matmul_dtype: str | None) -> None:
    if matmul_dtype not in (None,) + MATMUL_DTYPES:
        raise ValueError(f"matmul_dtype must be one of {MATMUL_DTYPES}, got {matmul_dtype!r}")


def mixed_dot_general(matmul_dtype: str | None):
    """A ``dot_general`` for ``nn.Dense``: operands cast to ``matmul_dtype``, float32 result.

    Returns None (Flax's default float32 product) for None / "float32".
    """
    check_matmul_dtype(matmul_dtype)
    if matmul_dtype in (None, "float32"):
        return None
    dtype = jnp.dtype(matmul_dtype)

    def dot_general(lhs, rhs, dimension_numbers, precision=None, preferred_element_type=None):
        return lax.dot_general(lhs.astype(dtype), rhs.astype(dtype), dimension_numbers, precision=precision,
                               preferred_element_type=jnp.float32)

    return dot_general


def dense(features: int, matmul_dtype: str | None = None, **kwargs) -> nn.Dense:
    """``nn.Dense`` with its product in ``matmul_dtype`` (see :func:`mixed_dot_general`)."""
    return nn.Dense(features, dot_general=mixed_dot_general(matmul_dtype), **kwargs)


class SplitDense(nn.Module):
    """``nn.Dense`` of the concatenation of several inputs, without concatenating them.

    ``SplitDense(f)(a, b)`` equals ``nn.Dense(f)(concatenate([a, b], -1))`` and has exactly its
    parameters (``kernel [A + B, f]`` and ``bias``, the same initialisers, so the same values from
    the same key): it computes ``a @ kernel[:A] + b @ kernel[A:] + bias``. A part whose input is
    shared keeps its own product: under ``vmap`` over samples, an input that does not vary with the
    sample (the recurrent state before the first sampled step) is multiplied once for all samples,
    and the same part in two calls (the equivariant VRNN's ``[h, z]`` and ``[h, -z]``) is one product
    after XLA's common-subexpression pass.
    """

    features: int
    matmul_dtype: str | None = None
    kernel_init: Callable = nn.initializers.lecun_normal()
    bias_init: Callable = nn.initializers.zeros_init()

    @nn.compact
    def __call__(self, *inputs):
        sizes = [x.shape[-1] for x in inputs]
        kernel = self.param("kernel", self.kernel_init, (sum(sizes), self.features), jnp.float32)
        bias = self.param("bias", self.bias_init, (self.features,), jnp.float32)
        dot = mixed_dot_general(self.matmul_dtype) or lax.dot_general
        out, start = bias, 0
        for x, n in zip(inputs, sizes):
            out = out + dot(x, kernel[start : start + n], (((x.ndim - 1,), (0,)), ((), ())))
            start += n
        return out


class GRUCell(nn.Module):
    """``flax.linen.GRUCell`` (same equations, parameter names and initialisers) with ``matmul_dtype``."""

    features: int
    matmul_dtype: str | None = None

    @nn.compact
    def __call__(self, carry, inputs):
        h = carry
        dot = mixed_dot_general(self.matmul_dtype)
        dense_i = partial(nn.Dense, self.features, use_bias=True, dot_general=dot,
                          kernel_init=nn.initializers.lecun_normal(), bias_init=nn.initializers.zeros_init())
        dense_h = partial(nn.Dense, self.features, use_bias=False, dot_general=dot,
                          kernel_init=nn.initializers.orthogonal(), bias_init=nn.initializers.zeros_init())
        r = nn.sigmoid(dense_i(name="ir")(inputs) + dense_h(name="hr")(h))
        z = nn.sigmoid(dense_i(name="iz")(inputs) + dense_h(name="hz")(h))
        n = jnp.tanh(dense_i(name="in")(inputs) + r * dense_h(name="hn", use_bias=True)(h))
        new_h = (1.0 - z) * n + z * h
        return new_h, new_h
