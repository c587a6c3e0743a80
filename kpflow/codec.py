"""Keypoint packets on the wire: prediction, a decorrelating basis, quantisation, arithmetic coding.

A :class:`Sender` and a :class:`Receiver` exchange real ``bytes`` packets. Both run the same
deterministic predictor (any forecaster with the :data:`FramePredictor` interface; ``hold_last`` by
default) on the keypoints the receiver has reconstructed, so the sender always knows what the
receiver will show if it sends nothing:

- **predicted packets** carry the prediction residual, rotated into a fixed orthonormal basis (the
  principal directions of frame-to-frame motion on the fitting clips: keypoints move together, so a
  few directions hold most of it) and quantised there with a dead zone: components the receiver
  can do without are not sent at all;
- **intra packets** carry the quantised frame itself (relative to a fixed centre), so a receiver
  that lost packets resynchronises; the sender makes every ``intra_period``-th packet intra;
- the **policy** decides when to send: ``threshold`` sends only when the prediction would drift
  beyond ``threshold`` (mean absolute error, raw units) and at least every ``max_gap`` frames, and
  skips a frame whose residual quantises to nothing; ``schedule`` is the papers' fixed
  N-sent / M-forecast pattern; ``every_frame`` sends every frame.

Packet layout (every byte counts toward the bitrate): 1 header byte, then the payload.
- header: bit 7 = intra, bits 0-6 = sequence number mod 128 (a gap tells the receiver that packets
  were lost). The stream is frame-clocked: the receiver steps once per frame with the packet that
  arrived for it, so no frame index travels.
- payload: the D integer symbols, arithmetic-coded into whole bytes (:mod:`kpflow.arithmetic_coding`,
  often 0-4 bytes): residual components with one fitted histogram each, intra frames with a
  quantised Laplace model per dimension; these models, the basis and the centre are codec
  parameters shared once, like a codebook. A residual too large for its histogram goes intra.

A receiver that detects a lost packet ignores predicted packets until the next intra one and keeps
forecasting in the meantime; it never stops producing frames, whatever bytes arrive.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import numpy as np

from kpflow import arithmetic_coding

HEADER_BYTES = 1
INTRA_FLAG = 0x80  # header bit 7
SEQ_MODULO = 128  # header bits 0-6
MAX_SYMBOL = 2**15 - 1
POLICIES = ("threshold", "schedule", "every_frame")
BASES = ("pca", "identity")

# Fitting the entropy models.
# LaplaceModel needs a positive scale: a dimension whose fitting symbols were all 0 gets this one,
# which gives 0 nearly all the probability (1 - e^-10) and keeps every other symbol codable.
MIN_LAPLACE_SCALE = 0.05
# Residual symbols the histograms code lie in [-HISTOGRAM_RADIUS, HISTOGRAM_RADIUS] (31 bins a
# dimension, a small table); a frame with a larger residual goes intra (CategoricalCoder.fits).
HISTOGRAM_RADIUS = 15
# Added to every histogram count (additive smoothing), so a symbol never seen while fitting stays
# codable at a few more bits instead of impossible.
HISTOGRAM_PSEUDOCOUNT = 0.05
# Residual components within DEADZONE steps quantise to 0: 0.5 is plain rounding. A dead zone of
# MAX_DEADZONE or more is refused: it would drop components of one and a half steps and more.
DEADZONE = 0.5
MAX_DEADZONE = 1.5

# The sender's defaults: a packet at least every second and an intra packet every 30 packets (at
# FPS), the papers' 6 sent / 6 forecast schedule, and a drift threshold in raw keypoint units.
DEFAULT_THRESHOLD = 0.02
DEFAULT_INTRA_PERIOD = 30
DEFAULT_MAX_GAP = 30
PAPER_NUM_OBSERVED, PAPER_HORIZON = 6, 6
FPS = 30.0

# ``predict(history [t, D]) -> [D]``: the next frame from the receiver's reconstructed frames so far
# (t >= 1). Must be deterministic: sender and receiver run it independently.
FramePredictor = Callable[[np.ndarray], np.ndarray]


def hold_last(history: np.ndarray) -> np.ndarray:
    """The next frame repeats the last reconstructed one."""
    return history[-1]


# -- quantisation and entropy coding ---------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Quantizer:
    """Uniform per-dimension quantiser with an optional dead zone.

    ``symbol = round(x / step)``, but 0 wherever ``|x| <= deadzone * step``; reconstruction error is
    at most ``max(deadzone, 1/2) * step``. A dead zone above 1/2 trades a little error for many more
    zero symbols, which are nearly free.
    """

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

    def symbols(self, x: np.ndarray, deadzone: float = DEADZONE) -> np.ndarray:
        x = np.asarray(x, np.float64)
        q = np.where(np.abs(x) > deadzone * self.step, np.round(x / self.step), 0.0)
        if np.any(np.abs(q) > MAX_SYMBOL):
            raise ValueError(f"a value needs more than {MAX_SYMBOL} quantisation steps; use a coarser step or an intra packet")
        return q.astype(np.int32)

    def values(self, symbols: np.ndarray) -> np.ndarray:
        return np.asarray(symbols, np.float64) * self.step


@dataclasses.dataclass(frozen=True)
class LaplaceCoder:
    """Arithmetic coding of ``[D]`` integer symbols with a zero-mean quantised Laplace model per dimension."""

    scale: np.ndarray  # [D] Laplace scales, in symbols

    def __post_init__(self):
        scale = np.maximum(np.asarray(self.scale, np.float64), MIN_LAPLACE_SCALE)
        object.__setattr__(self, "scale", scale)
        object.__setattr__(self, "_models", tuple(arithmetic_coding.LaplaceModel(float(s), MAX_SYMBOL) for s in scale))

    @classmethod
    def fit(cls, symbols: np.ndarray) -> LaplaceCoder:
        """Maximum-likelihood scales (mean absolute symbol) from example symbols ``[n, D]``."""
        return cls(np.mean(np.abs(np.asarray(symbols, np.float64)), axis=0))

    def encode(self, symbols: np.ndarray) -> bytes:
        return arithmetic_coding.encode(np.asarray(symbols).tolist(), self._models)

    def decode(self, payload: bytes) -> np.ndarray:
        return np.asarray(arithmetic_coding.decode(payload, self._models), np.int32)


@dataclasses.dataclass(frozen=True)
class CategoricalCoder:
    """Arithmetic coding of ``[D]`` symbols in ``[-radius, radius]`` with one fitted histogram per dimension.

    Closer to an ideal order-0 coder than a parametric model: quantised residuals are mostly 0 with
    heavy, dimension-dependent tails. Symbols outside the radius cannot be coded (:meth:`fits`); the
    sender then sends an intra packet instead.
    """

    probabilities: np.ndarray  # [D, 2 radius + 1], rows sum to 1

    def __post_init__(self):
        r = self.radius
        models = tuple(arithmetic_coding.TableModel.from_probabilities(p, -r) for p in np.asarray(self.probabilities))
        object.__setattr__(self, "_models", models)

    @property
    def radius(self) -> int:
        return (self.probabilities.shape[1] - 1) // 2

    @classmethod
    def fit(cls, symbols: np.ndarray, radius: int = HISTOGRAM_RADIUS, alpha: float = HISTOGRAM_PSEUDOCOUNT
            ) -> CategoricalCoder:
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
        return arithmetic_coding.encode(np.asarray(symbols).tolist(), self._models)

    def decode(self, payload: bytes) -> np.ndarray:
        return np.asarray(arithmetic_coding.decode(payload, self._models), np.int32)


def motion_basis(series: Sequence[np.ndarray], predict: FramePredictor = hold_last) -> np.ndarray:
    """Orthonormal ``[D, D]`` basis, columns = principal directions of prediction residuals, largest first."""
    residuals = np.stack([s[t] - predict(s[:t]) for s in series for t in range(1, len(s))]).astype(np.float64)
    eigenvalues, vectors = np.linalg.eigh(residuals.T @ residuals / len(residuals))
    vectors = vectors[:, np.argsort(eigenvalues)[::-1]]
    # eigh's signs are arbitrary; fix them so the same data always gives the same basis.
    return vectors * np.where(vectors[np.argmax(np.abs(vectors), axis=0), np.arange(len(vectors))] < 0, -1.0, 1.0)


@dataclasses.dataclass(frozen=True)
class CodecParams:
    """Shared once between sender and receiver (not per frame): quantiser, basis, models and intra centre."""

    quantizer: Quantizer
    predicted: CategoricalCoder  # residual components (in ``basis``) against the prediction
    intra: LaplaceCoder  # frames against ``centre``, per dimension
    centre: np.ndarray  # [D]
    basis: np.ndarray  # [D, D] orthonormal columns
    deadzone: float = DEADZONE  # of predicted residual components, in steps

    @classmethod
    def fit(cls, series: list[np.ndarray], step: float | np.ndarray, predict: FramePredictor = hold_last, *,
            basis: str = "pca", deadzone: float = DEADZONE) -> CodecParams:
        """Fit basis and entropy models on training clips ``[T, D]`` (residuals of ``predict`` on true history).

        The residual histograms fitted here are those of sending every frame; :meth:`fit_to_policy`
        refits them to what a sparse policy actually sends.
        """
        if not series:
            raise ValueError("CodecParams.fit needs at least one training clip")
        if basis not in BASES:
            raise ValueError(f"basis must be one of {BASES}; got {basis!r}")
        if not 0 <= deadzone < MAX_DEADZONE:
            raise ValueError(f"deadzone must be in [0, {MAX_DEADZONE}) steps; got {deadzone}")
        series = [np.asarray(s, np.float64) for s in series]
        dim = series[0].shape[1]
        q = Quantizer(np.broadcast_to(np.asarray(step, np.float64), (dim,)).copy())
        centre = np.median(np.concatenate(series), axis=0).astype(np.float32)
        rotation = motion_basis(series, predict) if basis == "pca" else np.eye(dim)
        residuals = np.stack([s[t] - predict(s[:t]) for s in series for t in range(1, len(s))])
        return cls(
            quantizer=q,
            predicted=CategoricalCoder.fit(q.symbols(residuals @ rotation, deadzone)),
            intra=LaplaceCoder.fit(q.symbols(np.concatenate(series) - centre)),
            centre=centre,
            basis=rotation,
            deadzone=float(deadzone),
        )

    def fit_to_policy(self, series: list[np.ndarray], predict: FramePredictor = hold_last, **sender_kwargs) -> CodecParams:
        """Refit the residual histograms to the predicted packets a Sender with ``sender_kwargs`` sends for ``series``."""
        sent = []
        for s in series:
            sender = Sender(self, predict, **sender_kwargs)
            for x in np.asarray(s, np.float32):
                sender.step(x)
                if sender.last_symbols is not None:
                    sent.append(sender.last_symbols)
        if not sent:
            return self
        return dataclasses.replace(self, predicted=CategoricalCoder.fit(np.stack(sent), self.predicted.radius))

    def residual_symbols(self, residual: np.ndarray) -> np.ndarray:
        """``residual [D]`` (raw units) -> its quantised components in the basis ``[D]``."""
        return self.quantizer.symbols(np.asarray(residual, np.float64) @ self.basis, self.deadzone)

    def residual_values(self, symbols: np.ndarray) -> np.ndarray:
        """Quantised basis components ``[D]`` -> the residual they stand for, raw units ``[D]``."""
        return self.basis @ self.quantizer.values(symbols)


# -- sender and receiver ---------------------------------------------------------------------------


def _header(seq: int, intra: bool) -> bytes:
    return bytes([(INTRA_FLAG if intra else 0) | (seq % SEQ_MODULO)])


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
                raise ValueError(f"a packet has at least {HEADER_BYTES} header byte; got {len(packet)}")
            intra, seq = bool(packet[0] & INTRA_FLAG), packet[0] % SEQ_MODULO
            if self.expected_seq is not None and seq != self.expected_seq:
                self.synced = False  # packets were lost: predicted packets no longer apply
            self.expected_seq = (seq + 1) % SEQ_MODULO
            payload = packet[HEADER_BYTES:]
            if intra:
                frame = p.centre + p.quantizer.values(p.intra.decode(payload))
                self.synced = True
            elif self.synced:
                frame = frame + p.residual_values(p.predicted.decode(payload))
        self.history.append(np.asarray(frame, np.float32))
        return self.history[-1]


class Sender:
    """Decides per frame whether to send, and what; mirrors the receiver to know its prediction."""

    def __init__(self, params: CodecParams, predict: FramePredictor = hold_last, policy: str = "threshold", *,
                 threshold: float = DEFAULT_THRESHOLD, num_observed: int = PAPER_NUM_OBSERVED,
                 horizon: int = PAPER_HORIZON, intra_period: int = DEFAULT_INTRA_PERIOD, max_gap: int = DEFAULT_MAX_GAP):
        if policy not in POLICIES:
            raise ValueError(f"policy must be one of {POLICIES}; got {policy!r}")
        if max_gap < 1:
            raise ValueError(f"max_gap must be >= 1 frame; got {max_gap}")
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
        self.last_symbols: np.ndarray | None = None  # residual symbols of the last frame's predicted packet

    def _must_send(self) -> bool:
        """Sent whatever the frame holds: the first frame, every frame, the schedule's, a keep-alive."""
        if self.frame == 0 or self.policy == "every_frame":
            return True
        if self.policy == "schedule":
            return self.frame % (self.num_observed + self.horizon) < self.num_observed
        return self.frame - self.last_sent >= self.max_gap

    def step(self, x: np.ndarray) -> bytes | None:
        """The packet for frame ``x [D]`` (raw keypoints), or None when nothing is sent."""
        p = self.params
        x = np.asarray(x, np.float32)
        prediction = self.mirror.prediction()
        must = self._must_send()
        packet, self.last_symbols = None, None
        if must or (self.policy == "threshold" and float(np.mean(np.abs(x - prediction))) > self.threshold):
            symbols = p.residual_symbols(x - prediction)
            intra = self.seq % self.intra_period == 0 or not p.predicted.fits(symbols)
            if intra:
                packet = _header(self.seq, True) + p.intra.encode(p.quantizer.symbols(x - p.centre))
            elif must or np.any(symbols):  # a residual that quantises to nothing is not worth a packet
                packet = _header(self.seq, False) + p.predicted.encode(symbols)
                self.last_symbols = symbols
        if packet is not None:
            self.seq += 1
            self.last_sent = self.frame
        self.mirror.step(packet)
        self.frame += 1
        return packet


def transmit(series: np.ndarray, params: CodecParams, predict: FramePredictor = hold_last, *, fps: float = FPS,
             loss: np.ndarray | None = None, **sender_kwargs) -> dict:
    """Send ``series [T, D]`` through a Sender and a Receiver; ``loss [T]`` (bool) drops packets.

    Returns ``{"reconstruction" [T, D], "bytes", "header_bytes", "packets", "intra_packets", "kbps",
    "mae_raw"}``: ``bytes`` counts every byte of every packet sent (headers included, lost ones too);
    ``kbps`` at ``fps``.
    """
    series = np.asarray(series, np.float32)
    if series.ndim != 2 or series.shape[1] != params.quantizer.dim:
        raise ValueError(f"series must be [T, {params.quantizer.dim}]; got {series.shape}")
    sender = Sender(params, predict, **sender_kwargs)
    receiver = Receiver(params, predict)
    total, packets, intra, out = 0, 0, 0, []
    for t, x in enumerate(series):
        packet = sender.step(x)
        if packet is not None:
            total += len(packet)
            packets += 1
            intra += bool(packet[0] & INTRA_FLAG)
            if loss is not None and loss[t]:
                packet = None
        out.append(receiver.step(packet))
    rec = np.stack(out)
    seconds = len(series) / fps
    return {
        "reconstruction": rec,
        "bytes": total,
        "header_bytes": packets * HEADER_BYTES,
        "packets": packets,
        "intra_packets": intra,
        "kbps": total * 8 / seconds / 1000.0,  # bits per byte, bits per kilobit
        "mae_raw": float(np.mean(np.abs(rec - series))),
    }
