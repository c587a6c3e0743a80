"""Keypoint packets on the wire: quantisation, prediction, entropy coding, a keyframe policy.

A :class:`Sender` and a :class:`Receiver` exchange real ``bytes`` packets, one per transmitted frame.
Both run the same deterministic predictor on the keypoints the receiver has reconstructed, so the
sender always knows what the receiver will show if it sends nothing:

- **predicted packets** carry the quantised difference between the frame and that prediction;
- **intra packets** carry the quantised frame itself (relative to a fixed centre), so a receiver
  that lost packets resynchronises; the sender makes every ``intra_period``-th packet intra;
- the **policy** decides when to send: ``threshold`` sends only when the prediction would drift
  beyond ``threshold`` (mean absolute error, raw units) and at least every ``max_gap`` frames;
  ``schedule`` is the papers' fixed N-sent / M-forecast pattern.

Packet layout (every byte counts toward the bitrate): 2 header bytes, then the payload.
- byte 0: sequence number mod 256 (a gap tells the receiver that packets were lost);
- byte 1: bit 7 = intra, bits 0-6 = frame index mod 128 (``max_gap`` <= 127 keeps it unambiguous);
- payload: the D integer symbols, range-coded (``constriction``): residuals with one fitted
  histogram per dimension, intra frames with a quantised Laplace model; these models are codec
  parameters shared once, like a codebook. A residual too large for its histogram goes intra.

A receiver that detects a lost packet ignores predicted packets until the next intra one and keeps
forecasting in the meantime; it never stops producing frames.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np

HEADER_BYTES = 2
MAX_SYMBOL = 2**15 - 1
MAX_GAP = 127
POLICIES = ("threshold", "schedule", "every_frame")

# ``predict(history [t, D]) -> [D]``: the next frame from the receiver's reconstructed frames so far
# (t >= 1). Must be deterministic: sender and receiver run it independently.
FramePredictor = Callable[[np.ndarray], np.ndarray]


def hold_last(history: np.ndarray) -> np.ndarray:
    """The next frame repeats the last reconstructed one."""
    return history[-1]


def _constriction():
    try:
        import constriction
    except ImportError:  # pragma: no cover - a dependency; the message says how to fix it
        raise ImportError("kpflow.codec needs the 'constriction' package: pip install -e . (or pip install constriction)") from None
    return constriction


# -- quantisation and entropy coding ---------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Quantizer:
    """Uniform per-dimension quantiser: ``symbol = round(x / step)``; reconstruction error <= step / 2."""

    step: np.ndarray  # [D] > 0, raw keypoint units

    def __post_init__(self):
        step = np.asarray(self.step, np.float64)
        if step.ndim != 1 or not np.all(step > 0) or not np.all(np.isfinite(step)):
            raise ValueError(f"quantiser steps must be a [D] array of positive numbers; got {np.asarray(self.step)!r}")
        object.__setattr__(self, "step", step)

    @classmethod
    def uniform(cls, step: float, dim: int) -> Quantizer:
        return cls(np.full(dim, float(step)))

    @property
    def dim(self) -> int:
        return self.step.shape[0]

    def symbols(self, x: np.ndarray) -> np.ndarray:
        q = np.round(np.asarray(x, np.float64) / self.step)
        if np.any(np.abs(q) > MAX_SYMBOL):
            raise ValueError(f"a value needs more than {MAX_SYMBOL} quantisation steps; use a coarser step or an intra packet")
        return q.astype(np.int32)

    def values(self, symbols: np.ndarray) -> np.ndarray:
        return (np.asarray(symbols, np.float64) * self.step).astype(np.float32)


@dataclasses.dataclass(frozen=True)
class LaplaceCoder:
    """Range coding of ``[D]`` integer symbols with a zero-mean quantised Laplace model per dimension."""

    scale: np.ndarray  # [D] Laplace scales, in symbols

    def __post_init__(self):
        object.__setattr__(self, "scale", np.maximum(np.asarray(self.scale, np.float64), 0.05))

    @classmethod
    def fit(cls, symbols: np.ndarray) -> LaplaceCoder:
        """Maximum-likelihood scales (mean absolute symbol) from example symbols ``[n, D]``."""
        return cls(np.mean(np.abs(np.asarray(symbols, np.float64)), axis=0))

    def encode(self, symbols: np.ndarray) -> bytes:
        c = _constriction()
        model = c.stream.model.QuantizedLaplace(-MAX_SYMBOL, MAX_SYMBOL)
        encoder = c.stream.queue.RangeEncoder()
        encoder.encode(np.asarray(symbols, np.int32), model, np.zeros(len(self.scale)), self.scale)
        return encoder.get_compressed().tobytes()

    def decode(self, payload: bytes) -> np.ndarray:
        c = _constriction()
        model = c.stream.model.QuantizedLaplace(-MAX_SYMBOL, MAX_SYMBOL)
        decoder = c.stream.queue.RangeDecoder(np.frombuffer(payload, np.uint32).copy())
        return np.asarray(decoder.decode(model, np.zeros(len(self.scale)), self.scale), np.int32)


@dataclasses.dataclass(frozen=True)
class CategoricalCoder:
    """Range coding of ``[D]`` symbols in ``[-radius, radius]`` with one fitted histogram per dimension.

    Closer to an ideal order-0 coder than a parametric model: prediction residuals are mostly 0 with
    heavy, dimension-dependent tails. Symbols outside the radius cannot be coded (:meth:`fits`); the
    sender then sends an intra packet instead.
    """

    probabilities: np.ndarray  # [D, 2 radius + 1], rows sum to 1

    @property
    def radius(self) -> int:
        return (self.probabilities.shape[1] - 1) // 2

    @classmethod
    def fit(cls, symbols: np.ndarray, radius: int = 15, alpha: float = 0.05) -> CategoricalCoder:
        """Histograms of example symbols ``[n, D]`` with ``alpha`` added to every count (unseen symbols stay codable)."""
        symbols = np.asarray(symbols, np.int64)
        counts = np.full((symbols.shape[1], 2 * radius + 1), float(alpha))
        inside = np.abs(symbols) <= radius
        for d in range(symbols.shape[1]):
            np.add.at(counts[d], symbols[inside[:, d], d] + radius, 1.0)
        return cls(counts / counts.sum(axis=1, keepdims=True))

    def fits(self, symbols: np.ndarray) -> bool:
        return bool(np.all(np.abs(symbols) <= self.radius))

    def encode(self, symbols: np.ndarray) -> bytes:
        c = _constriction()
        encoder = c.stream.queue.RangeEncoder()
        model = c.stream.model.Categorical(perfect=False)
        encoder.encode(np.asarray(symbols, np.int32) + self.radius, model, self.probabilities)
        return encoder.get_compressed().tobytes()

    def decode(self, payload: bytes) -> np.ndarray:
        c = _constriction()
        decoder = c.stream.queue.RangeDecoder(np.frombuffer(payload, np.uint32).copy())
        model = c.stream.model.Categorical(perfect=False)
        return np.asarray(decoder.decode(model, self.probabilities), np.int32) - self.radius


@dataclasses.dataclass(frozen=True)
class CodecParams:
    """Shared once between sender and receiver (not per frame): quantiser, models and intra centre."""

    quantizer: Quantizer
    predicted: CategoricalCoder  # residuals against the prediction
    intra: LaplaceCoder  # frames against ``centre``
    centre: np.ndarray  # [D]

    @classmethod
    def fit(cls, series: list[np.ndarray], step: float | np.ndarray, predict: FramePredictor = hold_last) -> CodecParams:
        """Fit the entropy models on training clips ``[T, D]`` (residuals of ``predict`` on true history)."""
        if not series:
            raise ValueError("CodecParams.fit needs at least one training clip")
        dim = series[0].shape[1]
        q = Quantizer(np.broadcast_to(np.asarray(step, np.float64), (dim,)).copy())
        centre = np.median(np.concatenate(series), axis=0).astype(np.float32)
        residuals = [s[t] - predict(s[:t]) for s in series for t in range(1, len(s))]
        return cls(
            quantizer=q,
            predicted=CategoricalCoder.fit(q.symbols(np.stack(residuals))),
            intra=LaplaceCoder.fit(q.symbols(np.concatenate(series) - centre)),
            centre=centre,
        )


# -- sender and receiver ---------------------------------------------------------------------------


def _header(seq: int, intra: bool, frame: int) -> bytes:
    return bytes([seq % 256, (0x80 if intra else 0) | (frame % 128)])


class Receiver:
    """Rebuilds the keypoint series from packets; forecasts every frame it gets no packet for."""

    def __init__(self, params: CodecParams, predict: FramePredictor = hold_last, first_frame: np.ndarray | None = None):
        self.params = params
        self.predict = predict
        self.history: list[np.ndarray] = []
        self.expected_seq: int | None = None
        self.synced = False
        self.first_frame = first_frame

    def prediction(self) -> np.ndarray:
        if not self.history:
            return self.params.centre.copy() if self.first_frame is None else np.asarray(self.first_frame, np.float32)
        return np.asarray(self.predict(np.stack(self.history)), np.float32)

    def step(self, packet: bytes | None) -> np.ndarray:
        """Advance one frame with the packet received for it (None: nothing arrived) -> ``[D]``."""
        p = self.params
        frame = self.prediction()
        if packet is not None:
            if len(packet) < HEADER_BYTES:
                raise ValueError(f"a packet has at least {HEADER_BYTES} header bytes; got {len(packet)}")
            seq, flags = packet[0], packet[1]
            intra = bool(flags & 0x80)
            if self.expected_seq is not None and seq != self.expected_seq:
                self.synced = False  # packets were lost: predicted packets no longer apply
            self.expected_seq = (seq + 1) % 256
            symbols = (p.intra if intra else p.predicted).decode(packet[HEADER_BYTES:])
            if intra:
                frame = p.centre + p.quantizer.values(symbols)
                self.synced = True
            elif self.synced:
                frame = frame + p.quantizer.values(symbols)
        self.history.append(np.asarray(frame, np.float32))
        return self.history[-1]


class Sender:
    """Decides per frame whether to send, and what; mirrors the receiver to know its prediction."""

    def __init__(self, params: CodecParams, predict: FramePredictor = hold_last, policy: str = "threshold", *,
                 threshold: float = 0.02, num_observed: int = 6, horizon: int = 6, intra_period: int = 30,
                 max_gap: int = 30):
        if policy not in POLICIES:
            raise ValueError(f"policy must be one of {POLICIES}; got {policy!r}")
        if not 1 <= max_gap <= MAX_GAP:
            raise ValueError(f"max_gap must be in [1, {MAX_GAP}] (the header holds the frame index mod 128); got {max_gap}")
        if intra_period < 1:
            raise ValueError(f"intra_period must be >= 1; got {intra_period}")
        self.params = params
        self.policy = policy
        self.threshold = float(threshold)
        self.num_observed, self.horizon = int(num_observed), int(horizon)
        self.intra_period = int(intra_period)
        self.max_gap = int(max_gap)
        self.mirror = Receiver(params, predict)
        self.seq = 0
        self.frame = 0
        self.last_sent = -1

    def _should_send(self, x: np.ndarray, prediction: np.ndarray) -> bool:
        if self.frame == 0 or self.policy == "every_frame":
            return True
        if self.policy == "schedule":
            return self.frame % (self.num_observed + self.horizon) < self.num_observed
        if self.frame - self.last_sent >= self.max_gap:
            return True
        return float(np.mean(np.abs(x - prediction))) > self.threshold

    def step(self, x: np.ndarray) -> bytes | None:
        """The packet for frame ``x [D]`` (raw keypoints), or None when nothing is sent."""
        p = self.params
        x = np.asarray(x, np.float32)
        prediction = self.mirror.prediction()
        packet = None
        if self._should_send(x, prediction):
            intra = self.seq % self.intra_period == 0 or not p.predicted.fits(p.quantizer.symbols(x - prediction))
            residual = x - (p.centre if intra else prediction)
            coder = p.intra if intra else p.predicted
            packet = _header(self.seq, intra, self.frame) + coder.encode(p.quantizer.symbols(residual))
            self.seq += 1
            self.last_sent = self.frame
        self.mirror.step(packet)
        self.frame += 1
        return packet


def transmit(series: np.ndarray, params: CodecParams, predict: FramePredictor = hold_last, *, fps: float = 30.0,
             loss: np.ndarray | None = None, **sender_kwargs) -> dict:
    """Send ``series [T, D]`` through a Sender and a Receiver; ``loss [T]`` (bool) drops packets.

    Returns ``{"reconstruction" [T, D], "bytes", "packets", "kbps", "mae_raw"}``: ``bytes`` counts
    every byte of every packet sent (headers included, lost ones too); ``kbps`` at ``fps``.
    """
    series = np.asarray(series, np.float32)
    if series.ndim != 2 or series.shape[1] != params.quantizer.dim:
        raise ValueError(f"series must be [T, {params.quantizer.dim}]; got {series.shape}")
    sender = Sender(params, predict, **sender_kwargs)
    receiver = Receiver(params, predict)
    total, packets, out = 0, 0, []
    for t, x in enumerate(series):
        packet = sender.step(x)
        if packet is not None:
            total += len(packet)
            packets += 1
            if loss is not None and loss[t]:
                packet = None
        out.append(receiver.step(packet))
    rec = np.stack(out)
    seconds = len(series) / fps
    return {
        "reconstruction": rec,
        "bytes": total,
        "packets": packets,
        "kbps": total * 8 / seconds / 1000.0,
        "mae_raw": float(np.mean(np.abs(rec - series))),
    }
