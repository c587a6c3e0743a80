"""Packet channels for tests and evaluations: which packets a lossy network drops.

:func:`loss_pattern` draws a loss pattern with a long-run loss rate and a mean burst length, as in a
Gilbert-Elliott channel with a loss-free good state and an all-loss bad state: losses come in runs
whose lengths are geometric with the given mean. A mean burst of 1 (or less) means independent
losses. :class:`LossProcess` is the same channel drawn one packet at a time, for a live sender that
does not know how many packets it will send.
"""

from __future__ import annotations

import numpy as np


def check_loss(rate: float, burst: float) -> None:
    """ValueError (one line) unless ``rate`` in [0, 1) and ``burst`` >= 1 can make a channel."""
    if not 0 <= rate < 1:
        raise ValueError(f"loss rate must be in [0, 1); got {rate}")
    if not burst >= 1:
        raise ValueError(f"mean burst length must be >= 1 packet; got {burst}")
    if burst > 1 and rate / (burst * (1 - rate)) > 1:
        raise ValueError(f"a loss rate of {rate} needs a mean burst of at least {rate / (1 - rate):.3g} packets; got {burst}")


def loss_pattern(n: int, rate: float, burst: float = 1.0, rng: np.random.Generator | None = None) -> np.ndarray:
    """``[n]`` bool, True = lost: long-run share ``rate``, loss runs of mean length ``burst``."""
    check_loss(rate, burst)
    rng = np.random.default_rng() if rng is None else rng
    if rate == 0 or n == 0:
        return np.zeros(n, bool)
    if burst <= 1:
        return rng.random(n) < rate
    leave_bad = 1.0 / burst  # P(bad -> good): runs of mean length `burst`
    enter_bad = rate * leave_bad / (1 - rate)  # so that the bad state's stationary share is `rate`
    u = rng.random(n)
    lost = np.empty(n, bool)
    bad = rng.random() < rate
    for i in range(n):
        lost[i] = bad
        bad = u[i] >= leave_bad if bad else u[i] < enter_bad
    return lost


class LossProcess:
    """The channel of :func:`loss_pattern`, one packet at a time: ``lost()`` -> True when the next
    packet is dropped. Long-run share ``rate``, loss runs of mean length ``burst`` (1: independent).

    It starts in its stationary state (bad with probability ``rate``), so the first packets are lost
    as often as later ones. ValueError (one line) for a rate and burst no channel has (:func:`check_loss`).
    """

    def __init__(self, rate: float, burst: float = 1.0, rng: np.random.Generator | None = None):
        check_loss(rate, burst)
        self.rate, self.burst = float(rate), float(burst)
        self.rng = np.random.default_rng() if rng is None else rng
        self.bad = self.rate > 0 and bool(self.rng.random() < self.rate)

    def lost(self) -> bool:
        if self.rate == 0:
            return False
        if self.burst <= 1:
            return bool(self.rng.random() < self.rate)
        lost = self.bad
        u = self.rng.random()
        leave_bad = 1.0 / self.burst
        self.bad = bool(u >= leave_bad) if self.bad else bool(u < self.rate * leave_bad / (1 - self.rate))
        return lost
