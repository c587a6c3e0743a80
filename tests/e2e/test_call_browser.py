"""The viewer page of a real call: headless Chromium opens the receiver's page during a loopback call
(``kpflow.call.app.loopback``: both ends over a local WebRTC connection, a random tiny FOMM) and must
show a rendered frame and the call's live statistics."""

from __future__ import annotations

import asyncio
import socket
import threading

import numpy as np
import pytest

from tests.e2e.test_viewer_browser import PAGE_STATE, open_page, pixels, region

pytest.importorskip("aiortc", reason="the call extra is not installed: pip install -e '.[call]'")


@pytest.fixture
def loopback_call(tmp_path):
    """A loopback call running in a thread of its own -> ``(viewer URL, thread, result)``."""
    from configs.fomm_common import fomm_config
    from kpflow.call import app
    from kpflow.data.synthetic_video import make_synthetic_videos
    from kpflow.fomm.model import random_fomm, save_model

    fomm = random_fomm(fomm_config("vox", "tiny"))
    save_model(str(tmp_path / "fomm"), fomm.config, fomm.variables, {"note": "random init for tests"})
    make_synthetic_videos(tmp_path / "videos", num_train=1, num_test=1, num_frames=150, size=64, seed=0)
    (video,) = sorted((tmp_path / "videos" / "test").iterdir())
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    started, result = threading.Event(), {}

    def call():
        try:
            result["stats"] = asyncio.run(app.loopback(
                fomm_dir=str(tmp_path / "fomm"), video=str(video), codec_fit=str(tmp_path / "videos" / "train"),
                policy={"threshold": 0.001}, out=str(tmp_path / "call.mp4"), viewer_port=port,
                on_started=lambda url: started.set()))
        except BaseException as e:  # noqa: BLE001 -- reported by the test
            result["error"] = e
            started.set()

    thread = threading.Thread(target=call, daemon=True)
    thread.start()
    assert started.wait(120), "the loopback call did not start"
    assert "error" not in result, result.get("error")
    yield f"http://127.0.0.1:{port}/", thread, result
    thread.join(120)


def test_the_page_of_a_loopback_call_shows_its_frames_and_statistics(open_browser, loopback_call):
    url, thread, result = loopback_call

    async def main():
        async with open_browser() as browser:
            await open_page(browser, url)
            await asyncio.sleep(2.5)  # frames of the call and a few polls of /stats
            return await browser.evaluate(PAGE_STATE), await browser.screenshot()

    page, shot = asyncio.run(asyncio.wait_for(main(), 90))
    assert page is not None and page["naturalWidth"] > 0, "the page showed no frame of the call"
    frame = region(pixels(shot), page)
    background = np.asarray([float(v) for v in page["background"][4:-1].split(",")[:3]], np.float32)
    # A rendered frame, not the page: a random FOMM renders a nearly flat grey, with some texture.
    assert np.abs(frame - background).mean() > 20 and frame.std(axis=(0, 1)).max() > 0.5
    assert page["badge"] == "live" and page["rows"] == page["served"]
    shown = {row["key"]: row["value"] for row in page["rows"]}
    assert shown["frames"] not in ("", "–")  # frames shown / skipped, from the receiver
    thread.join(120)
    assert "error" not in result, result.get("error")
    assert result["stats"]["frames_shown"] > 0
