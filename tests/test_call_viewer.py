"""The call's viewer (kpflow.call.viewer): the page, /stats, /frame.jpg and the MJPEG stream, served
by a real CallServer on 127.0.0.1; the panel's formatting as a pure function."""

import asyncio
import io
import json
import math
import re

import numpy as np
import pytest

pytest.importorskip("aiohttp")
pytest.importorskip("aiortc")

from aiohttp import ClientSession, ClientTimeout
from PIL import Image

from kpflow.call import viewer
from kpflow.call.transport import CallServer

TIMEOUT = 10.0


def run(coro, timeout=TIMEOUT):
    return asyncio.run(asyncio.wait_for(coro, timeout))


def flat_frame(colour, size=64):
    """``[size, size, 3]`` float32 of one colour (RGB in [0, 1])."""
    return np.broadcast_to(np.asarray(colour, np.float32), (size, size, 3)).copy()


def gradient_frame(size=64):
    ys, xs = np.meshgrid(np.linspace(0, 1, size), np.linspace(0, 1, size), indexing="ij")
    return np.stack([xs, ys, 0.5 * (xs + ys)], -1).astype(np.float32)


def decode(jpeg: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(jpeg)).convert("RGB"))


class Source:
    """A frame and stats source the test changes at will; counts the frame look-ups."""

    def __init__(self, frame=None, stats=None):
        self.frame = frame
        self.stats = stats if stats is not None else {"frames": 0, "frames_shown": 0, "ended": ""}
        self.looks = 0

    def latest_frame(self):
        self.looks += 1
        return self.frame

    def current_stats(self):
        return self.stats


async def serve(source):
    server = CallServer(token="t")
    viewer.add_viewer_routes(server.app, source.latest_frame, source.current_stats)
    await server.start()
    return server


async def read_part(response) -> bytes:
    """The next JPEG part of a multipart stream (after its boundary line) -> its bytes."""
    headers = {}
    while True:
        line = (await response.content.readline()).decode().strip()
        if not line:
            if headers:
                break
            continue
        if line == f"--{viewer.BOUNDARY}":
            continue
        key, _, value = line.partition(":")
        headers[key.strip().lower()] = value.strip()
    assert headers["content-type"] == "image/jpeg"
    return await response.content.readexactly(int(headers["content-length"]))


def test_page_is_self_contained_and_shows_the_stream():
    async def main():
        server = await serve(Source())
        try:
            async with ClientSession() as http, http.get(server.url + "/") as r:
                return r.status, r.content_type, await r.text()
        finally:
            await server.stop()

    status, kind, page = run(main())
    assert (status, kind) == (200, "text/html")
    assert '<img id="video" src="/stream.mjpg"' in page
    assert "image-rendering: pixelated" in page and 'fetch("/stats"' in page
    # Nothing from elsewhere: no absolute or protocol-relative URL anywhere.
    assert not re.search(r"(https?:)?//[a-z0-9]", page.replace("<!DOCTYPE", ""), re.IGNORECASE)
    assert not re.search(r"<(link|script)[^>]+(src|href)=", page)


def test_stats_json_carries_the_stats_the_state_and_the_panel():
    stats = {"frames": np.int64(90), "frames_shown": 88, "frames_skipped": 2, "fps": 30.0,
             "kbps": np.float32(1.25), "kbps_received": float("nan"), "packets_received": 45,
             "packets_sent": 50, "loss_events": 3, "forecast_share": 0.5, "render_fps": 29.5,
             "latency_ms": {"p50": 41.6, "p95": 80.2, "max": float("inf")}, "latency_source": "round_trip",
             "keyframe_requests": 1, "ended": ""}

    async def main():
        server = await serve(Source(stats=stats))
        try:
            async with ClientSession() as http, http.get(server.url + "/stats") as r:
                return r.status, await r.text()
        finally:
            await server.stop()

    status, text = run(main())
    assert status == 200
    body = json.loads(text)  # strict JSON: NaN and infinity became null
    assert "NaN" not in text and "Infinity" not in text
    assert body["stats"]["kbps_received"] is None and body["stats"]["latency_ms"]["max"] is None
    assert body["stats"]["frames"] == 90 and body["stats"]["kbps"] == pytest.approx(1.25)
    assert (body["state"], body["reason"]) == ("live", "")
    panel = {row["key"]: row for row in body["panel"]}
    assert panel["state"]["value"] == "live"
    assert panel["bitrate"]["value"] == "1.25 kbps sent"
    assert panel["packet_rate"]["value"] == "15.0"  # 45 packets over 90 frames at 30 fps
    assert panel["packet_loss"]["value"] == "10.0 % (3 loss events)"
    assert panel["forecast_share"]["value"] == "50.0 %"
    assert panel["render_fps"]["value"] == "29.5"
    assert panel["latency"]["value"] == "p50 42 ms · p95 80 ms"
    assert panel["latency"]["label"] == "end-to-end latency (estimated from the round trip)"
    assert panel["frames"]["value"] == "88 / 2"
    assert panel["keyframe_requests"]["value"] == "1"


@pytest.mark.parametrize("stats, state, shown", [
    ({}, ("waiting", ""), "waiting for the sender"),
    ({"frames": 0, "frames_shown": 0, "ended": ""}, ("waiting", ""), "waiting for the sender"),
    ({"frames": 3, "frames_shown": 3, "ended": ""}, ("live", ""), "live"),
    ({"frames": 3, "ended": "peer vanished: no heartbeat for 3.0 s"},
     ("ended", "peer vanished: no heartbeat for 3.0 s"), "ended: peer vanished: no heartbeat for 3.0 s"),
    ({"state": "ended"}, ("ended", ""), "ended"),
    ({"state": "live", "frames": 0}, ("live", ""), "live"),
])
def test_call_state(stats, state, shown):
    assert viewer.call_state(stats) == state
    assert viewer.panel_rows(stats)[0]["value"] == shown


def test_panel_marks_unknown_values_and_prefers_explicit_rates():
    rows = {r["key"]: r for r in viewer.panel_rows({})}
    assert {k: r["value"] for k, r in rows.items() if k != "state"} == dict.fromkeys(
        ["bitrate", "packet_rate", "packet_loss", "forecast_share", "render_fps", "latency", "frames",
         "keyframe_requests"], "–")
    assert rows["latency"]["label"] == "end-to-end latency"  # a measured latency has no caveat
    rows = {r["key"]: r["value"] for r in viewer.panel_rows(
        {"packets_per_s": 12.0, "packets_received": 1, "frames": 1, "fps": 30, "packet_loss": 0.25,
         "packets_sent": 1, "kbps_received": 0.5, "kbps": math.nan, "latency_ms": None})}
    assert rows["packet_rate"] == "12.0" and rows["packet_loss"] == "25.0 %"
    assert rows["bitrate"] == "0.50 kbps received" and rows["latency"] == "–"
    # More packets arrived than the sender last reported: no negative loss.
    assert viewer.panel_rows({"packets_sent": 10, "packets_received": 12})[3]["value"] == "0.0 %"


def test_frame_jpg_is_the_latest_frame():
    source = Source()

    async def main():
        server = await serve(source)
        replies = []
        try:
            async with ClientSession() as http:
                for frame in (None, gradient_frame(), (gradient_frame() * 255).astype(np.uint8)):
                    source.frame = frame
                    async with http.get(server.url + "/frame.jpg") as r:
                        replies.append((r.status, r.content_type, await r.read()))
        finally:
            await server.stop()
        return replies

    (none, float_frame, uint8_frame) = run(main())
    assert none[0] == 503 and b"no frame yet" in none[2]
    expected = viewer.to_uint8(gradient_frame()).astype(np.int16)
    for status, kind, body in (float_frame, uint8_frame):
        assert (status, kind) == (200, "image/jpeg")
        image = decode(body)
        assert image.shape == (64, 64, 3)
        assert np.abs(image.astype(np.int16) - expected).mean() < 3.0


def test_stream_sends_each_new_frame_then_ends_with_the_call():
    colours = [(1, 0, 0), (0, 1, 0), (0, 0, 1), (1, 1, 0), (0, 1, 1)]
    source = Source(frame=flat_frame(colours[0]), stats={"frames": 1, "frames_shown": 1, "ended": ""})

    async def main():
        server = await serve(source)
        parts = []
        try:
            async with ClientSession() as http, http.get(server.url + "/stream.mjpg") as r:
                assert r.status == 200
                assert r.headers["Content-Type"] == f"multipart/x-mixed-replace; boundary={viewer.BOUNDARY}"
                for colour in colours[1:]:
                    parts.append(await read_part(r))
                    source.frame = flat_frame(colour)  # the next part is this frame
                # The call ends: the stream sends the last frame and closes.
                source.stats = {"frames": 5, "frames_shown": 5, "ended": "the sender hung up"}
                parts.append(await read_part(r))
                rest = await r.content.read()
        finally:
            await server.stop()
        return parts, rest

    parts, rest = run(main())
    assert len(parts) == len(colours) and len(set(parts)) == len(colours)
    for part, colour in zip(parts, colours, strict=True):
        assert np.abs(decode(part).mean((0, 1)) - 255 * np.asarray(colour)).max() < 4
    assert b"image/jpeg" not in rest  # nothing after the last frame but the closing boundary


def test_stream_sends_a_frame_only_when_it_changes_even_in_place():
    frame = flat_frame((0.2, 0.4, 0.6))
    source = Source(frame=frame, stats={"frames": 1, "ended": ""})

    async def main():
        server = await serve(source)
        try:
            async with ClientSession() as http, http.get(server.url + "/stream.mjpg") as r:
                first = await read_part(r)
                looks = source.looks
                with pytest.raises(asyncio.TimeoutError):  # the same frame is not sent again
                    await asyncio.wait_for(read_part(r), 0.5)
                assert source.looks > looks  # it was looked at meanwhile
                frame[:] = 1.0  # the source updates its array in place
                second = await read_part(r)
        finally:
            await server.stop()
        return first, second

    first, second = run(main())
    assert first != second and decode(second).min() > 250


def test_stream_stops_when_the_client_goes_and_the_server_stops_with_a_stream_open():
    source = Source(frame=gradient_frame(), stats={"frames": 1, "ended": ""})

    async def main():
        server = await serve(source)
        try:
            async with ClientSession() as http:
                async with http.get(server.url + "/stream.mjpg") as r:
                    await read_part(r)
                # The client went: the server stops looking at frames for it.
                await asyncio.sleep(0.3)
                looks = source.looks
                await asyncio.sleep(0.3)
                assert source.looks == looks
                # A stream still open when the server stops ends at once (no 60 s shutdown wait).
                r = await http.get(server.url + "/stream.mjpg", timeout=ClientTimeout(total=5))
                await read_part(r)
                await asyncio.wait_for(server.stop(), 5.0)
                r.close()
        finally:
            await server.stop()

    run(main())


def test_a_frame_of_the_wrong_shape_is_one_line_not_a_crash():
    source = Source(frame=np.zeros((64, 64), np.float32), stats={"frames": 1, "ended": ""})

    async def main():
        server = await serve(source)
        try:
            async with ClientSession() as http:
                async with http.get(server.url + "/frame.jpg") as r:
                    status, text = r.status, await r.text()
                async with http.get(server.url + "/stream.mjpg") as r:
                    rest = await r.content.read()  # the stream ends instead of hanging
        finally:
            await server.stop()
        return status, text, rest

    status, text, rest = run(main())
    assert status == 500 and text == "a viewer frame is [H, W, 3], got shape (64, 64)\n"
    assert b"image/jpeg" not in rest


@pytest.mark.parametrize("frame, message", [
    (np.zeros((8, 8, 4), np.float32), r"\[H, W, 3\], got shape \(8, 8, 4\)"),
    (np.zeros((0, 8, 3), np.uint8), r"got shape \(0, 8, 3\)"),
    (np.zeros((8, 8, 3), np.int32), "float in \\[0, 1\\] or uint8, got int32"),
])
def test_to_uint8_refuses_what_is_not_a_frame(frame, message):
    with pytest.raises(ValueError, match=message):
        viewer.to_uint8(frame)


def test_to_uint8_clips_and_rounds():
    frame = np.array([[[-0.5, 0.5, 2.0], [np.nan, 1 / 255, 0.999]]], np.float32)
    assert viewer.to_uint8(frame).tolist() == [[[0, 128, 255], [0, 1, 255]]]
