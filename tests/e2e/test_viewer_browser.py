"""The viewer in a real browser: headless Chromium opens the page of a running viewer (the ``viewer``
fixture: a synthetic moving clip unless overridden) and must show a moving video frame and the
statistics. ``KPFLOW_VIEWER_SCREENSHOT=path.png`` also keeps the screenshot (docs/figures/call_viewer.png)."""

import asyncio
import io
import os

import numpy as np
from PIL import Image

WIDTH, HEIGHT = 1000, 600  # the page's viewport: the video and the panel side by side

# Everything the test reads from the page in one evaluation.
PAGE_STATE = """(() => {
  const video = document.getElementById("video");
  if (!video) return null;  // not loaded yet
  const box = video.getBoundingClientRect();
  return {
    naturalWidth: video.naturalWidth,
    src: video.getAttribute("src"),
    box: [box.left, box.top, box.width, box.height],
    scale: window.devicePixelRatio,
    background: getComputedStyle(document.body).backgroundColor,
    badge: document.getElementById("state").textContent,
    rows: [...document.querySelectorAll("#panel tr")].map(tr => ({
      key: tr.querySelector("td").id.replace(/^stat-/, ""),
      label: tr.querySelector("th").textContent,
      value: tr.querySelector("td").textContent})),
    served: window.lastStats ? window.lastStats.panel : null,
  };
})()"""


def pixels(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(np.float32)


def region(image: np.ndarray, page: dict) -> np.ndarray:
    """The screenshot's pixels inside the video element, less a 2-pixel margin."""
    left, top, width, height = (round(v * page["scale"]) for v in page["box"])
    return image[top + 2:top + height - 2, left + 2:left + width - 2]


async def open_page(browser, url: str, until=lambda page: page["naturalWidth"] > 0 and page["served"]):
    """Load ``url``; wait (up to 12 s) until ``until(page state)``: by default a frame decoded and a
    poll of /stats shown (the page polls once a second) -> the page state."""
    await browser.call("Page.enable")
    await browser.call("Emulation.setDeviceMetricsOverride", width=WIDTH, height=HEIGHT,
                       deviceScaleFactor=1, mobile=False)
    await browser.call("Page.navigate", url=url)
    return await wait_for_page(browser, until)


async def wait_for_page(browser, until, tries: int = 120):
    page = None
    for _ in range(tries):
        page = await browser.evaluate(PAGE_STATE)
        if page and until(page):
            break
        await asyncio.sleep(0.1)
    return page


def test_the_page_shows_a_moving_frame_and_the_statistics(open_browser, viewer, tmp_path):
    async def main():
        async with open_browser() as browser:
            await open_page(browser, viewer.url)
            await asyncio.sleep(1.5)  # a few seconds of the stream and a second poll
            page = await browser.evaluate(PAGE_STATE)
            first = await browser.screenshot()
            await asyncio.sleep(1.0)
            second = await browser.screenshot()
            return page, first, second

    page, first, second = asyncio.run(asyncio.wait_for(main(), 60))
    (tmp_path / "viewer.png").write_bytes(first)
    if os.environ.get("KPFLOW_VIEWER_SCREENSHOT"):
        with open(os.environ["KPFLOW_VIEWER_SCREENSHOT"], "wb") as out:
            out.write(first)

    assert page is not None, "the page did not load"
    assert page["naturalWidth"] > 0, "the video never showed a frame"
    frame, later = region(pixels(first), page), region(pixels(second), page)
    assert frame.shape[0] >= 256 and frame.shape[1] >= 256, f"the video is shown small: {page['box']}"
    background = np.asarray([float(v) for v in page["background"][4:-1].split(",")[:3]], np.float32)
    # A frame, not the page: far from the background colour, and not one flat colour.
    assert np.abs(frame - background).mean() > 20
    assert frame.std(axis=(0, 1)).max() > 10
    # Crisp pixels: a 64x64 frame scaled up 8x has runs of equal pixels, not a blur.
    row = frame[frame.shape[0] // 2]
    assert np.mean(np.all(row[1:] == row[:-1], axis=-1)) > 0.5
    assert np.abs(later - frame).mean() > 1, "the video did not move in a second"

    # The statistics: the panel shows exactly what /stats served, and what the source says.
    assert page["badge"] == "live"
    assert page["rows"] == page["served"]
    shown = {row["key"]: f"{row['label']}: {row['value']}" for row in page["rows"]}
    for key, text in viewer.expect_in_panel.items():
        assert text in shown.get(key, ""), f"panel row {key!r} is {shown.get(key)!r}, expected {text!r}"



def test_the_page_shows_the_end_of_the_call(open_browser, ending_viewer):
    """The call ends: the badge and the panel say why, and the last frame stays on the page."""
    viewer, end = ending_viewer

    async def main():
        async with open_browser() as browser:
            live = await open_page(browser, viewer.url)
            end("the sender hung up")
            ended = await wait_for_page(browser, lambda page: page["badge"] == "ended"
                                        and page["naturalWidth"] > 0 and "frame.jpg" in page["src"])
            return live, ended, await browser.screenshot()

    live, ended, screenshot = asyncio.run(asyncio.wait_for(main(), 60))
    assert live["badge"] == "live" and live["src"] == "/stream.mjpg"
    assert ended["badge"] == "ended"
    assert ended["rows"][0] == {"key": "state", "label": "call", "value": "ended: the sender hung up"}
    # The stream closed; the page shows the call's last frame instead of a blank.
    assert "frame.jpg" in ended["src"] and ended["naturalWidth"] > 0
    frame = region(pixels(screenshot), ended)
    assert frame.std(axis=(0, 1)).max() > 10
