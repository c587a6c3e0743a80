"""kpflow.codec: real byte packets, quantisation bound, lost packets, byte counting."""

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
