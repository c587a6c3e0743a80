"""The sending end of a call: frames in, keypoint datagrams out.

A :class:`CallSender` reads frames (a video file, a folder of images or a camera:
:func:`open_source`, each frame centre-cropped and resized to the FOMM's frame shape), runs the
FOMM detector on them, codes the keypoints with ``kpflow.codec.Sender`` and sends each packet as
one datagram::

    [1 byte: frame index mod 256] + codec packet

The index byte lets the receiver place the packet on its own frame clock (it unwraps the index
against that clock: packets never travel more than 128 frames); the codec packet itself carries no
frame index (``kpflow.codec`` is frame-clocked). Every byte of the datagram counts in the bitrate
(``SenderStats.kbps``). Frames for which the codec sends nothing send no datagram.

Before any packet the sender sends the set-up (:mod:`kpflow.call.session`) and waits for the
receiver's accept. During the call it answers ``{"type": "keyframe_request"}`` controls with
``kpflow.codec.Sender.request_intra`` (the next frame goes intra). At the end of the frames it
sends ``{"type": "end", "frames_sent", "packets_sent", "bytes_sent"}`` and closes the link with
``"sender finished"``.

**Pacing.** ``realtime=True`` (the default) sends frame ``t`` at ``t / fps`` seconds after the call
starts (a camera paces itself); a frame read more than :data:`MAX_LAG_FRAMES` frames late is not
run through the detector: the codec steps with the last keypoints (the frame clock never stops) and
``frames_late`` counts it. ``realtime=False`` sends as fast as the detector runs, in batches of
``detect_batch`` frames: for tests and throughput measurements, with a receiver driven in step.

**Impairment** (:class:`Impairment`) happens before the link, since a loopback WebRTC link never
loses a packet: loss (a Gilbert-Elliott channel: long-run rate and mean burst length,
``kpflow.channel.LossProcess``), duplication, reordering (a reordered datagram is delivered after
the next frame's datagram), and a delay with jitter (each datagram delayed by ``delay_ms`` plus a
uniform draw in ``[-jitter_ms, jitter_ms]``, never below 0; jitter reorders too).
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import re
import sys
import time
import warnings
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import numpy as np

from kpflow import codec
from kpflow.call import session as sess
from kpflow.call.stats import LoopbackReference, ReferenceFrame
from kpflow.channel import LossProcess, check_loss

FRAME_INDEX_MODULO = 256  # the datagram's first byte: the frame index mod 256
DEFAULT_FPS = 30.0  # a folder of images, a camera, or a video that states no frame rate
DEFAULT_DETECT_BATCH = 8
# In real time, a frame read more than this many frame periods late skips the detector.
MAX_LAG_FRAMES = 2
CAMERA = re.compile(r"<video(\d+)>$")


def datagram(frame_index: int, packet: bytes) -> bytes:
    """``[frame_index mod 256] + packet``: what goes on the wire for one frame's codec packet."""
    return bytes([frame_index % FRAME_INDEX_MODULO]) + bytes(packet)


# -- frame sources -------------------------------------------------------------------------------------


def fit_frame(frame: np.ndarray, frame_shape) -> np.ndarray:
    """One picture (``[h, w]`` grey, ``[h, w, 1-4]``; uint8, uint16 or float in [0, 1]) -> ``[H, W, 3]``
    float32 in [0, 1]: the largest centred window of the target's aspect ratio, resized bilinearly."""
    from PIL import Image

    from kpflow.data.videos import frames_to_float

    image = np.asarray(frame)
    if image.ndim == 2:
        image = image[..., None]
    if image.ndim != 3 or image.shape[-1] not in (1, 2, 3, 4) or min(image.shape[:2]) < 1:
        raise ValueError(f"a frame must be [h, w] or [h, w, 1-4] pixels; got shape {image.shape}")
    image = np.repeat(image[..., :1], 3, axis=-1) if image.shape[-1] < 3 else image[..., :3]
    if image.dtype != np.uint8:
        image = np.round(frames_to_float(image) * 255).astype(np.uint8)
    height, width = int(frame_shape[0]), int(frame_shape[1])
    h, w = image.shape[:2]
    if w * height > h * width:  # too wide: keep the centre columns
        keep = max(1, round(h * width / height))
        image = image[:, (w - keep) // 2 : (w - keep) // 2 + keep]
    elif w * height < h * width:  # too tall: keep the centre rows
        keep = max(1, round(w * height / width))
        image = image[(h - keep) // 2 : (h - keep) // 2 + keep]
    if image.shape[:2] != (height, width):
        image = np.asarray(Image.fromarray(np.ascontiguousarray(image)).resize((width, height), Image.Resampling.BILINEAR))
    return image.astype(np.float32) / 255.0


@dataclasses.dataclass
class FrameSource:
    """Frames to send: ``frames`` yields ``[H, W, 3]`` float32 in [0, 1] at the FOMM's frame shape;
    ``fps`` is the clip's frame clock; ``live`` sources (cameras) pace themselves."""

    frames: Iterator[np.ndarray]
    fps: float
    name: str
    live: bool = False


def open_source(spec: str | os.PathLike, frame_shape, fps: float | None = None) -> FrameSource:
    """The frames of ``spec``: a camera (``<video0>``, ``/dev/video0``), a folder of images (sorted by
    name), or a video file (``.mp4``/``.mov``/``.avi`` streamed by ffmpeg; ``.gif`` and frame strips
    read whole). ``fps`` overrides the file's own rate (folders and cameras default to
    :data:`DEFAULT_FPS`). ValueError (one line naming ``spec``) when it cannot be opened."""
    text = os.fspath(spec)
    if fps is not None:
        sess.check_fps(fps)
    if CAMERA.match(text) or text.startswith("/dev/video"):
        return camera_frames(text, frame_shape, fps or DEFAULT_FPS)
    path = Path(text)
    if not path.exists():
        raise ValueError(f"video source {text!r} does not exist (give a video file, a folder of images, "
                         "or a camera such as <video0> or /dev/video0)")
    if path.is_dir():
        return folder_frames(path, frame_shape, fps or DEFAULT_FPS)
    return video_frames(path, frame_shape, fps)


def _wrapped(frames: Iterable, frame_shape, name: str) -> Iterator[np.ndarray]:
    """``frames`` fitted to ``frame_shape``; a decoder failure mid-stream becomes one ValueError line."""
    from kpflow.data.videos import VideoReadError

    iterator = iter(frames)
    first = True
    while True:
        try:
            if first:  # a movie's ffmpeg starts here
                with warnings.catch_warnings():
                    # a subprocess (fork + exec at once), which JAX's fork warning does not concern
                    warnings.filterwarnings("ignore", message=r"os\.fork\(\) was called", category=RuntimeWarning)
                    frame, first = next(iterator), False
            else:
                frame = next(iterator)
        except StopIteration:
            return
        except VideoReadError:
            raise
        except Exception as e:  # noqa: BLE001 -- ffmpeg and PIL raise many types; one line for the user
            raise ValueError(f"{name}: cannot read a frame ({type(e).__name__}: {sess.short_line(e)[:160]})") from None
        yield fit_frame(frame, frame_shape)


def video_frames(path: str | os.PathLike, frame_shape, fps: float | None = None) -> FrameSource:
    """A video file's frames. Movies stream through ffmpeg (imageio, as ``kpflow.data.videos``
    decodes them) at their stated frame rate unless ``fps`` is given."""
    import imageio.v3 as iio

    from kpflow.data.videos import MOVIE_EXTENSIONS, VideoReadError, read_video

    path = Path(path)
    suffix = path.suffix.lower()
    try:
        if suffix in MOVIE_EXTENSIONS:
            meta = iio.immeta(path, plugin="FFMPEG")
            rate = fps or _rate(meta.get("fps"))
            frames = iio.imiter(path, plugin="FFMPEG")
        else:
            frames = read_video(path)  # gif or frame strip: small, read whole; VideoReadError otherwise
            rate = fps
            if rate is None and suffix == ".gif":
                duration_ms = iio.immeta(path, plugin="pillow").get("duration")
                rate = _rate(1000.0 / duration_ms if duration_ms else None)
    except VideoReadError as e:
        raise ValueError(str(e)) from None
    except Exception as e:  # noqa: BLE001 -- imageio / ffmpeg failures: one line
        raise ValueError(f"{path}: cannot read video ({type(e).__name__}: {sess.short_line(e)[:160]})") from None
    return FrameSource(_wrapped(frames, frame_shape, str(path)), rate or DEFAULT_FPS, str(path))


def _rate(fps) -> float | None:
    try:
        return sess.check_fps(float(fps))
    except (TypeError, ValueError):
        return None


def folder_frames(path: str | os.PathLike, frame_shape, fps: float = DEFAULT_FPS) -> FrameSource:
    """The ``.png``/``.jpg`` images of a folder, in file-name order, as frames at ``fps``."""
    import imageio.v3 as iio

    from kpflow.data.videos import IMAGE_EXTENSIONS

    path = Path(path)
    files = sorted(p for p in path.iterdir()
                   if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_EXTENSIONS)
    if not files:
        raise ValueError(f"{path}: a folder with no .png/.jpg images to send")

    def read(file: Path) -> np.ndarray:
        try:
            return np.asarray(iio.imread(file))
        except Exception as e:  # noqa: BLE001 -- one line naming the image
            raise ValueError(f"{file}: cannot read image ({type(e).__name__})") from None

    return FrameSource(_wrapped((read(f) for f in files), frame_shape, str(path)), float(fps), str(path))


def camera_frames(device: str, frame_shape, fps: float = DEFAULT_FPS) -> FrameSource:
    """A camera's frames: ``<videoN>`` or ``/dev/videoN`` read by ffmpeg's video4linux2 input on
    Linux (imageio's ``<videoN>`` reader elsewhere), asked for ``fps`` frames a second. ValueError
    (one line) when the device is absent or ffmpeg cannot open it."""
    match = CAMERA.match(device)
    if sys.platform.startswith("linux"):
        import imageio_ffmpeg

        node = f"/dev/video{match.group(1)}" if match else device
        if not os.path.exists(node):
            raise ValueError(f"camera {device!r}: {node} does not exist (is a camera attached? list them with ls /dev/video*)")
        reader = imageio_ffmpeg.read_frames(node, input_params=["-f", "video4linux2", "-framerate", f"{fps:g}"])
        try:
            meta = next(reader)
        except Exception as e:  # noqa: BLE001 -- ffmpeg's failure to open the device: one line
            raise ValueError(f"camera {device!r}: ffmpeg cannot open {node} ({sess.short_line(e)[:160]})") from None
        width, height = meta["size"]
        pictures = (np.frombuffer(buffer, np.uint8).reshape(height, width, 3) for buffer in reader)
    else:
        import imageio.v2 as imageio

        if not match:
            raise ValueError(f"camera {device!r}: name a camera as <videoN> on this platform")
        try:
            pictures = iter(imageio.get_reader(device, format="FFMPEG", fps=fps))
        except Exception as e:  # noqa: BLE001 -- one line
            raise ValueError(f"camera {device!r}: cannot open it ({sess.short_line(e)[:160]})") from None
    return FrameSource(_wrapped(pictures, frame_shape, f"camera {device}"), float(fps), f"camera {device}", live=True)


# -- impairment ----------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Impairment:
    """What the sender does to its datagrams before the link (see the module docstring).

    ``loss``: long-run share of datagrams dropped, in [0, 1); ``burst``: mean length of a loss run
    (>= 1; 1 = independent losses); ``reorder``, ``duplicate``: probabilities per datagram;
    ``delay_ms``, ``jitter_ms``: >= 0; ``seed``: of every draw.
    """

    loss: float = 0.0
    burst: float = 1.0
    reorder: float = 0.0
    duplicate: float = 0.0
    delay_ms: float = 0.0
    jitter_ms: float = 0.0
    seed: int = 0

    def __post_init__(self):
        try:
            check_loss(self.loss, self.burst)
        except ValueError as e:
            raise ValueError(f"impairment: {e}") from None
        for name in ("reorder", "duplicate"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"impairment: {name} must be a probability in [0, 1]; got {getattr(self, name)}")
        for name in ("delay_ms", "jitter_ms"):
            value = getattr(self, name)
            if not (value >= 0 and np.isfinite(value)):
                raise ValueError(f"impairment: {name} must be >= 0 milliseconds; got {value}")

    @property
    def active(self) -> bool:
        return any((self.loss, self.reorder, self.duplicate, self.delay_ms, self.jitter_ms))


class ImpairedChannel:
    """Datagrams through an :class:`Impairment` to ``send`` (an async callable, e.g. ``link.send_packet``).

    Call :meth:`send` for the frame's datagram, :meth:`end_frame` after every frame (it releases the
    datagrams reordered one frame earlier) and :meth:`flush` at the end (it releases what is held and
    waits for the delayed ones).
    """

    def __init__(self, send: Callable, impairment: Impairment):
        self._send = send
        self.impairment = impairment
        seed = int(impairment.seed)
        self._loss = LossProcess(impairment.loss, impairment.burst, np.random.default_rng([seed, 0]))
        self._rng = np.random.default_rng([seed, 1])
        self._held_now: list[bytes] = []  # reordered in this frame
        self._held_before: list[bytes] = []  # reordered in the previous frame: released at this frame's end
        self._pending: set[asyncio.Task] = set()
        self.dropped = self.duplicated = self.reordered = 0

    async def send(self, data: bytes) -> None:
        imp = self.impairment
        if self._loss.lost():
            self.dropped += 1
            return
        copies = 1
        if imp.duplicate and self._rng.random() < imp.duplicate:
            copies, self.duplicated = 2, self.duplicated + 1
        for _ in range(copies):
            if imp.reorder and self._rng.random() < imp.reorder:
                self.reordered += 1
                self._held_now.append(data)
            else:
                await self._deliver(data)

    async def end_frame(self) -> None:
        released, self._held_before, self._held_now = self._held_before, self._held_now, []
        for data in released:
            await self._deliver(data)

    async def flush(self) -> None:
        for data in self._held_before + self._held_now:
            await self._deliver(data)
        self._held_before, self._held_now = [], []
        if self._pending:
            await asyncio.gather(*list(self._pending), return_exceptions=True)

    async def _deliver(self, data: bytes) -> None:
        imp = self.impairment
        if not imp.delay_ms and not imp.jitter_ms:
            await self._send(data)
            return
        seconds = max(0.0, imp.delay_ms + imp.jitter_ms * self._rng.uniform(-1, 1)) / 1000.0
        task = asyncio.ensure_future(self._later(seconds, data))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _later(self, seconds: float, data: bytes) -> None:
        await asyncio.sleep(seconds)
        await self._send(data)


# -- the sender ------------------------------------------------------------------------------------------


@dataclasses.dataclass
class SenderStats:
    """What a sender did. ``bytes_sent`` counts whole datagrams (index byte included), before any
    impairment; ``kbps`` is their rate over ``frames_sent`` frames at ``fps``."""

    fps: float
    frames_sent: int = 0  # frames stepped through the codec (one per frame read)
    frames_late: int = 0  # of those, read too late in real time to run the detector (keypoints held)
    packets_sent: int = 0
    bytes_sent: int = 0
    intra_packets: int = 0
    keyframe_requests: int = 0
    packets_dropped: int = 0  # by the impairment
    packets_duplicated: int = 0
    packets_reordered: int = 0
    ended: str = ""  # why the sender stopped: "sender finished" or the link's close reason

    @property
    def kbps(self) -> float:
        seconds = self.frames_sent / self.fps
        return self.bytes_sent * 8 / seconds / 1000.0 if seconds else 0.0

    def to_dict(self) -> dict:
        return {**dataclasses.asdict(self), "kbps": self.kbps}


def detect_keypoints(fomm, frames: np.ndarray, batch_size: int) -> np.ndarray:
    """``frames [B, H, W, 3]`` -> keypoint vectors ``[B, 6K]`` float32 (batches of ``batch_size``, padded)."""
    from kpflow.io import keypoint_series

    return np.asarray(keypoint_series(fomm, frames, batch_size), np.float32)


class CallSender:
    """The sending end of a call over a ``kpflow.call.link.Link``.

    Args:
      link: the link to the receiver.
      fomm: a loaded ``kpflow.fomm.FOMM`` (its detector; its fingerprint goes in the hello).
      params: the codec parameters (:func:`kpflow.call.session.default_codec_params`).
      fps: the frame clock (a :class:`FrameSource`'s ``fps``).
      policy: the codec sender's settings (:func:`kpflow.call.session.codec_policy`; default its defaults).
      predict: the codec's ``FramePredictor`` (the receiver must run the same one);
        ``predictor_fingerprint`` names it in the hello (``"hold_last"``, or
        :func:`kpflow.call.session.forecaster_fingerprint` of a forecaster).
      impairment: an :class:`Impairment` applied before the link, or None.
      reference: a :class:`kpflow.call.stats.LoopbackReference` to record every frame in (loopback only).
      detect_batch: frames per detector call when not in real time.
      status_every_s: send ``{"type": "status", "frames_sent", "packets_sent", "bytes_sent"}`` this
        often (0: never; the bye carries them at the end). Controls are not counted in ``kbps``.
      fingerprint: the FOMM's fingerprint, if already computed (else it is, once).

    Use :meth:`run` for a whole call, or :meth:`start`, then :meth:`step` (or :meth:`step_keypoints`)
    per frame, then :meth:`finish`.
    """

    def __init__(self, link, fomm, params: codec.CodecParams, *, fps: float = DEFAULT_FPS, policy: dict | None = None,
                 predict: codec.FramePredictor = codec.hold_last, predictor_fingerprint: str = sess.HOLD_LAST,
                 impairment: Impairment | None = None, reference: LoopbackReference | None = None,
                 detect_batch: int = DEFAULT_DETECT_BATCH, status_every_s: float = 0.0, fingerprint: str | None = None):
        if int(detect_batch) < 1:
            raise ValueError(f"detect_batch must be >= 1; got {detect_batch}")
        if not status_every_s >= 0:
            raise ValueError(f"status_every_s must be >= 0; got {status_every_s}")
        self.link = link
        self.fomm = fomm
        self.params = params
        self.fps = sess.check_fps(fps)
        self.policy = sess.codec_policy() if policy is None else dict(policy)
        self.codec = codec.Sender(params, predict, memory=sess.CONTEXT_FRAMES, **self.policy)
        self.predictor_fingerprint = predictor_fingerprint
        self.fingerprint = fingerprint or sess.fomm_fingerprint(fomm)
        self.channel = ImpairedChannel(link.send_packet, impairment) if impairment is not None and impairment.active else None
        self.reference = reference
        self.detect_batch = int(detect_batch)
        self.status_every = round(status_every_s * self.fps)
        self.dim = 6 * fomm.num_kp
        self.frame = 0
        self.started = False
        self.stats = SenderStats(fps=self.fps)
        self._last_keypoints: np.ndarray | None = None

    # -- set-up and end ------------------------------------------------------------------------------

    async def start(self, source: np.ndarray, *, render_mode: str = "reconstruction",
                    timeout: float = sess.SETUP_TIMEOUT_S) -> None:
        """Compile the detector, send the hello with ``source [H, W, 3]`` (the image the receiver
        animates: the first frame in ``reconstruction`` mode) and wait for the accept.
        Raises ``SessionRefused`` or ``SetupFailed`` (both one line)."""
        from kpflow.fomm.model import frame_shape_of

        source = np.asarray(source, np.float32)
        shape = frame_shape_of(self.fomm.config)
        if source.shape != (*shape, 3):
            raise ValueError(f"the source image must be [{shape[0]}, {shape[1]}, 3] (this FOMM's frames); got {source.shape}")
        await asyncio.to_thread(detect_keypoints, self.fomm, source[None], 1)  # compile before the clock starts
        hello = sess.make_hello(fomm_fingerprint=self.fingerprint, predictor_fingerprint=self.predictor_fingerprint,
                                fps=self.fps, source=source, params=self.params, policy=self.policy,
                                render_mode=render_mode)
        await sess.offer(self.link, hello, timeout)
        self.started = True

    async def set_impairment(self, impairment: Impairment | None) -> None:
        """Change the impairment mid-call (None: none from now on); what the old one holds is released first."""
        await self._drop_channel()
        if impairment is not None and impairment.active:
            self.channel = ImpairedChannel(self.link.send_packet, impairment)

    async def _drop_channel(self) -> None:
        if self.channel is not None:
            await self.channel.flush()
            self.stats.packets_dropped += self.channel.dropped
            self.stats.packets_duplicated += self.channel.duplicated
            self.stats.packets_reordered += self.channel.reordered
            self.channel = None

    async def finish(self, reason: str = "sender finished") -> SenderStats:
        """Release what the impairment holds, send the bye and close the link (if it is still open)."""
        await self._drop_channel()
        if not self.link.closed.is_set():
            await self.link.send_control({"type": "end", **self._counts()})
            await self.link.close(reason)
            self.stats.ended = reason
        else:
            self.stats.ended = self.stats.ended or sess.short_line(self.link.close_reason)
        return self.stats

    def _counts(self) -> dict:
        return {"frames_sent": self.stats.frames_sent, "packets_sent": self.stats.packets_sent,
                "bytes_sent": self.stats.bytes_sent}

    # -- per frame -------------------------------------------------------------------------------------

    def _read_controls(self) -> None:
        while not self.link.controls.empty():
            message = self.link.controls.get_nowait()
            if isinstance(message, dict) and message.get("type") == "keyframe_request":
                self.codec.request_intra()
                self.stats.keyframe_requests += 1

    async def step(self, frame: np.ndarray, capture_time: float | None = None) -> bytes | None:
        """Detect the keypoints of one frame ``[H, W, 3]`` and send them; -> the datagram sent, or None."""
        capture_time = time.monotonic() if capture_time is None else capture_time
        x = await asyncio.to_thread(detect_keypoints, self.fomm, np.asarray(frame, np.float32)[None], 1)
        return await self.step_keypoints(x[0], capture_time)

    async def step_keypoints(self, keypoints: np.ndarray, capture_time: float | None = None) -> bytes | None:
        """Code and send one frame's keypoint vector ``[6K]``; -> the datagram sent (before any
        impairment), or None when the codec sent nothing for this frame."""
        if not self.started:
            raise RuntimeError("call start() (the set-up) before sending frames")
        capture_time = time.monotonic() if capture_time is None else capture_time
        self._read_controls()
        x = np.asarray(keypoints, np.float32)
        packet = self.codec.step(x)
        self._last_keypoints = x
        data = None
        if packet is not None:
            data = datagram(self.frame, packet)
            self.stats.packets_sent += 1
            self.stats.bytes_sent += len(data)
            self.stats.intra_packets += bool(packet[0] & codec.INTRA_FLAG)
        if self.reference is not None:
            self.reference.record(ReferenceFrame(self.frame, capture_time, x, data, self.codec.mirror.history[-1].copy()))
        if data is not None:
            await (self.channel.send(data) if self.channel is not None else self.link.send_packet(data))
        if self.channel is not None:
            await self.channel.end_frame()
        self.frame += 1
        self.stats.frames_sent += 1
        if self.status_every and self.frame % self.status_every == 0:
            await self.link.send_control({"type": "status", **self._counts()})
        return data

    # -- a whole call ------------------------------------------------------------------------------------

    async def run(self, frames: Iterable[np.ndarray], *, realtime: bool = True, live: bool = False,
                  source: np.ndarray | None = None, render_mode: str | None = None,
                  timeout: float = sess.SETUP_TIMEOUT_S) -> SenderStats:
        """Send every frame of ``frames`` (e.g. ``open_source(...).frames``), then finish.

        The set-up is made first if :meth:`start` was not called: with ``source`` (``transfer``
        mode), or the first frame (``reconstruction`` mode). ``live``: the frames come at their own
        pace (a camera). Stops early, without a bye, when the link closes.
        """
        iterator = iter(frames)
        first = await asyncio.to_thread(next, iterator, None)
        if first is None:
            raise ValueError("the video source gave no frame to send")
        if not self.started:
            mode = render_mode or ("reconstruction" if source is None else "transfer")
            await self.start(first if source is None else source, render_mode=mode, timeout=timeout)
        if not realtime:
            await asyncio.to_thread(detect_keypoints, self.fomm, np.repeat(first[None], self.detect_batch, 0),
                                    self.detect_batch)  # compile the batch shape too
        pending = [first]
        clock = time.monotonic()
        while not self.link.closed.is_set():
            if realtime:
                frame = pending.pop() if pending else await asyncio.to_thread(next, iterator, None)
                if frame is None:
                    break
                captured = time.monotonic()
                due = clock + self.frame / self.fps
                if not live and captured < due:
                    await asyncio.sleep(due - captured)
                    captured = time.monotonic()
                if not live and captured - due > MAX_LAG_FRAMES / self.fps and self._last_keypoints is not None:
                    self.stats.frames_late += 1
                    await self.step_keypoints(self._last_keypoints, captured)
                else:
                    await self.step(frame, captured)
            else:
                while len(pending) < self.detect_batch:
                    frame = await asyncio.to_thread(next, iterator, None)
                    if frame is None:
                        break
                    pending.append(frame)
                if not pending:
                    break
                captured = time.monotonic()
                batch = await asyncio.to_thread(detect_keypoints, self.fomm, np.stack(pending), self.detect_batch)
                pending = []
                for x in batch:
                    if self.link.closed.is_set():
                        break
                    await self.step_keypoints(x, captured)
                await asyncio.sleep(0)
        return await self.finish()
