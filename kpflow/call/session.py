"""The set-up of a call: what the sender says once, before any packet, and how the receiver answers.

On the control channel (reliable, ordered) the sender sends one **hello**::

    {"type": "hello", "protocol": PROTOCOL_VERSION,
     "fingerprint": {"fomm": "<hex>", "predictor": "hold_last" | "<hex>"},
     "fps": 30.0, "frame_shape": [H, W, 3],
     "source_png": "<base64 PNG of the source image>",
     "codec": "<base64 .npz of CodecParams.to_arrays()>",
     "codec_policy": {"policy", "threshold", "intra_period", "max_gap", "num_observed", "horizon"},
     "render_mode": "reconstruction" | "transfer"}

and the receiver answers ``{"type": "accept"}`` or ``{"type": "refuse", "reason": "<one line>"}``.
A refusal (another protocol version, another FOMM or predictor, a malformed set-up) ends the call on
both ends with that one-line reason: the sender closes the link with ``refused by the receiver:
<reason>`` and both raise :class:`SessionRefused`.

**Fingerprints** say whether both ends run the same models, without sending them: a SHA-256 of the
model's config (FOMM: ``config.model`` and the frame shape; a forecaster: its config without the
``data`` and ``train`` blocks) and of every weight array (path, dtype, shape and bytes, in sorted
path order), cut to :data:`FINGERPRINT_HEX` hex digits. The predictor must match too: sender and
receiver run the same predictor on the receiver's frames (``kpflow.codec``), so a different one
would drift silently.

**Codec parameters** travel in the hello, like a codebook. The sender fits them
(:func:`default_codec_params`) on, in this order of preference: keypoint series it is given (a
``--codec_fit DIR`` of ``.npz`` clips or of videos run through the detector: :func:`codec_fit_series`),
or else the first :data:`DEFAULT_FIT_SECONDS` seconds of the video being sent. The second is the
fallback only: a few seconds of one speaker cover little of the motion to come, and a frame outside
the fitted range (widened by half its span on each side, ``kpflow.codec.RANGE_MARGIN``) is clipped.
Fit on clips of other speakers when there are any. The default step and threshold (0.05 and 0.02,
raw keypoint units) are the codec's operating point on VoxCeleb keypoints with no speaker on both
sides (1.2 kbps at the papers' keypoint error, ``docs/results.md``).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import dataclasses
import hashlib
import io
import json
import math
import os
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

import numpy as np

from kpflow import codec
from kpflow.cli import one_line

PROTOCOL_VERSION = 1
# The frames both ends' codecs keep for their predictor (its longest context): a call's memory stays
# bounded however long it lasts, and the two ends predict from the same frames.
CONTEXT_FRAMES = 64
HOLD_LAST = "hold_last"  # the predictor fingerprint of kpflow.codec.hold_last (it has no weights)
FINGERPRINT_HEX = 16  # hex digits kept of a SHA-256 (64 bits: enough to tell models apart, short to read)
RENDER_MODES = ("reconstruction", "transfer")

# Seconds an end waits for the other's hello or answer before giving up.
SETUP_TIMEOUT_S = 30.0
# Seconds a refusing receiver waits for the sender to read the refusal and close, before closing itself.
REFUSE_GRACE_S = 1.0
# Reasons and other texts from the peer are cut to this many characters (one readable line).
MAX_REASON_CHARS = 300
# The largest hello fields accepted (base64 characters): a 1024x1024 PNG and a codec for K = 100
# keypoints fit well within them; anything larger is refused as malformed, not decoded.
MAX_SOURCE_PNG_CHARS = 16 * 2**20
MAX_CODEC_CHARS = 4 * 2**20
MAX_FPS = 240.0

# The codec the sender fits when it is told nothing else (see the module docstring).
DEFAULT_STEP = 0.05
DEFAULT_THRESHOLD = codec.DEFAULT_THRESHOLD
DEFAULT_FIT_SECONDS = 5.0
# The sender settings the hello carries under "codec_policy" (kpflow.codec.Sender's arguments).
POLICY_KEYS = ("policy", "threshold", "intra_period", "max_gap", "num_observed", "horizon")


class SessionRefused(ValueError):
    """The call was refused at set-up; ``reason`` is the one line both ends report."""

    def __init__(self, reason: str):
        self.reason = short_line(reason)
        super().__init__(self.reason)


class SetupFailed(ConnectionError):
    """The set-up did not finish: the peer closed the link or did not answer in time (one line)."""


def short_line(text) -> str:
    """``text`` as one line of at most :data:`MAX_REASON_CHARS` characters."""
    line = one_line(str(text))
    return line if len(line) <= MAX_REASON_CHARS else line[: MAX_REASON_CHARS - 3] + "..."


# -- fingerprints ------------------------------------------------------------------------------------


def model_fingerprint(config: dict, variables) -> str:
    """SHA-256 (first :data:`FINGERPRINT_HEX` hex digits) of a JSON-able ``config`` and the arrays of
    ``variables`` (any pytree): each leaf's path, dtype, shape and bytes, in sorted path order."""
    import jax

    h = hashlib.sha256(json.dumps(config, sort_keys=True, default=repr).encode())
    leaves = jax.tree_util.tree_flatten_with_path(variables)[0]
    for path, leaf in sorted(leaves, key=lambda item: jax.tree_util.keystr(item[0])):
        array = np.ascontiguousarray(np.asarray(leaf))
        h.update(f"{jax.tree_util.keystr(path)}|{array.dtype.str}|{array.shape}|".encode())
        h.update(array.tobytes())
    return h.hexdigest()[:FINGERPRINT_HEX]


def _to_dict(config) -> dict:
    return config.to_dict() if hasattr(config, "to_dict") else dict(config)


def fomm_fingerprint(fomm) -> str:
    """The fingerprint of a loaded ``kpflow.fomm.FOMM``: ``config.model``, the frame shape, and the
    detector's and generator's weights (a discriminator, unused in a call, is left out)."""
    from kpflow.fomm.model import frame_shape_of

    config = {"model": _to_dict(fomm.config.model), "frame_shape": list(frame_shape_of(fomm.config))}
    return model_fingerprint(config, {k: fomm.variables[k] for k in ("kp_detector", "generator")})


def forecaster_fingerprint(config, variables) -> str:
    """The fingerprint of a forecaster predictor: its run config without the ``data`` and ``train``
    blocks (where the data lives and how it was trained do not change its predictions) and its
    variables (scaler included). E.g. ``forecaster_fingerprint(trained.config, trained.variables)``."""
    config = {k: v for k, v in _to_dict(config).items() if k not in ("data", "train")}
    return model_fingerprint(config, variables)


# -- the hello -----------------------------------------------------------------------------------------


def encode_png(image: np.ndarray) -> str:
    """``image [H, W, 3]`` float in [0, 1] (or uint8) -> base64 text of its 8-bit PNG."""
    from PIL import Image

    image = np.asarray(image)
    if image.ndim != 3 or image.shape[-1] != 3:
        raise ValueError(f"the source image must be [H, W, 3]; got shape {image.shape}")
    if image.dtype != np.uint8:
        image = np.round(np.clip(np.asarray(image, np.float32), 0, 1) * 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def decode_png(text: str, frame_shape: Sequence[int]) -> np.ndarray:
    """Inverse of :func:`encode_png` -> ``[H, W, 3]`` float32 in [0, 1]; ValueError (one line) unless
    it is a PNG of exactly ``frame_shape`` (its size is checked before its pixels are decoded)."""
    from PIL import Image

    h, w = int(frame_shape[0]), int(frame_shape[1])
    try:
        raw = _b64(text, "source_png", MAX_SOURCE_PNG_CHARS)
    except TypeError as e:
        raise ValueError(str(e)) from None
    try:
        with Image.open(io.BytesIO(raw), formats=["PNG"]) as image:
            if image.size != (w, h):
                raise ValueError(f"source_png is {image.size[1]}x{image.size[0]}, not the {h}x{w} of frame_shape")
            pixels = np.asarray(image.convert("RGB"))
    except ValueError:
        raise
    except Exception as e:  # noqa: BLE001 -- PIL raises many types for a damaged image
        raise ValueError(f"source_png is not a readable PNG ({type(e).__name__})") from None
    return pixels.astype(np.float32) / 255.0


def encode_codec(params: codec.CodecParams) -> str:
    """``params.to_arrays()`` as base64 text of an ``.npz``."""
    buffer = io.BytesIO()
    np.savez(buffer, **params.to_arrays())
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def decode_codec(text: str) -> codec.CodecParams:
    """Inverse of :func:`encode_codec`; ValueError (one line) for anything that is not one."""
    try:
        raw = _b64(text, "codec", MAX_CODEC_CHARS)
    except TypeError as e:
        raise ValueError(str(e)) from None
    try:
        with np.load(io.BytesIO(raw), allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
    except Exception as e:  # noqa: BLE001 -- zipfile / numpy errors of a damaged archive
        raise ValueError(f"codec is not an .npz of plain arrays ({type(e).__name__})") from None
    try:
        return codec.CodecParams.from_arrays(arrays)
    except (ValueError, TypeError, KeyError, IndexError) as e:
        raise ValueError(f"codec: {one_line(e)}") from None


def _b64(text, field: str, limit: int) -> bytes:
    if not isinstance(text, str):
        raise TypeError(f"{field} must be base64 text; got {type(text).__name__}")
    if len(text) > limit:
        raise ValueError(f"{field} holds {len(text)} characters, more than the {limit} accepted")
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(f"{field} is not base64 text") from None


def codec_policy(policy: str = "threshold", threshold: float = DEFAULT_THRESHOLD,
                 intra_period: int = codec.DEFAULT_INTRA_PERIOD, max_gap: int = codec.DEFAULT_MAX_GAP,
                 num_observed: int = codec.PAPER_NUM_OBSERVED, horizon: int = codec.PAPER_HORIZON) -> dict:
    """The sender settings the hello carries: ``kpflow.codec.Sender(params, **codec_policy(...))``
    takes them (and checks them: a bad one is a one-line ValueError there)."""
    return {"policy": policy, "threshold": float(threshold), "intra_period": int(intra_period),
            "max_gap": int(max_gap), "num_observed": int(num_observed), "horizon": int(horizon)}


def make_hello(*, fomm_fingerprint: str, predictor_fingerprint: str, fps: float, source: np.ndarray,
               params: codec.CodecParams, policy: dict, render_mode: str = "reconstruction") -> dict:
    """The hello a sender sends (see the module docstring). ``source [H, W, 3]`` float in [0, 1];
    ``policy`` from :func:`codec_policy`."""
    if render_mode not in RENDER_MODES:
        raise ValueError(f"render_mode must be one of {RENDER_MODES}; got {render_mode!r}")
    check_fps(fps)
    source = np.asarray(source)
    return {
        "type": "hello",
        "protocol": PROTOCOL_VERSION,
        "fingerprint": {"fomm": fomm_fingerprint, "predictor": predictor_fingerprint},
        "fps": float(fps),
        "frame_shape": [int(source.shape[0]), int(source.shape[1]), 3],
        "source_png": encode_png(source),
        "codec": encode_codec(params),
        "codec_policy": {k: policy[k] for k in POLICY_KEYS},
        "render_mode": render_mode,
    }


def check_fps(fps) -> float:
    if isinstance(fps, bool) or not isinstance(fps, int | float) or not 0 < fps <= MAX_FPS or not math.isfinite(fps):
        raise ValueError(f"fps must be a number in (0, {MAX_FPS:g}]; got {fps!r}")
    return float(fps)


@dataclasses.dataclass(frozen=True)
class Session:
    """What both ends agreed on, as the receiver decoded it from the hello."""

    fps: float
    frame_shape: tuple[int, int, int]
    source: np.ndarray  # [H, W, 3] float32 in [0, 1]: the image the receiver animates
    params: codec.CodecParams
    policy: dict  # the sender's codec settings (POLICY_KEYS)
    render_mode: str
    fingerprint: dict


def parse_hello(message, *, fomm_fingerprint: str, predictor_fingerprint: str, frame_shape: Sequence[int],
                dim: int) -> Session:
    """Check a hello against this receiver's models -> :class:`Session`; :class:`SessionRefused` (the
    one-line reason to send back) for another protocol version, another model, or a malformed set-up.

    ``frame_shape``: this receiver's FOMM's (H, W); ``dim``: its keypoint vector length (6K).
    """
    if not isinstance(message, dict) or message.get("type") != "hello":
        kind = message.get("type") if isinstance(message, dict) else type(message).__name__
        raise SessionRefused(f"malformed set-up: expected a hello message first, got {short_line(repr(kind))[:60]}")
    version = message.get("protocol")
    if version != PROTOCOL_VERSION:
        raise SessionRefused(f"protocol version {short_line(repr(version))[:40]} differs from this receiver's "
                             f"{PROTOCOL_VERSION}: run the same kpflow version on both ends")
    theirs = message.get("fingerprint")
    if not isinstance(theirs, dict):
        raise SessionRefused("malformed set-up: fingerprint must be {\"fomm\": ..., \"predictor\": ...}")
    for key, ours, what in (("fomm", fomm_fingerprint, "FOMM"), ("predictor", predictor_fingerprint, "forecaster predictor")):
        if theirs.get(key) != ours:
            raise SessionRefused(f"the {what} differs (sender {short_line(repr(theirs.get(key)))[:40]}, receiver "
                                 f"{ours!r}): load the same {what} on both ends")
    try:
        fps = check_fps(message.get("fps"))
        shape = message.get("frame_shape")
        expected = [int(frame_shape[0]), int(frame_shape[1]), 3]
        if shape != expected:
            raise ValueError(f"frame_shape {short_line(repr(shape))[:40]} is not this FOMM's {expected}")
        source = decode_png(message.get("source_png"), expected)
        params = decode_codec(message.get("codec"))
        if params.quantizer.dim != dim:
            raise ValueError(f"the codec codes {params.quantizer.dim} numbers per frame, this FOMM's keypoints are {dim}")
        policy = message.get("codec_policy")
        if not isinstance(policy, dict) or any(k not in policy for k in POLICY_KEYS):
            raise ValueError(f"codec_policy must hold {list(POLICY_KEYS)}")
        policy = codec_policy(**{k: policy[k] for k in POLICY_KEYS})
        codec.Sender(params, **policy)  # checks the settings as the sender's codec did
        mode = message.get("render_mode", "reconstruction")
        if mode not in RENDER_MODES:
            raise ValueError(f"render_mode must be one of {RENDER_MODES}")
    except (ValueError, TypeError) as e:
        raise SessionRefused(f"malformed set-up: {one_line(e)}") from None
    return Session(fps=fps, frame_shape=tuple(expected), source=source, params=params, policy=policy,
                   render_mode=mode, fingerprint={"fomm": fomm_fingerprint, "predictor": predictor_fingerprint})


# -- the exchange -----------------------------------------------------------------------------------------


async def next_control(link, timeout: float | None) -> dict | None:
    """The next control message; None once the link is closed and none is queued. TimeoutError after
    ``timeout`` seconds (None: no limit)."""
    if not link.controls.empty():
        return link.controls.get_nowait()
    if link.closed.is_set():
        return None
    get = asyncio.ensure_future(link.controls.get())
    closed = asyncio.ensure_future(link.closed.wait())
    try:
        done, _ = await asyncio.wait({get, closed}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (get, closed):
            if not task.done():
                task.cancel()
    if get in done:
        return get.result()
    if closed in done:
        return link.controls.get_nowait() if not link.controls.empty() else None
    raise TimeoutError(f"no message from the peer within {timeout:g} s")


async def offer(link, hello: dict, timeout: float = SETUP_TIMEOUT_S) -> None:
    """The sender's side: send ``hello`` and wait for the answer.

    Raises :class:`SessionRefused` (after closing the link with ``refused by the receiver: <reason>``)
    when the receiver refuses, :class:`SetupFailed` when the link closes or no answer comes in time.
    """
    await link.send_control(hello)
    try:
        reply = await next_control(link, timeout)
    except TimeoutError:
        await link.close("no answer to the hello")
        raise SetupFailed(f"the receiver did not answer the set-up within {timeout:g} s") from None
    if reply is None:
        raise SetupFailed(f"the link closed during set-up ({short_line(link.close_reason) or 'no reason given'})")
    kind = reply.get("type") if isinstance(reply, dict) else None
    if kind == "accept":
        return
    reason = short_line(reply.get("reason", "no reason given")) if kind == "refuse" else \
        f"malformed answer to the hello: {short_line(repr(reply))[:80]}"
    await link.close(f"refused by the receiver: {reason}")
    raise SessionRefused(reason)


async def answer(link, *, fomm_fingerprint: str, predictor_fingerprint: str, frame_shape: Sequence[int], dim: int,
                 timeout: float = SETUP_TIMEOUT_S,
                 prepare: Callable[[Session], Awaitable[None]] | None = None) -> Session:
    """The receiver's side: wait for the hello, check it (:func:`parse_hello`), accept or refuse.

    ``prepare(session)``, when given, runs between the check and the accept (the receiver compiles
    its renderer there, so that the sender's clock starts when the receiver's can); a ValueError or
    OSError it raises refuses the call (``the receiver cannot start: ...``).

    On a refusal it sends ``{"type": "refuse", "reason": ...}``, lets the sender close the link (at
    most :data:`REFUSE_GRACE_S`), closes it itself otherwise, and raises :class:`SessionRefused`.
    """
    try:
        hello = await next_control(link, timeout)
    except TimeoutError:
        await link.close("no hello from the sender")
        raise SetupFailed(f"no set-up from the sender within {timeout:g} s") from None
    if hello is None:
        raise SetupFailed(f"the link closed before the set-up ({short_line(link.close_reason) or 'no reason given'})")
    try:
        session = parse_hello(hello, fomm_fingerprint=fomm_fingerprint, predictor_fingerprint=predictor_fingerprint,
                              frame_shape=frame_shape, dim=dim)
        if prepare is not None:
            try:
                await prepare(session)
            except (ValueError, OSError) as e:
                raise SessionRefused(f"the receiver cannot start: {one_line(e)}") from None
    except SessionRefused as refused:
        await link.send_control({"type": "refuse", "reason": refused.reason})
        try:
            await asyncio.wait_for(link.closed.wait(), REFUSE_GRACE_S)
        except TimeoutError:
            await link.close(f"refused by the receiver: {refused.reason}")
        raise
    await link.send_control({"type": "accept"})
    return session


# -- codec parameters -------------------------------------------------------------------------------------


def fit_codec(series: Sequence[np.ndarray], *, step: float = DEFAULT_STEP, predict: codec.FramePredictor = codec.hold_last,
              policy: dict | None = None) -> codec.CodecParams:
    """Codec parameters fitted on keypoint ``series`` (``[T >= 2, D]`` each), then refitted to what a
    sender with ``policy`` (:func:`codec_policy`; default its defaults) sends there."""
    policy = codec_policy() if policy is None else policy
    series = [np.asarray(s, np.float32) for s in series]
    params = codec.CodecParams.fit(series, step, predict)
    return params.fit_to_policy(series, predict, **policy)


def codec_fit_series(fomm, path: str | os.PathLike, *, batch_size: int = 32, flag: str = "--codec_fit") -> list[np.ndarray]:
    """The keypoint series ``[T, 6K]`` of a fitting folder: its ``.npz`` clips (``value [T, K, 2]``,
    ``jacobian [T, K, 2, 2]``) if it holds any, else its videos run through ``fomm``'s detector.
    ValueError (one line naming ``flag``) when there is nothing usable."""
    from kpflow.cli import UsageError
    from kpflow.io import keypoint_series, load_npz, read_frames, video_paths
    from kpflow.keypoints import keypoints_to_vector

    folder = Path(path)
    if not folder.is_dir():
        raise ValueError(f"{flag} {str(folder)!r} is not a folder (of .npz keypoint clips or of videos)")
    dim = 6 * fomm.num_kp
    clips = sorted(folder.glob("*.npz"))
    series = []
    try:
        if clips:
            for clip in clips:
                arrays = load_npz(clip, "a keypoint clip (value, jacobian)")
                if "value" not in arrays or "jacobian" not in arrays:
                    raise ValueError(f"{flag}: {clip} holds no value and jacobian arrays")
                s = keypoints_to_vector(arrays["value"], arrays["jacobian"])
                if s.ndim != 2 or s.shape[1] != dim:
                    raise ValueError(f"{flag}: {clip} has keypoint vectors of shape {s.shape[1:]}, this FOMM's are [{dim}]")
                series.append(s)
        else:
            from kpflow.fomm.model import frame_shape_of

            for video in video_paths(folder, split="train", flag=flag):
                series.append(keypoint_series(fomm, read_frames(video, frame_shape_of(fomm.config)), batch_size))
    except (UsageError, FileNotFoundError) as e:
        raise ValueError(one_line(e)) from None
    series = [s for s in series if len(s) >= 2]
    if not series:
        raise ValueError(f"{flag} {str(folder)!r} holds no clip of 2 frames or more to fit the codec on")
    return series


def default_codec_params(fomm, series: Sequence[np.ndarray] | None = None, *, fit_dir: str | os.PathLike | None = None,
                         first_frames: np.ndarray | None = None, step: float = DEFAULT_STEP,
                         predict: codec.FramePredictor = codec.hold_last, policy: dict | None = None,
                         batch_size: int = 32) -> codec.CodecParams:
    """The sender's codec parameters, fitted on the first of these that is given:

    - ``series``: keypoint series ``[T, 6K]`` (e.g. other speakers' clips);
    - ``fit_dir``: a folder of ``.npz`` keypoint clips or of videos (:func:`codec_fit_series`);
    - ``first_frames``: ``[T, H, W, 3]`` frames in [0, 1], the first seconds of the video being sent
      (:data:`DEFAULT_FIT_SECONDS` of them is the fallback the module docstring argues against).

    ``policy``: the sender's :func:`codec_policy` (its histograms are refitted to it).
    """
    from kpflow.io import keypoint_series

    if series is not None:
        series = [np.asarray(s, np.float32) for s in series]
    elif fit_dir is not None:
        series = codec_fit_series(fomm, fit_dir, batch_size=batch_size)
    elif first_frames is not None:
        frames = np.asarray(first_frames, np.float32)
        if frames.ndim != 4 or len(frames) < 2:
            raise ValueError(f"first_frames must be [T >= 2, H, W, 3]; got shape {frames.shape}")
        series = [keypoint_series(fomm, frames, batch_size)]
    else:
        raise ValueError("give the codec something to fit on: keypoint series, a folder (--codec_fit) or the first frames")
    dim = 6 * fomm.num_kp
    bad = [np.shape(s) for s in series if np.ndim(s) != 2 or np.shape(s)[1] != dim or len(s) < 2]
    if bad or not series:
        raise ValueError(f"codec fitting series must be [T >= 2, {dim}] for this FOMM; got shapes {bad[:3] or '(none)'}")
    return fit_codec(series, step=step, predict=predict, policy=policy)
