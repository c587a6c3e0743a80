"""python -m kpflow.call: a loopback call over a real local WebRTC connection, and one-line errors."""

import json
import socket

import numpy as np
import pytest

pytest.importorskip("aiortc", reason="the call extra is not installed: pip install -e '.[call]'")

from kpflow.call import __main__ as call_cli


@pytest.fixture(scope="module")
def fomm_and_video(tmp_path_factory):
    """A random tiny FOMM (64x64) saved as a directory, and generated videos (train/ fits the codec)."""
    from configs.fomm_common import fomm_config
    from kpflow.data.synthetic_video import make_synthetic_videos
    from kpflow.fomm.model import random_fomm, save_model

    root = tmp_path_factory.mktemp("call")
    fomm = random_fomm(fomm_config("vox", "tiny"))
    save_model(str(root / "fomm"), fomm.config, fomm.variables, {"note": "random init for tests"})
    make_synthetic_videos(root / "videos", num_train=1, num_test=1, num_frames=24, size=64, seed=0)
    (video,) = sorted((root / "videos" / "test").iterdir())
    return root / "fomm", video, root / "videos" / "train"


@pytest.mark.slow  # a FOMM's detector and generator compile: tens of seconds
def test_loopback_call_writes_its_video_and_statistics(fomm_and_video, tmp_path, capsys):
    import imageio.v3 as iio

    fomm, video, fit = fomm_and_video
    out, stats = tmp_path / "call.mp4", tmp_path / "stats.json"
    code = call_cli.main(["loopback", "--fomm", str(fomm), "--video", str(video), "--codec_fit", str(fit),
                          "--threshold", "0.002", "--loss", "0.2", "--burst", "2", "--seed", "1",
                          "--out", str(out), "--stats", str(stats)])
    assert code == 0, capsys.readouterr().err
    s = json.loads(stats.read_text())
    assert s["ended"] == "sender finished" and s["frames_sent"] == 24
    # Every frame of the call has its picture in the mp4 (a skipped render repeats the last one).
    assert s["frames_shown"] + s["frames_skipped"] == 24
    assert len(iio.imread(out, plugin="pyav")) == 24
    assert 0 < s["packets_received"] < s["packets_sent"]  # 20 % loss on the way
    for key in ("kbps", "forecast_share", "keypoint_mae_raw", "pixel_mae_vs_full_rate", "render_fps"):
        assert np.isfinite(s[key]), key
    assert set(s["latency_ms"]) == {"p50", "p95", "max"}
    assert "call ended (sender finished)" in capsys.readouterr().out


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "error:" in err and "Traceback" not in err, err
    return err


def test_bad_input_is_one_line(fomm_and_video, tiny_run, tmp_path, capsys):
    fomm, video, _ = fomm_and_video
    base = ["loopback", "--fomm", str(fomm), "--video", str(video)]
    cases = [
        (["loopback", "--fomm", str(tmp_path / "none"), "--video", str(video)], "none"),
        (["loopback", "--fomm", str(fomm), "--video", str(tmp_path / "missing.mp4")], "missing.mp4"),
        ([*base, "--loss", "1.5"], "loss"),
        ([*base, "--reorder", "2"], "reorder"),
        ([*base, "--frames", "-1"], "--frames"),
        ([*base, "--out", str(tmp_path)], "--out"),
        (["send", "--to", "http://127.0.0.1:9", "--token", "x", "--fomm", str(fomm), "--video", str(video),
          "--codec_fit", str(tmp_path / "nowhere")], "nowhere"),
        (["loopback", "--fomm", str(fomm)], "--video"),
        ([*base, "--forecaster", str(tmp_path / "no_run")], "--forecaster"),
        ([*base, "--forecaster", str(tiny_run.workdir), "--predictor_gain", "2"], "--predictor_gain"),
        ([*base, "--forecaster", str(tiny_run.workdir)], "numbers per frame"),  # 2 keypoints, not this FOMM's
        (["receive", "--fomm", str(fomm), "--forecaster", str(tmp_path / "no_run")], "--forecaster"),
    ]
    for argv, needle in cases:
        try:
            code = call_cli.main(argv)
        except SystemExit as e:  # argparse's own errors
            code = e.code
        assert code != 0, argv
        assert needle in one_error_line(capsys), argv


def test_port_in_use_is_one_line(fomm_and_video, capsys):
    fomm, _, _ = fomm_and_video
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert call_cli.main(["receive", "--fomm", str(fomm), "--port", str(port)]) == 2
    assert f"port {port}" in one_error_line(capsys)


def test_unreachable_receiver_is_one_line(fomm_and_video, capsys):
    fomm, video, fit = fomm_and_video
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    code = call_cli.main(["send", "--to", f"http://127.0.0.1:{port}", "--token", "x", "--fomm", str(fomm),
                          "--video", str(video), "--codec_fit", str(fit)])
    assert code == 2
    one_error_line(capsys)
