"""kpflow.codec: real byte packets, quantisation bound, lost packets, byte counting."""

import json

import numpy as np
import pytest

from kpflow import codec
from kpflow.data.synthetic import synthetic_clips


@pytest.fixture(scope="module")
def clips():
    series = list(synthetic_clips(num_clips=6, num_speakers=2, seed=0).values())
    return series[:4], series[4:]


@pytest.fixture(scope="module")
def params(clips):
    return codec.CodecParams.fit(clips[0], step=0.01)


def test_every_frame_round_trip_is_within_the_quantisation_bound(clips, params):
    series = clips[1][0]
    out = codec.transmit(series, params, policy="every_frame")
    assert out["packets"] == len(series)
    err = np.abs(out["reconstruction"] - series)
    assert np.all(err <= params.quantizer.step / 2 + 1e-5)  # float32 rounding on top of step / 2


def test_bitrate_counts_every_byte_headers_included(clips, params):
    series = clips[1][0]
    sender = codec.Sender(params, policy="every_frame")
    packets = [sender.step(x) for x in series]
    assert all(p is not None and len(p) > codec.HEADER_BYTES for p in packets)
    out = codec.transmit(series, params, policy="every_frame", fps=30.0)
    assert out["bytes"] == sum(len(p) for p in packets)
    assert out["kbps"] == pytest.approx(out["bytes"] * 8 / (len(series) / 30.0) / 1000)


def test_threshold_policy_sends_fewer_packets_and_bounds_the_drift(clips, params):
    series = clips[1][0]
    every = codec.transmit(series, params, policy="every_frame")
    sparse = codec.transmit(series, params, policy="threshold", threshold=0.02, max_gap=30)
    assert sparse["packets"] < every["packets"] and sparse["bytes"] < every["bytes"]
    # Between packets the receiver shows its prediction, whose mean error the sender kept <= threshold
    # (plus the quantisation of the packets themselves).
    per_frame = np.mean(np.abs(sparse["reconstruction"] - series), axis=1)
    assert per_frame.max() <= 0.02 + params.quantizer.step.max() / 2 + 1e-6


def test_schedule_policy_sends_n_of_every_n_plus_m_frames(clips, params):
    series = clips[1][0][:48]
    out = codec.transmit(series, params, policy="schedule", num_observed=6, horizon=6)
    assert out["packets"] == 24


def test_lost_packets_neither_crash_nor_desynchronise_the_receiver(clips, params):
    series = clips[1][0]
    loss = np.zeros(len(series), bool)
    loss[5:9] = True  # a burst of lost packets
    out = codec.transmit(series, params, policy="every_frame", loss=loss, intra_period=10)
    rec = out["reconstruction"]
    assert rec.shape == series.shape and np.isfinite(rec).all()
    # After the next intra packet (frame 10) the receiver is exact to the quantisation bound again.
    assert np.all(np.abs(rec[10:] - series[10:]) <= params.quantizer.step / 2 + 1e-5)
    # Meanwhile it kept forecasting (holding its last frame) rather than applying stale residuals.
    np.testing.assert_array_equal(rec[5:10], np.repeat(rec[4:5], 5, axis=0))


def test_bad_input_gives_one_line_errors(params):
    with pytest.raises(ValueError, match="policy"):
        codec.Sender(params, policy="sometimes")
    with pytest.raises(ValueError, match="max_gap"):
        codec.Sender(params, max_gap=200)
    with pytest.raises(ValueError, match="positive"):
        codec.Quantizer(np.array([0.1, 0.0]))
    with pytest.raises(ValueError, match=r"\[T, 60\]"):
        codec.transmit(np.zeros((5, 12)), params)
    with pytest.raises(ValueError, match="header"):
        codec.Receiver(params).step(b"\x00")


def test_eval_codec_cli_writes_the_rate_distortion_points(tmp_path, capsys):
    from eval import codec as eval_codec
    from kpflow.data.clips import save_clip
    from kpflow.keypoints import vector_to_keypoints

    data = tmp_path / "clips"
    data.mkdir()
    for name, series in synthetic_clips(num_clips=4, num_speakers=2, seed=1).items():
        save_clip(str(data / f"{name}.npz"), *vector_to_keypoints(series))
    out = tmp_path / "rd.json"
    code = eval_codec.main(["--data_dir", str(data), "--out", str(out), "--steps", "0.02", "0.05",
                            "--thresholds", "0.02"])
    assert code == 0
    points = json.loads(out.read_text())
    policies = {p["policy"] for p in points}
    assert {"paper_fp32", "paper_fp32_half_forecast", "order0", "kpflow_every_frame", "kpflow_threshold"} <= policies
    paper = {p["policy"]: p for p in points if p["policy"].startswith("paper")}
    assert paper["paper_fp32"]["kbps"] == pytest.approx(60 * 32 * 30 / 1000)
    assert paper["paper_fp32_half_forecast"]["kbps"] == pytest.approx(28.8)
    assert paper["paper_fp32_half_forecast"]["mae_raw"] > 0
    coarse = [p for p in points if p["policy"] == "order0"]
    assert coarse[0]["kbps"] > coarse[1]["kbps"] and coarse[0]["mae_raw"] < coarse[1]["mae_raw"]
    assert all(p["kbps"] > 0 for p in points if p["policy"].startswith("kpflow"))
    assert out.with_suffix(".png").stat().st_size > 0
    assert "papers' 6 sent + 6 held" in capsys.readouterr().out


def test_eval_codec_cli_bad_input(tmp_path):
    from eval import codec as eval_codec

    with pytest.raises(SystemExit, match="error: "):
        eval_codec.main(["--data_dir", str(tmp_path / "none"), "--out", str(tmp_path / "x.json")])
