"""The receiving end of a call: keypoint datagrams in, an animated source image out, on its own clock.

A :class:`CallReceiver` accepts the sender's set-up (:mod:`kpflow.call.session`: the source image,
the codec parameters, the frame rate), then advances one frame per :meth:`CallReceiver.tick`:

1. it takes the datagrams that arrived (``[frame index mod 256] + codec packet``, see
   :mod:`kpflow.call.sender`), unwraps each index against its own frame counter (the nearest frame
   within 128) and files it under that frame: a datagram for a frame already shown is **late** (in
   :meth:`~CallReceiver.run`, so is one that arrives more than ``playout_ms`` after its frame was
   due), a second copy of one already filed is a **duplicate** and is ignored, one longer than
   ``max_datagram_bytes`` is **oversize** and dropped unread;
2. it steps the ``kpflow.codec.Receiver`` with this frame's packet or with nothing: the codec's
   predictor (``hold_last`` by default, or any ``FramePredictor``, the sender's own) fills every
   frame no packet carried, and junk is a no-op there. When different datagrams claim one frame
   (junk beside a real packet), the likeliest is used: an intra packet whose CRC holds or a
   predicted one with the sequence number the codec expects, both decoding as the coder's own
   output, before any other (junk can displace a real packet only by passing those tests);
3. while the codec reports ``needs_intra`` it sends ``{"type": "keyframe_request"}``, at most once
   every ``keyframe_retry_frames`` frames (about a round trip: two playout delays, at least
   :data:`MIN_KEYFRAME_RETRY_FRAMES`);
4. it renders the keypoints with FOMM from the source (the generator's encoder runs once per call:
   :class:`FrameRenderer`) and shows the frame: to the mp4 writer (``out``), the ``on_frame``
   callback and :attr:`CallReceiver.latest` (the slot a viewer serves).

It never waits for the network. :meth:`~CallReceiver.run` drives the ticks on the clock: frame ``k``
is shown ``playout_ms`` after ``k / fps`` seconds from the accept. When rendering falls behind, the
codec still steps through every frame, only the newest is rendered, and the mp4 repeats the last
shown picture for the skipped ones (``frames_skipped``), so its timing stays the call's.

The call ends when the sender says bye (after its last frame is shown) or, when the link closes
without one (the peer vanished), ``peer_timeout_s`` later, the receiver forecasting until then;
either way the mp4 is closed complete and the statistics are written (:meth:`CallReceiver.stats`).
"""

from __future__ import annotations

import asyncio
import dataclasses
import math
import os
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np

from kpflow import codec
from kpflow.call import session as sess
from kpflow.call.sender import FRAME_INDEX_MODULO
from kpflow.call.stats import LoopbackReference, latency_summary, mean_or_none, write_stats

DEFAULT_PLAYOUT_MS = 100.0
DEFAULT_PEER_TIMEOUT_S = 3.0
# A codec packet is at most a few dozen bytes (an intra frame of 60 numbers: about 30); anything this
# long is not one and is dropped without being decoded.
MAX_DATAGRAM_BYTES = 1024
MAX_CANDIDATES = 8  # different datagrams kept for one frame (junk beside the real one)
MIN_KEYFRAME_RETRY_FRAMES = 3


@dataclasses.dataclass(frozen=True)
class ShownFrame:
    """One tick's output: frame ``index``, ``image [H, W, 3]`` uint8 (the last rendered picture when
    this tick's render was skipped), the keypoint vector ``keypoints [6K]`` the codec gave, and what
    happened: ``rendered``, ``packet`` (a packet was applied), ``intra`` (it was an intra packet),
    ``lost`` (the sender sent a packet for this frame and it was not used; None without a reference)."""

    index: int
    image: np.ndarray
    keypoints: np.ndarray
    rendered: bool
    packet: bool
    intra: bool
    lost: bool | None


@dataclasses.dataclass
class PreparedSource:
    """A source image ready to animate: ``image [1, H, W, 3]``, the generator's encoding of it, and
    its keypoints (unbatched ``Keypoints``)."""

    image: object
    features: object
    kp_source: object


class FrameRenderer:
    """FOMM rendering of one frame at a time from a prepared source.

    :meth:`prepare` runs the generator's encoder and the detector on the source once; :meth:`render`
    runs the rest of the generator (``source_features`` given, ``kpflow.fomm.generator``) for one
    keypoint vector. Both are jitted once per renderer: share one renderer between calls of a FOMM.
    """

    def __init__(self, fomm):
        import jax

        from kpflow.pipeline import relative_motion

        self.fomm = fomm
        generator = fomm.networks.generator

        def generate(variables, image, features, kp_source, kp_driving):
            batch = lambda x: x[None]
            kp_s, kp_d = jax.tree.map(batch, kp_source), jax.tree.map(batch, kp_driving)
            return generator.apply(variables, image, kp_s, kp_d, source_features=features)["prediction"][0]

        self._encode = jax.jit(lambda variables, image: generator.apply(variables, image, encode_only=True)["source_features"])
        self._generate = jax.jit(generate)
        self._transfer = jax.jit(lambda kp_source, kp_driving, kp_initial: relative_motion(kp_source, kp_driving, kp_initial))

    def prepare(self, source: np.ndarray) -> PreparedSource:
        import jax
        import jax.numpy as jnp

        image = jnp.asarray(np.asarray(source, np.float32)[None])
        features = self._encode(self.fomm.variables["generator"], image)
        kp = self.fomm.detect(image)
        return PreparedSource(image, features, jax.tree.map(lambda x: x[0], kp))

    def keypoints(self, prepared: PreparedSource, vector: np.ndarray, initial: np.ndarray | None = None):
        """The keypoints FOMM renders for ``vector [6K]``: as they are, or (``initial`` given:
        transfer mode) FOMM's relative motion from ``initial [6K]`` applied to the source's."""
        import jax.numpy as jnp

        from kpflow.keypoints import Keypoints

        kp = Keypoints.from_vector(jnp.asarray(vector, jnp.float32))
        if initial is None:
            return kp
        return self._transfer(prepared.kp_source, kp, Keypoints.from_vector(jnp.asarray(initial, jnp.float32)))

    def render(self, prepared: PreparedSource, kp_driving) -> np.ndarray:
        """-> ``[H, W, 3]`` float32 in [0, 1]."""
        out = self._generate(self.fomm.variables["generator"], prepared.image, prepared.features,
                             prepared.kp_source, kp_driving)
        return np.asarray(out, np.float32)


class Mp4Writer:
    """Frames appended one at a time to an H.264 mp4 (ffmpeg through imageio-ffmpeg)."""

    def __init__(self, path: str | os.PathLike, fps: float, frame_shape):
        import imageio_ffmpeg

        height, width = int(frame_shape[0]), int(frame_shape[1])
        if height % 2 or width % 2:
            raise ValueError(f"an mp4 (H.264, yuv420p) needs an even frame size; got {height}x{width}")
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.frames = 0
        self._writer = imageio_ffmpeg.write_frames(str(self.path), (width, height), fps=fps, codec="libx264",
                                                   macro_block_size=1, pix_fmt_out="yuv420p", ffmpeg_log_level="error")
        with warnings.catch_warnings():
            # ffmpeg starts as a subprocess (fork + exec at once), which JAX's fork warning does not concern.
            warnings.filterwarnings("ignore", message=r"os\.fork\(\) was called", category=RuntimeWarning)
            self._writer.send(None)

    def write(self, image: np.ndarray) -> None:
        self._writer.send(np.ascontiguousarray(image, np.uint8))
        self.frames += 1

    def close(self) -> None:
        self._writer.close()


def to_uint8(image: np.ndarray) -> np.ndarray:
    return np.round(np.clip(image, 0.0, 1.0) * 255.0).astype(np.uint8)


class CallReceiver:
    """The receiving end of a call over a ``kpflow.call.link.Link`` (see the module docstring).

    Args:
      link: the link to the sender.
      fomm: a loaded ``kpflow.fomm.FOMM`` (the sender's: the set-up checks its fingerprint).
      predict, predictor_fingerprint: the codec's predictor and its name, as the sender's.
      playout_ms: how long after its frame is due a datagram may still arrive (:meth:`run` only;
        also the receiver's display delay).
      out: mp4 path of the call as shown (None: none written); stats_path: JSON statistics (None: none).
      on_frame: called with each :class:`ShownFrame`.
      reference: a :class:`kpflow.call.stats.LoopbackReference` the sender records in (loopback
        only), for the keypoint error, the lost packets and the latency; ``reference_pixels`` also
        renders the sender's detected keypoints to measure ``pixel_mae_vs_full_rate``.
      renderer: a :class:`FrameRenderer` to share (its compiled programs).
      peer_timeout_s: how long to keep forecasting after the link closes without a bye.
      keyframe_retry_frames: frames between keyframe requests (default: two playout delays, at
        least :data:`MIN_KEYFRAME_RETRY_FRAMES`).
      max_datagram_bytes: longer datagrams are dropped unread.
      fingerprint: this FOMM's fingerprint, if already computed.

    Use :meth:`run` for a whole call, or :meth:`accept`, then :meth:`tick` per frame (the caller is
    the clock) until :attr:`ended`, then :meth:`finish`.
    """

    def __init__(self, link, fomm, *, predict: codec.FramePredictor = codec.hold_last,
                 predictor_fingerprint: str = sess.HOLD_LAST, playout_ms: float = DEFAULT_PLAYOUT_MS,
                 out: str | os.PathLike | None = None, stats_path: str | os.PathLike | None = None,
                 on_frame: Callable[[ShownFrame], object] | None = None, reference: LoopbackReference | None = None,
                 reference_pixels: bool = False, renderer: FrameRenderer | None = None,
                 peer_timeout_s: float = DEFAULT_PEER_TIMEOUT_S, keyframe_retry_frames: int | None = None,
                 max_datagram_bytes: int = MAX_DATAGRAM_BYTES, fingerprint: str | None = None):
        if not (playout_ms >= 0 and math.isfinite(playout_ms)):
            raise ValueError(f"playout_ms must be >= 0; got {playout_ms}")
        if not (peer_timeout_s > 0 and math.isfinite(peer_timeout_s)):
            raise ValueError(f"peer_timeout_s must be > 0 seconds; got {peer_timeout_s}")
        if keyframe_retry_frames is not None and int(keyframe_retry_frames) < 1:
            raise ValueError(f"keyframe_retry_frames must be >= 1; got {keyframe_retry_frames}")
        if int(max_datagram_bytes) < 2:
            raise ValueError(f"max_datagram_bytes must be >= 2; got {max_datagram_bytes}")
        self.link = link
        self.fomm = fomm
        self.predict = predict
        self.predictor_fingerprint = predictor_fingerprint
        self.playout_ms = float(playout_ms)
        self.out = None if out is None else Path(out)
        self.stats_path = None if stats_path is None else Path(stats_path)
        self.on_frame = on_frame
        self.reference = reference
        self.reference_pixels = bool(reference_pixels)
        self.renderer = renderer
        self.peer_timeout_s = float(peer_timeout_s)
        self._retry_frames = None if keyframe_retry_frames is None else int(keyframe_retry_frames)
        self.max_datagram_bytes = int(max_datagram_bytes)
        self.fingerprint = fingerprint
        self.session: sess.Session | None = None
        self.codec: codec.Receiver | None = None
        self.latest: ShownFrame | None = None  # the newest frame shown (what a viewer serves)
        self.frame = 0  # the next frame index to show
        self.last_intra_frame: int | None = None
        self._buffer: dict[int, list[bytes]] = {}
        self._deadline: Callable[[int], float] | None = None
        self._writer: Mp4Writer | None = None
        self._prepared: PreparedSource | None = None
        self._initial: np.ndarray | None = None  # transfer mode: the first frame a packet gave
        self._last_image: np.ndarray | None = None
        self._last_request: int | None = None
        self._closed_at: int | None = None
        self._final: dict | None = None  # the sender's bye
        self._status: dict = {}  # the sender's latest counts (status or bye)
        self._stop = False
        self._finished: dict | None = None
        self._counts = dict.fromkeys(("packets_received", "bytes_received", "packets_late", "packets_duplicate",
                                      "datagrams_junk", "datagrams_oversize", "frames_shown", "frames_skipped",
                                      "frames_forecast", "keyframe_requests"), 0)
        self._kp_error = [0.0, 0]
        self._kp_error_lost = [0.0, 0]
        self._pixel_error = [0.0, 0]
        self._latencies: list[float] = []
        self._render_seconds = 0.0

    # -- set-up -------------------------------------------------------------------------------------------

    async def accept(self, timeout: float = sess.SETUP_TIMEOUT_S) -> sess.Session:
        """Wait for the sender's set-up, check it and accept it (or refuse it: ``SessionRefused``, one
        line, and the link closed), then prepare the source and compile the renderer."""
        from kpflow.fomm.model import frame_shape_of

        if self.fingerprint is None:
            self.fingerprint = sess.fomm_fingerprint(self.fomm)
        shape = frame_shape_of(self.fomm.config)
        await sess.answer(self.link, fomm_fingerprint=self.fingerprint, predictor_fingerprint=self.predictor_fingerprint,
                          frame_shape=shape, dim=6 * self.fomm.num_kp, timeout=timeout, prepare=self._prepare)
        return self.session

    async def _prepare(self, session: sess.Session) -> None:
        """Everything before the accept: the codec, the source's encoding, the compiled renderer, the mp4."""
        if self.renderer is None:
            self.renderer = FrameRenderer(self.fomm)
        self._prepared = await asyncio.to_thread(self.renderer.prepare, session.source)
        await asyncio.to_thread(self.renderer.render, self._prepared, self._prepared.kp_source)  # compile now
        if self._retry_frames is None:
            round_trip = 2 * self.playout_ms / 1000.0 * session.fps
            self._retry_frames = max(MIN_KEYFRAME_RETRY_FRAMES, math.ceil(round_trip))
        if self.out is not None:
            self._writer = Mp4Writer(self.out, session.fps, session.frame_shape)
        self.codec = codec.Receiver(session.params, self.predict, memory=sess.CONTEXT_FRAMES)
        self.session = session

    @property
    def keyframe_retry_frames(self) -> int | None:
        return self._retry_frames

    # -- one frame ------------------------------------------------------------------------------------------

    def _read_controls(self) -> None:
        while not self.link.controls.empty():
            message = self.link.controls.get_nowait()
            if not isinstance(message, dict):
                continue
            if message.get("type") in ("status", "end"):
                counts = {k: message.get(k) for k in ("frames_sent", "packets_sent", "bytes_sent")}
                if all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in counts.values()):
                    self._status = counts
                    if message["type"] == "end":
                        self._final = counts

    def _file_datagrams(self, k: int) -> None:
        c = self._counts
        while not self.link.packets.empty():
            arrival, data = self.link.packets.get_nowait()
            c["packets_received"] += 1
            c["bytes_received"] += len(data)
            if len(data) > self.max_datagram_bytes:
                c["datagrams_oversize"] += 1
                continue
            if len(data) < 2:  # no codec packet after the index byte
                c["datagrams_junk"] += 1
                continue
            offset = (data[0] - k) % FRAME_INDEX_MODULO
            n = k + (offset - FRAME_INDEX_MODULO if offset >= FRAME_INDEX_MODULO // 2 else offset)
            if n < k or (self._deadline is not None and arrival > self._deadline(n)):
                c["packets_late"] += 1
                continue
            slot = self._buffer.setdefault(n, [])
            if data in slot:
                c["packets_duplicate"] += 1
                continue
            if len(slot) >= MAX_CANDIDATES:  # a full slot: a codec packet may only evict junk
                junk = next((i for i, d in enumerate(slot) if not self._genuine(d[1:])), None)
                if junk is None or not self._genuine(data[1:]):
                    c["datagrams_junk"] += 1
                    continue
                del slot[junk]
                c["datagrams_junk"] += 1
            slot.append(bytes(data))

    def _genuine(self, packet: bytes) -> bool:
        """Whether the codec takes ``packet`` as one of its own: an intra packet whose CRC holds, or a
        payload that is the coder's own encoding (a fresh codec receiver's junk test)."""
        probe = codec.Receiver(self.session.params, self.predict, memory=sess.CONTEXT_FRAMES)
        probe.step(packet)
        return probe.stats.junk == 0

    def _rank(self, datagram: bytes) -> int:
        """How likely a datagram is this frame's codec packet (lower: likelier): a genuine intra
        packet, or a predicted one with the sequence number an in-sync codec expects; then other
        genuine ones; then junk. Junk that ties with the real packet (canonical, the expected number:
        the codec's 1-in-128 residual risk) may be taken for it."""
        packet = datagram[1:]
        if not self._genuine(packet):
            return 2
        intra, seq = bool(packet[0] & codec.INTRA_FLAG), packet[0] % codec.SEQ_MODULO
        return 0 if intra or (self.codec.synced and seq == self.codec.expected_seq) else 1

    def _choose(self, candidates: list[bytes]) -> bytes | None:
        """This frame's datagram among those that claim it (more than one: junk beside the real one)."""
        if len(candidates) <= 1:
            return candidates[0] if candidates else None
        self._counts["datagrams_junk"] += len(candidates) - 1
        return min(candidates, key=self._rank)

    def _note_closure(self) -> None:
        if self._closed_at is None and self.link.closed.is_set():
            self._closed_at = self.frame

    @property
    def peer_timeout_frames(self) -> int:
        fps = self.session.fps if self.session is not None else codec.FPS
        return max(1, math.ceil(self.peer_timeout_s * fps))

    @property
    def ended(self) -> bool:
        """The call is over: the sender's last frame is shown (after its bye), or the link closed
        without a bye ``peer_timeout_s`` ago (in frames), or :meth:`stop` was called."""
        if self._stop:
            return True
        if self.session is not None:
            self._read_controls()  # a bye or a closed link may have come since the last tick
            self._note_closure()
        if self._final is not None and self._closed_at is not None:
            return self.frame >= self._final["frames_sent"]
        return self._closed_at is not None and self.frame >= self._closed_at + self.peer_timeout_frames

    def latest_frame(self) -> np.ndarray | None:
        """The newest picture shown, ``[H, W, 3]`` uint8 (None before the first): a viewer's frame source."""
        return None if self.latest is None else self.latest.image

    def stop(self) -> None:
        """End the call at the next tick (:meth:`run` then finishes)."""
        self._stop = True

    def _render(self, vector: np.ndarray, initial: np.ndarray | None) -> tuple[np.ndarray, float]:
        start = time.perf_counter()
        image = self.renderer.render(self._prepared, self.renderer.keypoints(self._prepared, vector, initial))
        return image, time.perf_counter() - start

    async def tick(self, render: bool = True) -> ShownFrame:
        """Advance one frame (see the module docstring); ``render=False`` steps the codec but repeats
        the last picture (:meth:`run` does so when it is behind the clock)."""
        if self.session is None:
            raise RuntimeError("call accept() (the set-up) before tick()")
        k = self.frame
        c = self._counts
        self._read_controls()
        self._file_datagrams(k)
        self._note_closure()
        datagram = self._choose(self._buffer.pop(k, []))
        applied_before = self.codec.stats.applied
        keypoints = self.codec.step(datagram[1:] if datagram is not None else None)
        applied = self.codec.stats.applied > applied_before
        intra = applied and bool(datagram[1] & codec.INTRA_FLAG)
        if intra:
            self.last_intra_frame = k
        c["frames_forecast"] += not applied
        reference = self.reference.pop(k) if self.reference is not None else None
        lost = None
        if reference is not None:
            lost = reference.datagram is not None and reference.datagram != datagram

        if self.codec.needs_intra and not self.link.closed.is_set() and (
                self._last_request is None or k - self._last_request >= self._retry_frames):
            await self.link.send_control({"type": "keyframe_request"})
            self._last_request = k
            c["keyframe_requests"] += 1

        transfer = self.session.render_mode == "transfer"
        if transfer and self._initial is None and applied:
            self._initial = keypoints.copy()
        rendered = render or self._last_image is None
        if rendered:
            if transfer and self._initial is None:  # nothing received yet: the source as it is
                vector, initial = None, None
            else:
                vector, initial = keypoints, (self._initial if transfer else None)
            if vector is None:
                image = np.asarray(self._prepared.image[0], np.float32)
                seconds = 0.0
            else:
                image, seconds = await asyncio.to_thread(self._render, vector, initial)
            self._render_seconds += seconds
            self._last_image = to_uint8(image)
            c["frames_shown"] += 1
            if reference is not None:
                self._latencies.append(time.monotonic() - reference.capture_time)
                if self.reference_pixels and vector is not None:
                    truth, _ = await asyncio.to_thread(self._render, reference.keypoints, initial)
                    self._pixel_error[0] += float(np.mean(np.abs(image - truth)))
                    self._pixel_error[1] += 1
        else:
            c["frames_skipped"] += 1
        if reference is not None:
            error = float(np.mean(np.abs(keypoints - reference.keypoints)))
            self._kp_error[0] += error
            self._kp_error[1] += 1
            if lost:
                self._kp_error_lost[0] += error
                self._kp_error_lost[1] += 1

        shown = ShownFrame(k, self._last_image, keypoints, rendered, applied, intra, lost)
        if self._writer is not None:
            self._writer.write(shown.image)
        self.latest = shown
        self.frame += 1
        if self.on_frame is not None:
            self.on_frame(shown)
        return shown

    # -- a whole call --------------------------------------------------------------------------------------------

    async def run(self, *, timeout: float = sess.SETUP_TIMEOUT_S) -> dict:
        """Accept the set-up (unless :meth:`accept` was called), show frames on the clock until the
        call ends, finish; -> :meth:`stats`."""
        if self.session is None:
            await self.accept(timeout)
        period = 1.0 / self.session.fps
        first_shown = time.monotonic() + self.playout_ms / 1000.0
        self._deadline = lambda n: first_shown + n * period
        try:
            while not self.ended:
                now = time.monotonic()
                newest = math.floor((now - first_shown) / period)
                if newest < self.frame:
                    await asyncio.sleep(first_shown + self.frame * period - now)
                    continue
                while self.frame < newest and not self.ended:
                    await self.tick(render=False)
                if not self.ended:
                    await self.tick(render=True)
        finally:
            stats = await self.finish()
        return stats

    async def finish(self, reason: str = "receiver finished") -> dict:
        """Close the mp4 and the link (if still open), write the statistics; -> :meth:`stats`."""
        if self._finished is not None:
            return self._finished
        if self._writer is not None:
            self._writer.close()
        self._note_closure()
        ended = sess.short_line(self.link.close_reason) if self.link.closed.is_set() else reason
        if not self.link.closed.is_set():
            await self.link.close(reason)
        self._finished = self.stats(ended=ended)
        if self.stats_path is not None:
            write_stats(self.stats_path, self._finished)
        return self._finished

    def stats(self, ended: str = "") -> dict:
        """The call's statistics (JSON-able); null where unknown (no reference, no count from the sender).

        ``frames`` ticks; ``frames_shown`` rendered, ``frames_skipped`` not (behind the clock);
        ``frames_sent``, ``packets_sent``, ``kbps`` from the sender's bye or last status (datagram
        bytes over ``frames_sent`` at fps); ``packets_received`` every datagram that arrived, of
        which ``packets_late``, ``packets_duplicate``, ``datagrams_junk`` (empty, or a second claim
        on a frame) and ``datagrams_oversize`` were not used, plus the codec's ``codec_junk``;
        ``packets_used`` applied by the codec; ``forecast_share`` ticks no packet was applied in;
        ``keypoint_mae_raw`` (and over frames whose sent packet was not used: ``_lost``) against the
        sender's detector; ``pixel_mae_vs_full_rate`` against FOMM rendering the detected
        keypoints; ``latency_ms`` capture to display (loopback clock); ``render_fps``.
        """
        c = self._counts
        fps = self.session.fps if self.session is not None else None
        frames = self.frame
        sent = self._status or {}
        kbps = None
        if sent.get("frames_sent") and fps:
            kbps = sent["bytes_sent"] * 8 / (sent["frames_sent"] / fps) / 1000.0
        rendered = c["frames_shown"]
        return {
            "fps": fps,
            "playout_ms": self.playout_ms,
            "frames": frames,
            "frames_sent": sent.get("frames_sent"),
            "frames_shown": rendered,
            "frames_skipped": c["frames_skipped"],
            "packets_sent": sent.get("packets_sent"),
            "bytes_sent": sent.get("bytes_sent"),
            "packets_received": c["packets_received"],
            "packets_used": self.codec.stats.applied if self.codec is not None else 0,
            "packets_late": c["packets_late"],
            "packets_duplicate": c["packets_duplicate"],
            "datagrams_junk": c["datagrams_junk"],
            "datagrams_oversize": c["datagrams_oversize"],
            "codec_junk": self.codec.stats.junk if self.codec is not None else 0,
            "loss_events": self.codec.stats.loss_events if self.codec is not None else 0,
            "kbps": kbps,
            "kbps_received": c["bytes_received"] * 8 / (frames / fps) / 1000.0 if frames and fps else None,
            "forecast_share": c["frames_forecast"] / frames if frames else None,
            "keypoint_mae_raw": mean_or_none(*self._kp_error),
            "keypoint_mae_raw_lost": mean_or_none(*self._kp_error_lost),
            "pixel_mae_vs_full_rate": mean_or_none(*self._pixel_error),
            "latency_ms": latency_summary(self._latencies),
            "render_fps": rendered / self._render_seconds if self._render_seconds > 0 else None,
            "keyframe_requests": c["keyframe_requests"],
            "intra_period": self.session.policy["intra_period"] if self.session is not None else None,
            "out": str(self.out) if self.out is not None else None,
            "ended": ended,
        }
