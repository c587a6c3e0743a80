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
  arrived for it (or none), so no frame index travels.
- intra packets only: a 2-byte CRC-16 of the header and payload (they are rare, and a receiver
  resynchronises on them, so a damaged one must not pass).
- payload: the D integer symbols, arithmetic-coded into whole bytes (:mod:`kpflow.arithmetic_coding`,
  often 0-4 bytes): residual components with one fitted histogram each, intra frames with a
  quantised Laplace model per dimension; these models, the basis, the centre and the frame range
  are codec parameters shared once, like a codebook (:meth:`CodecParams.to_arrays`). A residual too
  large for its histogram goes intra.

Robustness (the receiver never stops producing frames, whatever bytes arrive or do not):
- **bounded frames**: every frame the receiver shows lies within the fitted range
  (:attr:`CodecParams.low` .. :attr:`CodecParams.high`: the fitting clips' range widened by
  :data:`RANGE_MARGIN` of its span on each side). Predictions are clipped into it (on both sides, so
  sender and receiver agree); a decoded frame outside it is rejected and the receiver waits for an
  intra packet;
- **junk is a no-op**: an empty packet, an intra packet whose CRC fails, or a payload that is not the
  coder's own (shortest) encoding of the symbols it decodes to, is ignored as if nothing had
  arrived. A predicted packet with an unexpected sequence number is held as a suspect, not applied:
  if a later packet carries the sequence number that was expected, it was junk and the stream goes
  on; if the next one continues the suspect's number, packets were lost. (Random bytes pass as a real predicted packet only when they also carry the
  next sequence number, about 1 in 256; the damage then lasts until the next intra packet.)
- **loss detection that a wrap cannot fool**: the sender sends at least every ``max_gap`` frames and
  an intra packet at least every ``intra_period`` frames, both at most :data:`SEQ_MODULO`, so two
  packets more than SEQ_MODULO frames apart always had packets lost between them, whatever their
  sequence numbers say; after a loss the receiver ignores predicted packets until the next intra one
  and keeps forecasting in the meantime;
- **an intra packet restarts the predictor's context** (the frames it reads) on both ends, so a
  predictor that reads several frames is in step again from that frame, like hold-last;
- **recovery within ``intra_period`` frames** of any loss without feedback, and faster with it: a
  receiver that lost sync says so (:attr:`Receiver.needs_intra`); a transport that carries that
  back calls :meth:`Sender.request_intra`, and the sender's next frame goes out intra.
"""

from __future__ import annotations

import binascii
import dataclasses
from collections.abc import Callable, Sequence

import numpy as np

from kpflow import arithmetic_coding

HEADER_BYTES = 1
INTRA_CHECK_BYTES = 2  # an intra packet's CRC-16 (CCITT) of its header and payload, after the header
INTRA_FLAG = 0x80  # header bit 7
SEQ_MODULO = 128  # header bits 0-6; also the longest gap (frames) between packets a sender may leave
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

# The frame range a receiver may show: the fitting clips' [min, max] per dimension, widened by this
# share of its span on each side (new speakers sit a little outside the fitting ones).
RANGE_MARGIN = 0.5

# The sender's defaults: a packet at least every second and an intra packet at least every second
# (30 frames at FPS: after a loss the receiver is right again within a second, without feedback),
# the papers' 6 sent / 6 forecast schedule, and a drift threshold in raw keypoint units.
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


def finest_step(series: Sequence[np.ndarray]) -> float:
    """The smallest quantisation step whose symbols still span the range fitted to ``series`` ([T, D] clips)."""
    frames = np.concatenate([np.asarray(s, np.float64) for s in series])
    span = np.max(frames.max(axis=0) - frames.min(axis=0))
    return float(span * (1 + 2 * RANGE_MARGIN) / MAX_SYMBOL)


@dataclasses.dataclass(frozen=True)
class CodecParams:
    """Shared once between sender and receiver (not per frame): quantiser, basis, models, intra centre
    and the range of frames a receiver may show."""

    quantizer: Quantizer
    predicted: CategoricalCoder  # residual components (in ``basis``) against the prediction
    intra: LaplaceCoder  # frames against ``centre``, per dimension
    centre: np.ndarray  # [D]
    basis: np.ndarray  # [D, D] orthonormal columns
    deadzone: float = DEADZONE  # of predicted residual components, in steps
    low: np.ndarray | None = None  # [D] the lowest value a shown frame may hold (None: unbounded)
    high: np.ndarray | None = None  # [D] the highest

    def __post_init__(self):
        dim = self.quantizer.dim
        low = np.full(dim, -np.inf) if self.low is None else np.asarray(self.low, np.float64)
        high = np.full(dim, np.inf) if self.high is None else np.asarray(self.high, np.float64)
        if low.shape != (dim,) or high.shape != (dim,) or not np.all(low < high):
            raise ValueError(f"codec range low/high must be [{dim}] arrays with low < high")
        # Shown frames are float32: bounds that float32 holds exactly keep clipped frames inside them.
        low32, high32 = low.astype(np.float32), high.astype(np.float32)
        low = np.where(low32 > low, np.nextafter(low32, np.float32(-np.inf)), low32).astype(np.float64)
        high = np.where(high32 < high, np.nextafter(high32, np.float32(np.inf)), high32).astype(np.float64)
        if not np.all((self.centre >= low) & (self.centre <= high)):
            raise ValueError("the codec's intra centre lies outside its frame range")
        object.__setattr__(self, "low", low)
        object.__setattr__(self, "high", high)

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
        if any(s.ndim != 2 or len(s) < 2 or s.shape[1] != series[0].shape[1] for s in series):
            raise ValueError(f"codec fitting clips must be [T >= 2, D] with one D; got shapes {[s.shape for s in series][:5]}")
        frames = np.concatenate(series)
        if not np.all(np.isfinite(frames)):
            raise ValueError("codec fitting clips hold NaN or Inf values")
        dim = series[0].shape[1]
        q = Quantizer(np.broadcast_to(np.asarray(step, np.float64), (dim,)).copy())
        if np.min(q.step) < finest_step(series):
            raise ValueError(f"quantisation step {np.min(q.step):g} is too fine for the data's range (more than "
                             f"{MAX_SYMBOL} steps); use a step of at least {finest_step(series):.2g}")
        lo, hi = frames.min(axis=0), frames.max(axis=0)
        span = np.maximum(hi - lo, np.max(q.step))
        low, high = lo - RANGE_MARGIN * span, hi + RANGE_MARGIN * span
        centre = np.median(frames, axis=0).astype(np.float32)
        rotation = motion_basis(series, predict) if basis == "pca" else np.eye(dim)
        residuals = np.stack([s[t] - predict(s[:t]) for s in series for t in range(1, len(s))])
        return cls(
            quantizer=q,
            predicted=CategoricalCoder.fit(q.symbols(residuals @ rotation, deadzone)),
            intra=LaplaceCoder.fit(q.symbols(frames - centre)),
            centre=centre,
            basis=rotation,
            deadzone=float(deadzone),
            low=low,
            high=high,
        )

    def to_arrays(self) -> dict[str, np.ndarray]:
        """Everything a receiver needs, as named arrays (``np.savez`` them; :meth:`from_arrays` reads them back)."""
        return {"step": self.quantizer.step, "predicted_probabilities": np.asarray(self.predicted.probabilities),
                "intra_scale": self.intra.scale, "centre": np.asarray(self.centre), "basis": self.basis,
                "deadzone": np.asarray(self.deadzone), "low": self.low, "high": self.high}

    @classmethod
    def from_arrays(cls, arrays) -> CodecParams:
        """Inverse of :meth:`to_arrays`; a missing or malformed array is a ValueError naming it."""
        missing = [k for k in ("step", "predicted_probabilities", "intra_scale", "centre", "basis", "deadzone", "low", "high")
                   if k not in arrays]
        if missing:
            raise ValueError(f"codec parameters lack {missing}")
        a = {k: np.asarray(arrays[k], np.float64) for k in arrays}
        dim = a["step"].shape[0] if a["step"].ndim == 1 else -1
        shapes = {"predicted_probabilities": 2, "intra_scale": 1, "centre": 1, "basis": 2, "low": 1, "high": 1}
        bad = [k for k, nd in shapes.items() if a[k].ndim != nd or a[k].shape[0] != dim or not np.all(np.isfinite(a[k]))]
        if dim < 1 or bad or a["basis"].shape != (dim, dim):
            raise ValueError(f"codec parameters are malformed: {bad or ['step', 'basis']} do not fit D = {dim}")
        probs = a["predicted_probabilities"]
        if probs.shape[1] % 2 != 1 or np.any(probs < 0):
            raise ValueError("codec parameters are malformed: predicted_probabilities must be [D, 2 radius + 1] >= 0")
        return cls(quantizer=Quantizer(a["step"]), predicted=CategoricalCoder(probs), intra=LaplaceCoder(a["intra_scale"]),
                   centre=a["centre"].astype(np.float32), basis=a["basis"], deadzone=float(a["deadzone"]),
                   low=a["low"], high=a["high"])

    def clip(self, frame: np.ndarray) -> np.ndarray:
        """``frame [D]`` clipped into the shown range, float32."""
        return np.clip(frame, self.low, self.high).astype(np.float32)

    def in_range(self, frame: np.ndarray) -> bool:
        """Whether a decoded ``frame [D]`` may be shown: finite and within the range, give or take the
        rounding of one quantisation step (it is then clipped into the range)."""
        slack = self.quantizer.step / 2
        return bool(np.all(np.isfinite(frame)) and np.all(frame >= self.low - slack) and np.all(frame <= self.high + slack))

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


def _crc(data: bytes) -> int:
    return binascii.crc_hqx(data, 0xFFFF)


def intra_packet(seq: int, payload: bytes) -> bytes:
    """Header, CRC and payload of an intra packet."""
    header = _header(seq, True)
    return header + _crc(header + payload).to_bytes(INTRA_CHECK_BYTES, "big") + payload


@dataclasses.dataclass
class ReceiverStats:
    """What a receiver saw: packets used, ignored as junk, rejected, and the losses it detected."""

    packets: int = 0  # non-empty packets handed to step
    applied: int = 0  # packets whose frame was shown (intra or in-sync predicted)
    junk: int = 0  # empty or not a coder's output: ignored as if nothing had arrived
    out_of_range: int = 0  # decoded outside the frame range: rejected, then waiting for an intra packet
    loss_events: int = 0  # times the receiver found packets missing (a sequence gap or a too-long silence)
    ignored: int = 0  # predicted packets dropped while out of sync


class Receiver:
    """Rebuilds the keypoint series from packets; forecasts every frame it gets no usable packet for.

    :meth:`step` never raises on the bytes it is given and always returns a frame within the codec's
    range. :attr:`needs_intra` is True from a detected loss until the next intra packet is applied.
    """

    def __init__(self, params: CodecParams, predict: FramePredictor = hold_last, first_frame: np.ndarray | None = None,
                 memory: int | None = None):
        if memory is not None and memory < 1:
            raise ValueError(f"a receiver's memory is at least 1 frame (None: keep every frame); got {memory}")
        self.params = params
        self.predict = predict
        # The frames shown so far, the predictor's input: all of them (memory None, for analysis), or
        # the last `memory` (a live call: the predictor's context length; hold_last needs 1).
        self.history: list[np.ndarray] = []
        self.memory = memory
        self.frames = 0  # frames shown so far
        self.context_from = 0  # the frame of the last intra packet applied: the predictor reads from there
        self.expected_seq: int | None = None
        self.synced = False
        self.first_frame = None if first_frame is None else params.clip(np.asarray(first_frame, np.float64))
        self.last_packet_frame: int | None = None  # frame index of the last packet that was not junk
        self.suspect: int | None = None  # the sequence number of an unexpected predicted packet, not yet judged
        self.stats = ReceiverStats()

    @property
    def needs_intra(self) -> bool:
        """True while predicted packets cannot be used (before the first intra packet, after a loss)
        or a loss is suspected: the moment to ask the sender for a keyframe."""
        return not self.synced or self.suspect is not None

    def prediction(self) -> np.ndarray:
        """The frame shown if no packet is used: the predictor's, clipped into the codec's range."""
        if not self.history:
            return self.params.centre.copy() if self.first_frame is None else self.first_frame.copy()
        return self.params.clip(np.asarray(self.predict(np.stack(self.context())), np.float64))

    def context(self) -> list[np.ndarray]:
        """The frames the predictor reads: those shown since the last intra packet (it included), at
        most the kept history."""
        since = self.frames - self.context_from
        return self.history[-since:] if 0 < since < len(self.history) else self.history

    def _decode(self, packet: bytes) -> tuple[bool, int, np.ndarray] | None:
        """``(intra, seq, symbols)``, or None for junk: a failed intra CRC, or a payload that is not the
        coder's own encoding of what it decodes to."""
        p = self.params
        intra, seq = bool(packet[0] & INTRA_FLAG), packet[0] % SEQ_MODULO
        payload = packet[HEADER_BYTES:]
        if intra:
            check, payload = payload[:INTRA_CHECK_BYTES], payload[INTRA_CHECK_BYTES:]
            if len(check) < INTRA_CHECK_BYTES or int.from_bytes(check, "big") != _crc(packet[:HEADER_BYTES] + payload):
                return None
        coder = p.intra if intra else p.predicted
        try:
            symbols = coder.decode(payload)
            canonical = coder.encode(symbols) == payload  # the encoder writes the shortest string
        except (ValueError, IndexError, OverflowError):
            return None
        return (intra, seq, symbols) if canonical else None

    def step(self, packet: bytes | None) -> np.ndarray:
        """Advance one frame with the packet received for it (None or empty: nothing arrived) -> ``[D]``."""
        decoded = self._decode(bytes(packet)) if packet else None
        if packet:
            self.stats.packets += 1
            self.stats.junk += decoded is None
        return self.step_decoded(decoded)

    def step_decoded(self, decoded: tuple[bool, int, np.ndarray] | None) -> np.ndarray:
        """:meth:`step` with the packet already decoded to ``(intra, seq, symbols)`` (the sender's mirror
        knows what it sent)."""
        frame = self.prediction()
        if decoded is not None:
            frame = self._use(decoded, frame, self.frames)
        self.history.append(np.asarray(frame, np.float32))
        if self.memory is not None and len(self.history) > self.memory:
            del self.history[: len(self.history) - self.memory]
        self.frames += 1
        return self.history[-1]

    def _use(self, decoded: tuple[bool, int, np.ndarray], frame: np.ndarray, t: int) -> np.ndarray:
        """The frame shown at ``t`` given a well-formed packet (``frame``: the prediction)."""
        p = self.params
        intra, seq, symbols = decoded
        silent = t - self.last_packet_frame if self.last_packet_frame is not None else 0
        expected = self.expected_seq is None or seq == self.expected_seq
        confirms = self.suspect is not None and seq == (self.suspect + 1) % SEQ_MODULO
        if not intra and self.synced and not expected and not confirms and silent <= SEQ_MODULO:
            # Junk, or the first packet after a loss: a packet that carries the expected number says
            # junk, one that continues this one's number says loss.
            self.suspect = seq
            return frame
        self.last_packet_frame = t
        # A sender never stays silent for SEQ_MODULO frames: a longer silence lost packets, even if
        # the sequence number matches (it wrapped).
        lost = not expected or silent > SEQ_MODULO
        self.suspect = None
        self.expected_seq = (seq + 1) % SEQ_MODULO
        if lost and self.synced:
            self.stats.loss_events += 1
            self.synced = False
        if intra:
            candidate = p.centre + p.quantizer.values(symbols)
        elif self.synced:
            candidate = frame + p.residual_values(symbols)
        else:
            self.stats.ignored += 1
            return frame
        if not p.in_range(candidate):
            self.stats.out_of_range += 1
            self.synced = False
            return frame
        self.synced = True
        self.stats.applied += 1
        if intra:
            # An intra packet is a fresh start for the predictor too: its context restarts at this
            # frame on both ends, so a predictor that reads several frames is back in step at once
            # (hold-last reads one and is unaffected).
            self.context_from = t
        return p.clip(candidate)


class Sender:
    """Decides per frame whether to send, and what; mirrors the receiver to know its prediction.

    ``intra_period``: an intra packet at least every that many frames (0: only when a residual does not
    fit, or when :meth:`request_intra` asks); ``max_gap``: a packet at least every that many frames.
    Both at most :data:`SEQ_MODULO`, which lets the receiver tell a long loss from a sequence wrap.
    """

    def __init__(self, params: CodecParams, predict: FramePredictor = hold_last, policy: str = "threshold", *,
                 threshold: float = DEFAULT_THRESHOLD, num_observed: int = PAPER_NUM_OBSERVED,
                 horizon: int = PAPER_HORIZON, intra_period: int = DEFAULT_INTRA_PERIOD, max_gap: int = DEFAULT_MAX_GAP,
                 memory: int | None = None):
        if policy not in POLICIES:
            raise ValueError(f"policy must be one of {POLICIES}; got {policy!r}")
        if not 1 <= max_gap <= SEQ_MODULO:
            raise ValueError(f"max_gap must be 1..{SEQ_MODULO} frames; got {max_gap}")
        if not 0 <= intra_period <= SEQ_MODULO:
            raise ValueError(f"intra_period must be 0 (no periodic intra) or 1..{SEQ_MODULO} frames; got {intra_period}")
        if not threshold >= 0:
            raise ValueError(f"threshold must be >= 0; got {threshold}")
        if num_observed < 1 or horizon < 0:
            raise ValueError(f"the schedule needs num_observed >= 1 and horizon >= 0; got {num_observed} and {horizon}")
        self.params = params
        self.policy = policy
        self.threshold = float(threshold)
        self.num_observed, self.horizon = int(num_observed), int(horizon)
        self.intra_period = int(intra_period)
        self.max_gap = int(max_gap)
        self.mirror = Receiver(params, predict, memory=memory)  # memory: see Receiver
        self.seq = 0
        self.frame = 0
        self.last_sent = -1
        self.last_intra = None  # frame index of the last intra packet
        self.intra_requested = False
        self.last_symbols: np.ndarray | None = None  # residual symbols of the last frame's predicted packet

    def request_intra(self) -> None:
        """The receiver asked for a keyframe: the next frame is sent, as an intra packet."""
        self.intra_requested = True

    def _intra_due(self) -> bool:
        if self.intra_requested or self.last_intra is None:
            return True
        return self.intra_period > 0 and self.frame - self.last_intra >= self.intra_period

    def _must_send(self) -> bool:
        """Sent whatever the frame holds: the first frame, every frame, the schedule's, a keep-alive, an intra.

        The schedule keeps its pattern: a due intra packet waits for its next sending frame.
        """
        if self.frame == 0 or self.policy == "every_frame":
            return True
        if self.policy == "schedule":
            return self.frame % (self.num_observed + self.horizon) < self.num_observed
        return self._intra_due() or self.frame - self.last_sent >= self.max_gap

    def step(self, x: np.ndarray) -> bytes | None:
        """The packet for frame ``x [D]`` (raw keypoints), or None when nothing is sent.

        ``x`` is clipped into the codec's range first (the receiver can show nothing outside it).
        """
        p = self.params
        x = np.asarray(x, np.float64)
        if x.shape != (p.quantizer.dim,) or not np.all(np.isfinite(x)):
            raise ValueError(f"a frame must be [{p.quantizer.dim}] finite values; got shape {x.shape}")
        x = p.clip(x)
        prediction = self.mirror.prediction()
        must = self._must_send()
        packet, decoded, self.last_symbols = None, None, None
        if must or (self.policy == "threshold" and float(np.mean(np.abs(x - prediction))) > self.threshold):
            symbols = p.residual_symbols(x - prediction)
            candidate = prediction + p.residual_values(symbols)
            intra = self._intra_due() or not p.predicted.fits(symbols) or not p.in_range(candidate)
            if intra:
                intra_symbols = p.quantizer.symbols(x - p.centre)
                packet = intra_packet(self.seq, p.intra.encode(intra_symbols))
                decoded = (True, self.seq % SEQ_MODULO, intra_symbols)
                self.last_intra = self.frame
                self.intra_requested = False
            elif must or np.any(symbols):  # a residual that quantises to nothing is not worth a packet
                packet = _header(self.seq, False) + p.predicted.encode(symbols)
                decoded = (False, self.seq % SEQ_MODULO, symbols)
                self.last_symbols = symbols
        if packet is not None:
            self.seq += 1
            self.last_sent = self.frame
        self.mirror.step_decoded(decoded)
        self.frame += 1
        return packet


def transmit(series: np.ndarray, params: CodecParams, predict: FramePredictor = hold_last, *, fps: float = FPS,
             loss: np.ndarray | None = None, lost_packets: np.ndarray | None = None, **sender_kwargs) -> dict:
    """Send ``series [T, D]`` through a Sender and a Receiver, dropping packets on the way.

    ``loss [T]`` (bool) drops the packet of those frames; ``lost_packets`` (bool, one per packet sent,
    in order; a shorter array loses none after its end) drops packets by their index, as a channel
    does. Returns ``{"reconstruction" [T, D], "sent" [T] bool, "lost" [T] bool (a frame whose packet
    was lost), "bytes", "header_bytes", "packets", "intra_packets", "kbps", "mae_raw"}``: ``bytes``
    counts every byte of every packet sent (headers included, lost ones too); ``kbps`` at ``fps``.
    """
    series = np.asarray(series, np.float32)
    if series.ndim != 2 or series.shape[1] != params.quantizer.dim:
        raise ValueError(f"series must be [T, {params.quantizer.dim}]; got {series.shape}")
    sender = Sender(params, predict, **sender_kwargs)
    receiver = Receiver(params, predict)
    total, packets, intra, out = 0, 0, 0, []
    sent, lost = np.zeros(len(series), bool), np.zeros(len(series), bool)
    for t, x in enumerate(series):
        packet = sender.step(x)
        if packet is not None:
            total += len(packet)
            intra += bool(packet[0] & INTRA_FLAG)
            sent[t] = True
            dropped = loss is not None and loss[t]
            dropped |= lost_packets is not None and packets < len(lost_packets) and bool(lost_packets[packets])
            packets += 1
            if dropped:
                packet, lost[t] = None, True
        out.append(receiver.step(packet))
    rec = np.stack(out)
    seconds = len(series) / fps
    return {
        "reconstruction": rec,
        "sent": sent,
        "lost": lost,
        "bytes": total,
        "header_bytes": packets * HEADER_BYTES,
        "packets": packets,
        "intra_packets": intra,
        "kbps": total * 8 / seconds / 1000.0,  # bits per byte, bits per kilobit
        "mae_raw": float(np.mean(np.abs(rec - series))),
    }


def loss_recovery(series: np.ndarray, params: CodecParams, predict: FramePredictor = hold_last, *, memory: int = 1,
                  **sender_kwargs) -> tuple[np.ndarray, np.ndarray]:
    """How long one lost packet leaves the receiver wrong, for each packet the sender sends for ``series``.

    Packet k alone is dropped; the receiver is right again at the first frame from which it is in the
    same state as a receiver that lost nothing: the same sync state and the same last ``memory``
    frames (1 for :func:`hold_last`; a predictor that reads further back needs its context length).
    Returns ``(frames [K], recovered [K] bool)``: frames from the lost packet's frame (inclusive) to
    that point, or to the clip's end when it never recovered (``recovered`` False).
    """
    series = np.asarray(series, np.float32)
    sender = Sender(params, predict, **sender_kwargs)
    decoded, snapshots = [], []
    lossless = Receiver(params, predict)
    states = []
    for x in series:
        packet = sender.step(x)
        d = lossless._decode(packet) if packet else None
        decoded.append(d)
        if d is not None:
            snapshots.append((len(lossless.history), _snapshot(lossless)))
        lossless.step_decoded(d)
        states.append(_state_key(lossless, memory))
    frames, recovered = [], []
    for t0, snap in snapshots:
        r = _restore(snap, params, predict)
        r.step_decoded(None)  # the lost packet
        t = t0
        while _state_key(r, memory) != states[t] and t + 1 < len(series):
            t += 1
            r.step_decoded(decoded[t])
        ok = _state_key(r, memory) == states[t]
        frames.append(t - t0 + (0 if ok else 1))
        recovered.append(ok)
    return np.asarray(frames, np.int64), np.asarray(recovered, bool)


def _snapshot(r: Receiver) -> dict:
    return {"history": list(r.history), "expected_seq": r.expected_seq, "synced": r.synced, "suspect": r.suspect,
            "last_packet_frame": r.last_packet_frame, "first_frame": r.first_frame, "frames": r.frames,
            "memory": r.memory, "context_from": r.context_from}


def _restore(snap: dict, params: CodecParams, predict: FramePredictor) -> Receiver:
    r = Receiver(params, predict)
    for k, v in snap.items():
        setattr(r, k, list(v) if k == "history" else v)
    return r


def _state_key(r: Receiver, memory: int) -> tuple:
    tail = tuple(h.tobytes() for h in r.context()[-memory:])
    return (r.synced, r.expected_seq, r.suspect, tail)
