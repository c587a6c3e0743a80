"""The page a receiver serves: the live video and the call's statistics, in a browser.

:func:`add_viewer_routes` adds four routes to an aiohttp application (the receiver's
:class:`~kpflow.call.transport.CallServer` ``app``, before it starts), fed by two callables:
``latest_frame() -> frame [H, W, 3] (float32 in [0, 1], or uint8) | None`` (the newest frame shown;
None before the first) and ``stats() -> dict`` (the receiver's live statistics,
:meth:`kpflow.call.receiver.CallReceiver.stats`). Both are called on the event loop and must be quick.

- ``GET /``: one self-contained HTML page (inline CSS and JavaScript, no external URL): the video,
  scaled up with crisp pixels, and a statistics panel that polls ``/stats`` once a second;
- ``GET /stream.mjpg``: the video as ``multipart/x-mixed-replace`` JPEG parts, at most
  :data:`MAX_STREAM_FPS` a second and only when the frame changed; it ends when the client goes, when
  the call ends (after the last frame) or when the server stops;
- ``GET /frame.jpg``: the latest frame, once (503 before the first);
- ``GET /stats``: ``{"stats": <stats(), non-finite numbers as null>, "state": "waiting" | "live" |
  "ended", "reason": str, "panel": [{"key", "label", "value"}, ...]}``; the panel's rows are what the
  page shows (:func:`panel_rows`), so formatting is done (and tested) here, not in JavaScript.

The call's state (:func:`call_state`) is ``stats["state"]`` when given, else ``ended`` when
``stats["ended"]`` holds a reason, ``live`` once a frame has been shown and ``waiting`` before.
The latency row says "estimated from the round trip" when ``stats["latency_source"]`` names one
(``"round_trip"``, ``"rtt"``); without such a key the latency is taken as measured on one clock.

Example (a receiver's server; the browser opens ``server.url``)::

    server = CallServer(token)
    add_viewer_routes(server.app, lambda: receiver.last_frame, receiver.stats)
    await server.start()
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import logging
import math
import time
from collections.abc import Callable

import numpy as np
from aiohttp import web
from PIL import Image

log = logging.getLogger(__name__)

#: the stream sends at most this many frames a second
MAX_STREAM_FPS = 30.0
#: while the call is live, the stream looks at the statistics (for the end) this often
STATE_CHECK_S = 0.5
#: frames larger than this (pixels) are JPEG-encoded in a worker thread, off the event loop
INLINE_ENCODE_PIXELS = 128 * 128
JPEG_QUALITY = 90
BOUNDARY = "kpflowframe"
#: the size the page shows the video at (CSS pixels; a 64x64 frame is scaled up 8x)
DISPLAY_WIDTH = 512

FrameSource = Callable[[], "np.ndarray | None"]
StatsSource = Callable[[], dict]


# --- what the panel shows --------------------------------------------------------------------------

def call_state(stats: dict) -> tuple[str, str]:
    """``(state, reason)``: ``waiting`` (no frame shown yet), ``live``, or ``ended`` with its reason."""
    reason = str(stats.get("ended") or stats.get("end_reason") or "")
    state = stats.get("state")
    if state in ("waiting", "live", "ended"):
        return state, reason if state == "ended" else ""
    if reason:
        return "ended", reason
    shown = stats.get("frames_shown") or stats.get("frames") or 0
    return ("live" if shown else "waiting"), ""


def _number(value) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _fmt(value, spec: str, unit: str = "") -> str | None:
    value = _number(value)
    return None if value is None else format(value, spec) + unit


def _bitrate(stats: dict) -> str | None:
    parts = [f"{text} {side}" for side, key in (("received", "kbps_received"), ("sent", "kbps"))
             if (text := _fmt(stats.get(key), ".2f", " kbps")) is not None]
    return " · ".join(parts) or None


def _packet_rate(stats: dict) -> str | None:
    rate = _number(stats.get("packets_per_s"))
    if rate is None:
        # The call's average: packets received over the frames played at the call's frame rate.
        received, frames, fps = (_number(stats.get(k)) for k in ("packets_received", "frames", "fps"))
        if received is not None and frames and fps:
            rate = received * fps / frames
    return _fmt(rate, ".1f")


def _packet_loss(stats: dict) -> str | None:
    loss = _number(stats.get("packet_loss"))
    if loss is None:
        sent, received = _number(stats.get("packets_sent")), _number(stats.get("packets_received"))
        if sent and received is not None:
            # The sender's count may lag behind what arrived (it reports it now and then).
            loss = max(0.0, 1.0 - received / sent)
    text = _fmt(None if loss is None else 100 * loss, ".1f", " %")
    events = _number(stats.get("loss_events"))
    if events is not None:
        text = f"{text or '–'} ({int(events)} loss events)"
    return text


def _latency(stats: dict) -> str | None:
    latency = stats.get("latency_ms")
    if not isinstance(latency, dict):
        return None
    p50, p95 = _fmt(latency.get("p50"), ".0f", " ms"), _fmt(latency.get("p95"), ".0f", " ms")
    if p50 is None and p95 is None:
        return None
    return f"p50 {p50 or '–'} · p95 {p95 or '–'}"


def _estimated_from_round_trip(stats: dict) -> bool:
    source = str(stats.get("latency_source") or "").lower().replace("-", "_")
    return "round_trip" in source or "rtt" in source


def _frames(stats: dict) -> str | None:
    shown, skipped = _number(stats.get("frames_shown")), _number(stats.get("frames_skipped"))
    if shown is None and skipped is None:
        return None
    return " / ".join("–" if v is None else str(int(v)) for v in (shown, skipped))


def panel_rows(stats: dict) -> list[dict]:
    """The statistics panel: ``[{"key", "label", "value"}]`` with each value as text ("–": unknown)."""
    state, reason = call_state(stats)
    latency_label = "end-to-end latency"
    if _estimated_from_round_trip(stats):
        latency_label += " (estimated from the round trip)"
    forecast = _number(stats.get("forecast_share"))
    keyframes = _number(stats.get("keyframe_requests"))
    rows = [
        ("state", "call", {"waiting": "waiting for the sender", "live": "live"}.get(
            state, f"ended: {reason}" if reason else "ended")),
        ("bitrate", "bitrate", _bitrate(stats)),
        ("packet_rate", "packets/s", _packet_rate(stats)),
        ("packet_loss", "packet loss", _packet_loss(stats)),
        ("forecast_share", "forecast frames", _fmt(None if forecast is None else 100 * forecast,
                                                   ".1f", " %")),
        ("render_fps", "render fps", _fmt(stats.get("render_fps"), ".1f")),
        ("latency", latency_label, _latency(stats)),
        ("frames", "frames shown / skipped", _frames(stats)),
        ("keyframe_requests", "keyframe requests", None if keyframes is None else str(int(keyframes))),
    ]
    return [{"key": key, "label": label, "value": "–" if value is None else value}
            for key, label, value in rows]


def jsonable(value):
    """``value`` with numpy scalars and arrays as Python values and non-finite floats as None."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return jsonable(value.tolist())
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


# --- frames ----------------------------------------------------------------------------------------

def to_uint8(frame) -> np.ndarray:
    """``frame [H, W, 3]`` float in [0, 1] (clipped) or uint8 -> uint8; ValueError for another shape."""
    frame = np.asarray(frame)
    if frame.ndim != 3 or frame.shape[-1] != 3 or frame.shape[0] == 0 or frame.shape[1] == 0:
        raise ValueError(f"a viewer frame is [H, W, 3], got shape {frame.shape}")
    if frame.dtype == np.uint8:
        return frame
    if not np.issubdtype(frame.dtype, np.floating):
        raise ValueError(f"a viewer frame is float in [0, 1] or uint8, got {frame.dtype}")
    return np.round(np.clip(np.nan_to_num(frame), 0.0, 1.0) * 255.0).astype(np.uint8)


def encode_jpeg(frame, quality: int = JPEG_QUALITY) -> bytes:
    """``frame [H, W, 3]`` (see :func:`to_uint8`) -> JPEG bytes."""
    out = io.BytesIO()
    # No chroma subsampling: at 64x64 it would blur colour edges over 2x2 of the few pixels there are.
    Image.fromarray(np.ascontiguousarray(to_uint8(frame))).save(out, format="JPEG", quality=quality,
                                                                subsampling=0)
    return out.getvalue()


class _Feed:
    """The latest frame as JPEG, encoded once per new frame however many clients watch."""

    def __init__(self, latest_frame: FrameSource):
        self.latest_frame = latest_frame
        self.version = 0  # bumped for every new frame
        self.jpeg: bytes | None = None
        self._last: np.ndarray | None = None
        self._lock: asyncio.Lock | None = None

    async def poll(self) -> tuple[int, bytes | None]:
        """Look at ``latest_frame()``; encode it when it differs from the last -> ``(version, jpeg)``."""
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            frame = self.latest_frame()
            if frame is None:
                return self.version, self.jpeg
            frame = to_uint8(frame)
            # Compared by content: a source may update one array in place.
            if self._last is not None and frame.shape == self._last.shape and np.array_equal(frame, self._last):
                return self.version, self.jpeg
            frame = frame.copy()
            if frame.shape[0] * frame.shape[1] > INLINE_ENCODE_PIXELS:
                self.jpeg = await asyncio.to_thread(encode_jpeg, frame)
            else:
                self.jpeg = encode_jpeg(frame)
            self._last = frame
            self.version += 1
            return self.version, self.jpeg


# --- routes ----------------------------------------------------------------------------------------

def add_viewer_routes(app: web.Application, latest_frame: FrameSource, stats: StatsSource) -> None:
    """Serve the viewer (``/``, ``/stream.mjpg``, ``/frame.jpg``, ``/stats``) on ``app`` (see the module)."""
    feed = _Feed(latest_frame)
    stopping = {"flag": False}

    async def on_shutdown(_app: web.Application) -> None:
        # Open streams end by themselves; else the server's shutdown would wait for them.
        stopping["flag"] = True

    app.on_shutdown.append(on_shutdown)

    async def page(_request: web.Request) -> web.Response:
        return web.Response(text=PAGE, content_type="text/html", charset="utf-8",
                            headers={"Cache-Control": "no-store"})

    async def stats_json(_request: web.Request) -> web.Response:
        current = stats()
        state, reason = call_state(current)
        body = {"stats": jsonable(current), "state": state, "reason": reason,
                "panel": panel_rows(current)}
        return web.Response(text=json.dumps(body, allow_nan=False), content_type="application/json",
                            headers={"Cache-Control": "no-store"})

    async def frame_jpg(_request: web.Request) -> web.Response:
        try:
            _, jpeg = await feed.poll()
        except ValueError as e:  # a frame of the wrong shape: a bug of the frame source
            return web.Response(status=500, text=f"{e}\n")
        if jpeg is None:
            return web.Response(status=503, text="no frame yet: the call has not shown one\n",
                                headers={"Cache-Control": "no-store"})
        return web.Response(body=jpeg, content_type="image/jpeg", headers={"Cache-Control": "no-store"})

    def ended() -> bool:
        try:
            return call_state(stats())[0] == "ended"
        except Exception as e:  # noqa: BLE001 -- a failing stats source must not stop the video
            log.warning("viewer: stats() failed: %s", e)
            return False

    async def stream(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={
            "Content-Type": f"multipart/x-mixed-replace; boundary={BOUNDARY}",
            "Cache-Control": "no-store", "Connection": "close"})
        await response.prepare(request)
        sent = 0
        next_check = 0.0
        last_one = False
        try:
            await response.write(f"--{BOUNDARY}\r\n".encode())
            while not stopping["flag"]:
                transport = request.transport
                if transport is None or transport.is_closing():
                    break
                started = time.monotonic()
                if started >= next_check:
                    # After the end, one more look so that the final frame goes out too.
                    last_one = ended()
                    next_check = started + STATE_CHECK_S
                version, jpeg = await feed.poll()
                if version != sent and jpeg is not None:
                    # Each part is followed by the next boundary at once, so that a browser shows
                    # it now rather than when the next frame comes.
                    await response.write(
                        f"Content-Type: image/jpeg\r\nContent-Length: {len(jpeg)}\r\n\r\n".encode()
                        + jpeg + f"\r\n--{BOUNDARY}\r\n".encode())
                    sent = version
                if last_one:
                    break
                await asyncio.sleep(max(0.0, 1.0 / MAX_STREAM_FPS - (time.monotonic() - started)))
        except ConnectionError:
            return response  # the client went away
        except ValueError as e:  # a frame of the wrong shape: a bug of the frame source
            log.warning("viewer: stream ended: %s", e)
            return response
        with contextlib.suppress(ConnectionError):
            await response.write_eof()
        return response

    app.router.add_get("/", page)
    app.router.add_get("/stats", stats_json)
    app.router.add_get("/frame.jpg", frame_jpg)
    app.router.add_get("/stream.mjpg", stream)


PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>kpflow call</title>
<style>
  body { margin: 0; padding: 16px; background: #15181d; color: #e6e6e6;
         font: 14px/1.4 system-ui, sans-serif; }
  h1 { font-size: 16px; font-weight: 600; margin: 0 0 12px; }
  main { display: flex; flex-wrap: wrap; gap: 16px; align-items: flex-start; }
  section { flex: 1 1 320px; max-width: 560px; }
  #screen { width: @WIDTH@px; max-width: 95vw; aspect-ratio: 1; background: #000;
            display: flex; align-items: center; justify-content: center; }
  #video { width: 100%; height: 100%; object-fit: contain;
           image-rendering: pixelated; image-rendering: crisp-edges; }
  table { border-collapse: collapse; width: 100%; }
  th, td { text-align: left; padding: 4px 10px; border-bottom: 1px solid #2c313a; }
  th { font-weight: normal; color: #9aa3ad; }
  td { font-variant-numeric: tabular-nums; white-space: nowrap; }
  #state { display: inline-block; padding: 2px 8px; border-radius: 4px; background: #444; }
  #state.live { background: #1f7a3a; }
  #state.waiting { background: #8a6d1c; }
  #state.ended { background: #8a2c2c; }
  #note { color: #9aa3ad; margin-top: 8px; }
</style>
</head>
<body>
<h1>kpflow call <span id="state" class="waiting">waiting</span></h1>
<main>
  <div id="screen"><img id="video" src="/stream.mjpg" alt="the call's video"></div>
  <section>
    <table><tbody id="panel"></tbody></table>
    <div id="note"></div>
  </section>
</main>
<script>
"use strict";
const video = document.getElementById("video");
const panel = document.getElementById("panel");
const badge = document.getElementById("state");
const note = document.getElementById("note");
let state = "waiting";
let retry = null;

function show(rows) {
  const body = document.createDocumentFragment();
  for (const row of rows) {
    const tr = document.createElement("tr");
    const th = document.createElement("th");
    const td = document.createElement("td");
    th.textContent = row.label;
    td.textContent = row.value;
    td.id = "stat-" + row.key;
    tr.append(th, td);
    body.append(tr);
  }
  panel.replaceChildren(body);
}

async function poll() {
  try {
    const reply = await fetch("/stats", {cache: "no-store"});
    if (!reply.ok) throw new Error("HTTP " + reply.status);
    const data = await reply.json();
    window.lastStats = data;
    show(data.panel);
    if (data.state === "ended" && state !== "ended") {
      // The stream has closed: show the call's last frame.
      video.src = "/frame.jpg?t=" + Date.now();
    }
    state = data.state;
    badge.textContent = state;
    badge.className = state;
    note.textContent = "";
  } catch (e) {
    note.textContent = "statistics unavailable (" + e.message + ")";
  }
}

video.addEventListener("error", () => {
  // A dropped stream (or no frame yet for the last frame): try again while the call is on.
  if (retry === null && state !== "ended") {
    retry = setTimeout(() => { retry = null; video.src = "/stream.mjpg?t=" + Date.now(); }, 1000);
  }
});
poll();
setInterval(poll, 1000);
</script>
</body>
</html>
""".replace("@WIDTH@", str(DISPLAY_WIDTH))
