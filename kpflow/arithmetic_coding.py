"""Exact arithmetic coding into whole bytes, for short packets.

Range coders that emit 32-bit words (``constriction``'s) spend up to 4 bytes on a packet's last word;
at 10-30 packets per second that alone is a kilobit per second. Here the coder keeps the interval
exactly, as Python integers (a packet holds tens of symbols, so they stay a few hundred bits long),
and ends with the *shortest* byte string whose value, read as the binary fraction ``0.b1 b2 ...``
and padded with zero bits, falls inside the final interval. That costs under one byte over the
information content, and a packet whose symbols all sit at the bottom of their models is zero bytes.

A **model** gives, for each symbol, integer cumulative frequencies out of ``2**precision``:
``cdf(k)`` for ``k`` in ``[low, high + 1]``, strictly increasing (every symbol codable).
:class:`TableModel` holds them in a table; :class:`LaplaceModel` computes them. Encoder and decoder
must use the same models in the same order; the decoder is told how many symbols to read.
Any byte string decodes to *some* symbols (it never fails), which keeps a damaged packet harmless.
"""

from __future__ import annotations

import bisect
import dataclasses
import math
from collections.abc import Sequence

import numpy as np


@dataclasses.dataclass(frozen=True)
class TableModel:
    """Symbols ``low .. low + n - 1`` with cumulative frequencies ``cdf [n + 1]`` (0 .. 2**precision)."""

    low: int
    cdf: tuple[int, ...]
    precision: int

    @classmethod
    def from_probabilities(cls, probabilities: np.ndarray, low: int, precision: int = 16) -> TableModel:
        """Quantise ``probabilities [n]`` (> 0 or not) so that every symbol keeps a frequency >= 1."""
        p = np.asarray(probabilities, np.float64)
        total = 1 << precision
        if p.ndim != 1 or len(p) == 0 or len(p) >= total or not np.all(p >= 0) or p.sum() <= 0:
            raise ValueError(f"need [n] non-negative probabilities, 0 < n < 2**{precision}; got shape {p.shape}")
        freq = 1 + np.floor(p / p.sum() * (total - len(p))).astype(np.int64)
        freq[np.argmax(freq)] += total - int(freq.sum())  # rounding slack to the likeliest symbol
        return cls(int(low), tuple(int(c) for c in np.concatenate([[0], np.cumsum(freq)])), precision)

    @property
    def high(self) -> int:
        return self.low + len(self.cdf) - 2

    def interval(self, symbol: int) -> tuple[int, int]:
        i = symbol - self.low
        return self.cdf[i], self.cdf[i + 1]

    def find(self, target: int) -> int:
        """The symbol whose interval holds ``target`` in ``[0, 2**precision)``."""
        return self.low + bisect.bisect_right(self.cdf, target) - 1


@dataclasses.dataclass(frozen=True)
class LaplaceModel:
    """Integers ``[-bound, bound]`` under a zero-mean Laplace of ``scale``, discretised at the half-integers.

    Every symbol keeps frequency >= 1; the tails beyond the bound fold into the end symbols. The
    frequencies are computed on demand, so a wide alphabet costs no table.
    """

    scale: float
    bound: int
    precision: int = 24

    def __post_init__(self):
        if not self.scale > 0 or not 0 < 2 * self.bound + 1 < 1 << self.precision:
            raise ValueError(f"LaplaceModel needs scale > 0 and 2 bound + 1 < 2**precision; got {self.scale}, {self.bound}")

    def cdf(self, k: int) -> int:
        """Cumulative frequency of the symbols below ``k``, for ``k`` in ``[-bound, bound + 1]``."""
        if k <= -self.bound:
            mass = 0.0
        elif k > self.bound:
            mass = 1.0
        else:
            x = k - 0.5
            mass = 0.5 * math.exp(x / self.scale) if x < 0 else 1.0 - 0.5 * math.exp(-x / self.scale)
        spare = (1 << self.precision) - (2 * self.bound + 1)
        return (k + self.bound) + math.floor(mass * spare)

    @property
    def low(self) -> int:
        return -self.bound

    @property
    def high(self) -> int:
        return self.bound

    def interval(self, symbol: int) -> tuple[int, int]:
        return self.cdf(symbol), self.cdf(symbol + 1)

    def find(self, target: int) -> int:
        lo, hi = -self.bound, self.bound  # invariant: cdf(lo) <= target < cdf(hi + 1)
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if self.cdf(mid) <= target:
                lo = mid
            else:
                hi = mid - 1
        return lo


Model = TableModel | LaplaceModel


def encode(symbols: Sequence[int], models: Sequence[Model]) -> bytes:
    """Symbols ``[n]`` (each inside its model's range), one model each -> the shortest byte string."""
    if len(symbols) != len(models):
        raise ValueError(f"one model per symbol: {len(symbols)} symbols, {len(models)} models")
    low, width, bits = 0, 1, 0  # the interval [low, low + width) / 2**bits
    for s, m in zip(symbols, models):
        s = int(s)
        if not m.low <= s <= m.high:
            raise ValueError(f"symbol {s} is outside its model's range [{m.low}, {m.high}]")
        c_lo, c_hi = m.interval(s)
        low = (low << m.precision) + width * c_lo
        width *= c_hi - c_lo
        bits += m.precision
    for num_bytes in range((bits + 7) // 8 + 1):
        shift = bits - 8 * num_bytes
        if shift <= 0:
            return (low << -shift).to_bytes(num_bytes, "big")
        value = -((-low) >> shift)  # ceil(low / 2**shift): the smallest num_bytes-byte value >= low
        if value << shift < low + width:
            return value.to_bytes(num_bytes, "big")
    raise AssertionError("unreachable: the full-length value always lies in the interval")


def decode(payload: bytes, models: Sequence[Model]) -> list[int]:
    """The ``len(models)`` symbols that :func:`encode` wrote into ``payload`` (zero bits padded after it)."""
    value, value_bits = int.from_bytes(payload, "big"), 8 * len(payload)
    low, width, bits = 0, 1, 0
    out = []
    for m in models:
        # Where the value sits inside the current interval, on the model's 2**precision scale.
        target = ((value << (bits + m.precision)) - (low << (m.precision + value_bits))) // (width << value_bits)
        s = m.find(target)
        c_lo, c_hi = m.interval(s)
        low = (low << m.precision) + width * c_lo
        width *= c_hi - c_lo
        bits += m.precision
        out.append(s)
    return out
