"""Browser tests of the call's viewer: headless Chromium driven over the DevTools protocol.

Not part of ``make test`` (its targets pass ``--ignore=tests/e2e``); ``make e2e`` runs them, after
installing Debian's ``chromium`` when it is missing. Without a browser the tests skip, saying why,
unless ``CI`` is set: then they fail. ``KPFLOW_CHROMIUM`` names another browser binary.

Fixtures, from the source of what the page shows to the browser looking at it:

- ``viewer_source``: a :class:`ViewerSource` (``latest_frame``, ``stats``, ``expect_in_panel``); here a
  synthetic clip of gliding ellipses and fixed statistics. Override it (or ``viewer``) to point the
  same tests at a real call;
- ``viewer``: a :class:`Viewer` (``url``, ``expect_in_panel``): a :class:`~kpflow.call.transport.CallServer`
  on 127.0.0.1 serving the source's viewer, on an event loop of its own in a thread;
  ``ending_viewer``: the synthetic one with a switch that ends its call;
- ``chromium``: the browser binary (or the skip); ``open_browser()``: a :class:`Browser` on it.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import json
import os
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
WINDOW = (1000, 620)


@dataclasses.dataclass
class ViewerSource:
    """What a viewer shows: ``latest_frame() -> [H, W, 3] | None``, ``stats() -> dict``, and the
    texts the statistics panel must show (row key -> a substring of its value or label)."""

    latest_frame: Callable[[], np.ndarray | None]
    stats: Callable[[], dict]
    expect_in_panel: dict[str, str]


@dataclasses.dataclass
class Viewer:
    url: str
    expect_in_panel: dict[str, str]


# --- the sources -----------------------------------------------------------------------------------

SYNTHETIC_FPS = 15
SYNTHETIC_STATS = {
    "fps": SYNTHETIC_FPS, "frames": 600, "frames_shown": 590, "frames_skipped": 10,
    "packets_received": 300, "packets_sent": 312, "loss_events": 4, "kbps": 1.1, "kbps_received": 1.05,
    "forecast_share": 0.5, "render_fps": 14.8, "latency_ms": {"p50": 48.2, "p95": 95.0, "max": 120.0},
    "latency_source": "round_trip", "keyframe_requests": 2, "ended": "",
}


def synthetic_source(size: int = 64, frames: int = 60) -> ViewerSource:
    """A looping clip of kpflow's synthetic videos, a new frame :data:`SYNTHETIC_FPS` times a second."""
    from kpflow.data.synthetic_video import identity_style, render_clip

    clip = render_clip(identity_style(0, 0, size), np.random.default_rng(1), frames, size)
    start = time.monotonic()

    def latest_frame():
        return clip[int((time.monotonic() - start) * SYNTHETIC_FPS) % frames]

    return ViewerSource(latest_frame, lambda: dict(SYNTHETIC_STATS), {
        "state": "live", "bitrate": "1.05 kbps received · 1.10 kbps sent", "packet_rate": "7.5",
        "packet_loss": "3.8 % (4 loss events)", "forecast_share": "50.0 %", "render_fps": "14.8",
        "latency": "estimated from the round trip", "frames": "590 / 10", "keyframe_requests": "2"})


@pytest.fixture
def viewer_source() -> ViewerSource:
    return synthetic_source()


@pytest.fixture
def viewer(viewer_source):
    with serve_viewer(viewer_source) as served:
        yield served


@pytest.fixture
def ending_viewer():
    """The synthetic viewer, whose call ends when the test calls ``end(reason)`` -> ``(viewer, end)``."""
    source = synthetic_source()
    reason = {"ended": ""}
    source.stats = lambda: {**SYNTHETIC_STATS, **reason}
    with serve_viewer(source) as served:
        yield served, lambda why: reason.update(ended=why)


@contextlib.contextmanager
def serve_viewer(source: ViewerSource) -> Iterator[Viewer]:
    """A CallServer on 127.0.0.1 serving ``source``'s viewer, on an event loop in a thread of its own."""
    from kpflow.call.transport import CallServer
    from kpflow.call.viewer import add_viewer_routes

    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()

    async def start():
        server = CallServer(token="e2e")
        add_viewer_routes(server.app, source.latest_frame, source.stats)
        return await server.start()

    server = asyncio.run_coroutine_threadsafe(start(), loop).result(10)
    try:
        yield Viewer(server.url + "/", source.expect_in_panel)
    finally:
        asyncio.run_coroutine_threadsafe(server.stop(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


# --- the browser -----------------------------------------------------------------------------------

def find_chromium() -> str | None:
    named = os.environ.get("KPFLOW_CHROMIUM")
    if named:
        return shutil.which(named) or (named if Path(named).is_file() else None)
    return next((path for name in BROWSERS if (path := shutil.which(name))), None)


@pytest.fixture(scope="session")
def chromium() -> str:
    path = find_chromium()
    if path is None:
        reason = ("no Chromium: `make e2e` installs Debian's chromium (apt-get install -y chromium), "
                  "or set KPFLOW_CHROMIUM to a browser binary")
        if os.environ.get("CI"):
            pytest.fail(reason + " (CI is set, so this fails instead of skipping)")
        pytest.skip(reason)
    return path


class Browser:
    """Headless Chromium with one page, spoken to over the DevTools protocol (aiohttp's websocket)."""

    def __init__(self, binary: str, width: int = WINDOW[0], height: int = WINDOW[1]):
        self.binary, self.size = binary, (width, height)
        self._ids = iter(range(1, 1 << 30))

    def _launch(self) -> None:
        self._profile = tempfile.TemporaryDirectory(prefix="kpflow-chromium-")
        args = [self.binary, "--headless", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                "--no-default-browser-check", "--hide-scrollbars", "--mute-audio",
                "--force-device-scale-factor=1", f"--window-size={self.size[0]},{self.size[1]}",
                "--remote-debugging-address=127.0.0.1", "--remote-debugging-port=0",
                f"--user-data-dir={self._profile.name}", "about:blank"]
        if hasattr(os, "geteuid") and os.geteuid() == 0:
            args.insert(1, "--no-sandbox")  # Chromium's sandbox refuses to run as root
        self._log = open(Path(self._profile.name) / "chromium.log", "wb")  # noqa: SIM115
        self.process = subprocess.Popen(args, stdout=self._log, stderr=subprocess.STDOUT)

    async def __aenter__(self):
        from aiohttp import ClientSession

        self._launch()
        self.http = ClientSession()
        try:
            port = await self._devtools_port()
            async with self.http.get(f"http://127.0.0.1:{port}/json/list") as r:
                targets = await r.json()
            page = next(t for t in targets if t.get("type") == "page")
            self.ws = await self.http.ws_connect(page["webSocketDebuggerUrl"], max_msg_size=0)
        except BaseException:
            await self.__aexit__(None, None, None)
            raise
        return self

    async def _devtools_port(self, timeout: float = 20.0) -> int:
        # Chromium writes the port it chose into the profile once it listens.
        active = Path(self._profile.name) / "DevToolsActivePort"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.binary} exited with status {self.process.returncode}: "
                                   + self.log_tail())
            if active.exists() and (lines := active.read_text().split()):
                return int(lines[0])
            await asyncio.sleep(0.1)
        raise RuntimeError(f"{self.binary} opened no DevTools port in {timeout:.0f} s: {self.log_tail()}")

    def log_tail(self) -> str:
        self._log.flush()
        return (Path(self._profile.name) / "chromium.log").read_text(errors="replace")[-2000:]

    async def __aexit__(self, *exc) -> None:
        if getattr(self, "ws", None) is not None:
            await self.ws.close()
        await self.http.close()
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)
        self._log.close()
        self._profile.cleanup()

    async def call(self, method: str, **params) -> dict:
        """Send one DevTools command -> its result (events meanwhile are ignored)."""
        ident = next(self._ids)
        await self.ws.send_json({"id": ident, "method": method, "params": params})
        while True:
            reply = json.loads((await self.ws.receive()).data)
            if reply.get("id") == ident:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply["result"]

    async def evaluate(self, expression: str):
        """The JSON-able value of a JavaScript expression in the page (promises awaited)."""
        result = await self.call("Runtime.evaluate", expression=expression, returnByValue=True,
                                 awaitPromise=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"JavaScript failed: {result['exceptionDetails']}")
        return result["result"].get("value")

    async def screenshot(self) -> bytes:
        """The page as PNG bytes."""
        return base64.b64decode((await self.call("Page.captureScreenshot", format="png"))["data"])


@pytest.fixture
def open_browser(chromium) -> Callable[[], Browser]:
    """``async with open_browser() as browser:`` a fresh headless Chromium."""
    return lambda: Browser(chromium)
