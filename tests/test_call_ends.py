"""The call's two ends over an in-process link: set-up, sender, receiver with its own frame clock.

A random tiny FOMM (64x64 frames) and generated clips; the receiver's clock is driven step by step
(``lag`` frames behind the sender, as a playout delay), except in the one real-time test.
"""

import asyncio
import base64
import json

import imageio.v3 as iio
import numpy as np
import pytest

from kpflow import codec
from kpflow.call import session as sess
from kpflow.call.link import MemoryLink
from kpflow.call.receiver import CallReceiver, FrameRenderer, to_uint8
from kpflow.call.sender import CallSender, Impairment, fit_frame, open_source
from kpflow.call.stats import LoopbackReference
from kpflow.channel import LossProcess

FPS = 30.0
STEP, THRESHOLD = 0.01, 0.005  # the random FOMM: 35 packets for 60 frames, 4 of them intra
POLICY = sess.codec_policy(threshold=THRESHOLD)
NUM_FRAMES = 75
TIMEOUT_S = 120
# ffmpeg runs as a subprocess (fork + exec at once) when the tests write and read videos.
pytestmark = pytest.mark.filterwarnings(r"ignore:os\.fork\(\) was called:RuntimeWarning")


class KeepingReference(LoopbackReference):
    """A loopback reference that also keeps every record (the receiver pops them)."""

    def __init__(self):
        super().__init__()
        self.kept = {}

    def record(self, frame):
        self.kept[frame.index] = frame
        super().record(frame)


def clip(seed, num_frames=NUM_FRAMES, size=64):
    from kpflow.data.synthetic_video import identity_style, render_clip

    frames = render_clip(identity_style(0, seed % 2, size), np.random.default_rng([seed, 7]), num_frames, size)
    return frames.astype(np.float32) / 255.0


@pytest.fixture(scope="module")
def setup():
    """The FOMM, one shared renderer, its fingerprint, a clip to send and codec parameters."""
    from configs.fomm_common import fomm_config
    from kpflow.fomm.model import random_fomm

    fomm = random_fomm(fomm_config("vox", "tiny"))
    frames = clip(0)
    # Fitted on the clip sent too, so that its frames lie in the codec's range (none is clipped).
    fit = [frames, clip(1, 40), clip(2, 40)]
    params = sess.default_codec_params(fomm, [sess_series(fomm, f) for f in fit], step=STEP, policy=POLICY)
    return {"fomm": fomm, "renderer": FrameRenderer(fomm), "fingerprint": sess.fomm_fingerprint(fomm),
            "frames": frames, "params": params}


def sess_series(fomm, frames):
    from kpflow.io import keypoint_series

    return keypoint_series(fomm, frames, 8)


def bound(params, policy=POLICY):
    """The codec's per-frame keypoint MAE bound while in sync: a frame not sent drifts at most
    ``threshold``; a sent one is off by at most max(deadzone, 1/2) steps per basis component."""
    step = float(np.max(params.quantizer.step))
    return max(policy["threshold"], max(params.deadzone, 0.5) * step) * (1 + 1e-4) + 1e-6


def call(setup, tmp_path, *, frames=None, lag=2, impairment=None, clean_from=None, before_step=None,
         vanish_after=None, reference_pixels=False, status_every_s=0.0, peer_timeout_s=0.2, source=None,
         predict=None, params=None):
    """One call driven frame by frame -> (sender, receiver, stats, shown frames, reference).
    ``predict``/``params``: the codec's predictor and its parameters (default hold-last, setup's)."""
    frames = setup["frames"] if frames is None else frames
    params = setup["params"] if params is None else params
    ends = {} if predict is None else {"predict": predict, "predictor_fingerprint": "test-predictor"}
    shown, reference, requests = [], KeepingReference(), []

    async def main():
        a, b = MemoryLink.pair()
        sender = CallSender(a, setup["fomm"], params, fps=FPS, policy=POLICY, impairment=impairment,
                            reference=reference, status_every_s=status_every_s, fingerprint=setup["fingerprint"], **ends)
        receiver = CallReceiver(b, setup["fomm"], out=tmp_path / "call.mp4", stats_path=tmp_path / "stats.json",
                                on_frame=shown.append, reference=reference, reference_pixels=reference_pixels,
                                renderer=setup["renderer"], fingerprint=setup["fingerprint"],
                                peer_timeout_s=peer_timeout_s, **ends)
        send_control = b.send_control

        async def record_requests(message):  # the receiver's frame when it asks for a keyframe
            if message.get("type") == "keyframe_request":
                requests.append(receiver.frame)
            await send_control(message)

        b.send_control = record_requests
        start = sender.start(frames[0]) if source is None else sender.start(source, render_mode="transfer")
        await asyncio.gather(start, receiver.accept())
        for t, frame in enumerate(frames):
            if vanish_after is not None and t == vanish_after:
                await a.close("connection lost")  # no bye: the sender vanished
                break
            if clean_from is not None and t == clean_from:
                await sender.set_impairment(None)
            if before_step is not None:
                await before_step(t, a)
            await sender.step(frame)
            if t >= lag:
                await receiver.tick()
        else:
            await sender.finish()
        ticks = 0
        while not receiver.ended:
            await receiver.tick()
            ticks += 1
            assert ticks < 1000, "the receiver never ended"
        stats = await receiver.finish()
        return sender, receiver, stats

    sender, receiver, stats = asyncio.run(asyncio.wait_for(main(), TIMEOUT_S))
    receiver.requests = requests
    return sender, receiver, stats, shown, reference


def direct_codec(params, keypoints, policy=POLICY, predict=codec.hold_last):
    """What kpflow.codec alone shows for these keypoints, every packet delivered."""
    s, r = codec.Sender(params, predict, **policy), codec.Receiver(params, predict)
    return np.stack([r.step(s.step(x)) for x in keypoints])


def read_mp4(path):
    return iio.imread(path, plugin="FFMPEG", index=None)


# -- the clean call ---------------------------------------------------------------------------------------


def test_clean_call_shows_every_frame_once_and_matches_the_codec_bit_for_bit(setup, tmp_path):
    sender, receiver, stats, shown, reference = call(setup, tmp_path, reference_pixels=True)
    n = len(setup["frames"])
    assert [f.index for f in shown] == list(range(n))  # every frame read, once, in order
    assert all(f.rendered for f in shown)
    detected = np.stack([reference.kept[t].keypoints for t in range(n)])
    expected = direct_codec(setup["params"], detected)
    assert np.array_equal(np.stack([f.keypoints for f in shown]), expected)
    # The keypoints the sender detected are the FOMM's on the frames it read.
    assert np.allclose(detected, sess_series(setup["fomm"], setup["frames"]), atol=1e-6)
    video = read_mp4(tmp_path / "call.mp4")
    assert video.shape == (n, 64, 64, 3)
    assert np.abs(video.astype(np.float32) - np.stack([f.image for f in shown])).mean() < 8  # lossy H.264
    written = json.loads((tmp_path / "stats.json").read_text())
    assert written == json.loads(json.dumps(stats))
    assert stats["frames"] == stats["frames_shown"] == stats["frames_sent"] == n
    assert stats["packets_sent"] == sender.stats.packets_sent == stats["packets_received"] == stats["packets_used"]
    assert stats["bytes_sent"] == sender.stats.bytes_sent
    assert stats["kbps"] == pytest.approx(sender.stats.kbps) and stats["kbps"] > 0
    assert stats["forecast_share"] == pytest.approx(1 - sender.stats.packets_sent / n)
    assert stats["keypoint_mae_raw"] == pytest.approx(float(np.mean(np.abs(expected - detected))), rel=1e-5)
    assert stats["keypoint_mae_raw_lost"] is None and stats["keyframe_requests"] == 0
    assert stats["packets_late"] == stats["packets_duplicate"] == stats["datagrams_junk"] == 0
    assert 0 < stats["pixel_mae_vs_full_rate"] < 0.05
    assert set(stats["latency_ms"]) == {"p50", "p95", "max"} and stats["render_fps"] > 0
    assert stats["ended"] == "sender finished"
    assert receiver.latest_frame() is shown[-1].image
    # In sync the whole call: every frame within the codec's bound of what the detector saw.
    assert np.max(np.mean(np.abs(expected - detected), axis=1)) <= bound(setup["params"])


def test_a_forecaster_predictor_on_both_ends_matches_the_codec_bit_for_bit(setup, tmp_path):
    import jax

    from kpflow.forecast import create
    from kpflow.forecast.predictor import ForecastPredictor
    from kpflow.keypoints import CausalScaler

    series = [sess_series(setup["fomm"], f) for f in (setup["frames"], clip(1, 40), clip(2, 40))]
    f = create("gru", dim=series[0].shape[1], num_observed=4, horizon=2, hidden=8, deterministic=True)
    variables = f.init(jax.random.PRNGKey(0), np.stack([s[:6] for s in series]), CausalScaler.fit(series))
    # Weights that move: the untrained head predicts a zero step (hold-last).
    variables = jax.tree_util.tree_map(lambda a: a + 0.05 * np.sin(np.arange(a.size).reshape(a.shape)), variables)
    predict = ForecastPredictor(f, variables, step=STEP)
    params = sess.fit_codec(series, step=STEP, predict=predict, policy=POLICY)
    _, _, stats, shown, reference = call(setup, tmp_path, predict=predict, params=params)
    n = len(setup["frames"])
    assert [s.index for s in shown] == list(range(n))
    detected = np.stack([reference.kept[t].keypoints for t in range(n)])
    keypoints = np.stack([s.keypoints for s in shown])
    assert np.array_equal(keypoints, direct_codec(params, detected, predict=predict))
    # the forecaster, not hold-last, filled the frames without a packet
    assert not np.array_equal(keypoints, direct_codec(params, detected))
    assert stats["keypoint_mae_raw"] <= bound(params)


def test_transfer_mode_animates_another_source_by_relative_motion(setup, tmp_path):
    other = clip(1, 1)[0]
    _, receiver, stats, shown, _ = call(setup, tmp_path, frames=setup["frames"][:8], source=other)
    assert receiver.session.render_mode == "transfer" and [f.index for f in shown] == list(range(8))
    assert stats["frames"] == 8 and shown[0].packet
    renderer = setup["renderer"]
    prepared = renderer.prepare(receiver.session.source)
    still = renderer.render(prepared, prepared.kp_source)
    # Frame 0 drives with the keypoints the motion is measured from: the source's own keypoints.
    first = renderer.render(prepared, renderer.keypoints(prepared, shown[0].keypoints, shown[0].keypoints))
    assert np.abs(first - still).max() < 1e-5
    assert np.abs(shown[0].image.astype(int) - to_uint8(still)).max() <= 1
    # The absolute keypoints (reconstruction mode) would have drawn another picture.
    absolute = renderer.render(prepared, renderer.keypoints(prepared, shown[0].keypoints))
    assert np.abs(absolute - still).max() > 1e-4
    # Later frames: the source's keypoints moved by the sender's motion since frame 0.
    moved = renderer.keypoints(prepared, shown[-1].keypoints, shown[0].keypoints)
    motion = shown[-1].keypoints.reshape(-1, 6)[:, :2] - shown[0].keypoints.reshape(-1, 6)[:, :2]
    assert np.allclose(np.asarray(moved.value), np.asarray(prepared.kp_source.value) + motion, atol=1e-6)
    assert np.abs(motion).max() > 1e-3


# -- losses, reordering, duplicates ------------------------------------------------------------------------


def test_impaired_call_survives_and_recovers_after_the_keyframe_request(setup, tmp_path):
    stop, lag = 40, 2
    impairment = Impairment(loss=0.3, burst=2, reorder=0.2, duplicate=0.2, seed=3)
    sender, receiver, stats, shown, reference = call(setup, tmp_path, impairment=impairment, clean_from=stop, lag=lag)
    n = len(setup["frames"])
    kept = reference.kept
    assert [f.index for f in shown] == list(range(n))
    keypoints = np.stack([f.keypoints for f in shown])
    assert np.all(np.isfinite(keypoints))
    p = setup["params"]
    assert np.all((keypoints >= p.low) & (keypoints <= p.high))
    assert sender.stats.packets_dropped > 0 and sender.stats.packets_duplicated > 0 and sender.stats.packets_reordered > 0
    assert stats["packets_duplicate"] > 0 and stats["keyframe_requests"] > 0 and stats["loss_events"] > 0
    assert stats["keypoint_mae_raw_lost"] is not None and sum(bool(f.lost) for f in shown) > 0
    # Every keyframe request (at tick r) reaches the sender before its frame r + lag + 1, which goes
    # out intra; unless that packet is lost, the receiver shows it at that tick.
    assert len(receiver.requests) == stats["keyframe_requests"] == sender.stats.keyframe_requests
    for r in receiver.requests:
        answer = r + lag + 1
        assert kept[answer].datagram[1] & codec.INTRA_FLAG, r
        assert shown[answer].intra or shown[answer].lost, r
    # After the losses stop, the first intra packet (asked for, or the periodic one) puts the receiver
    # back in sync: from that tick on it shows what the sender's codec expects, bit for bit, within
    # the codec's bound of the detected keypoints.
    answered = next(f.index for f in shown if f.index >= stop and f.intra)
    assert answered < stop + codec.DEFAULT_INTRA_PERIOD
    for f in shown[answered:]:
        assert np.array_equal(f.keypoints, kept[f.index].expected), f.index
        assert np.mean(np.abs(f.keypoints - kept[f.index].keypoints)) <= bound(p), f.index
    # Before it, the losses did show: the receiver was off the sender's expectation somewhere.
    assert any(not np.array_equal(f.keypoints, kept[f.index].expected) for f in shown[:answered])


def test_junk_empty_and_oversize_datagrams_are_survived(setup, tmp_path):
    rng = np.random.default_rng(5)
    injected = {"oversize": 0}

    async def inject(t, link):
        for _ in range(3):  # random bytes, some claiming this very frame's index
            junk = rng.integers(0, 256, rng.integers(1, 40)).astype(np.uint8).tobytes()
            if rng.random() < 0.5:
                junk = bytes([t % 256]) + junk
            await link.send_packet(junk)
        await link.send_packet(b"")
        await link.send_packet(bytes([t % 256]))
        if t % 10 == 0:
            await link.send_packet(bytes([t % 256]) + bytes(2000 if t % 20 else 2**20))
            injected["oversize"] += 1

    _, _, stats, shown, reference = call(setup, tmp_path, before_step=inject)
    n = len(setup["frames"])
    assert [f.index for f in shown] == list(range(n))
    keypoints = np.stack([f.keypoints for f in shown])
    assert np.all(np.isfinite(keypoints))
    assert np.all((keypoints >= setup["params"].low) & (keypoints <= setup["params"].high))
    assert stats["datagrams_oversize"] == injected["oversize"]
    assert stats["datagrams_junk"] + stats["codec_junk"] >= 2 * n  # the empty and index-only ones at least
    # Junk claiming a frame displaces its real packet only when the codec cannot tell them apart
    # (canonical bytes with the expected sequence number: 1 in 128 of the junk that decodes); about
    # 1.5 junk datagrams claim each frame here.
    sent = [t for t in range(n) if reference.kept[t].datagram is not None]
    displaced = [f.index for f in shown if f.lost]
    assert len(sent) > n / 2 and len(displaced) <= 2, displaced
    # The stream stays in sync: it shows what the sender expects, except between a passing junk
    # packet and the next intra packet.
    last_intra = max(f.index for f in shown if f.intra)
    assert last_intra >= n - codec.DEFAULT_INTRA_PERIOD
    assert all(np.array_equal(f.keypoints, reference.kept[f.index].expected) for f in shown[last_intra:])
    assert read_mp4(tmp_path / "call.mp4").shape[0] == n


# -- the end of a call ---------------------------------------------------------------------------------------


def test_a_vanished_sender_leaves_a_complete_mp4_and_stats(setup, tmp_path):
    vanish, lag = 20, 2
    _, receiver, stats, shown, _ = call(setup, tmp_path, vanish_after=vanish, lag=lag, status_every_s=0.1,
                                        peer_timeout_s=0.2)
    # Closed at the receiver's frame vanish - lag; then forecast for the peer timeout (0.2 s = 6 frames).
    expected = vanish - lag + receiver.peer_timeout_frames
    assert receiver.peer_timeout_frames == 6
    assert [f.index for f in shown] == list(range(expected))
    assert not any(f.packet for f in shown[vanish:])  # nothing arrives after the sender is gone
    video = read_mp4(tmp_path / "call.mp4")
    assert video.shape == (expected, 64, 64, 3)
    written = json.loads((tmp_path / "stats.json").read_text())
    assert written == stats and written["ended"] == "connection lost"
    assert written["frames_sent"] == 18  # the last status (every 3 frames) before it vanished
    assert written["frames"] == expected


def test_realtime_call_over_a_delayed_jittery_link(setup, tmp_path):
    """Both ends on their clocks (the sender paced by the video's, 10 fps), datagrams delayed 20 +- 10 ms."""
    from kpflow.data.synthetic_video import make_synthetic_videos

    video = make_synthetic_videos(tmp_path / "videos", num_train=1, num_test=0, num_frames=12, size=64)["train"][0]
    reference = LoopbackReference()

    async def main():
        a, b = MemoryLink.pair()
        source = open_source(video, (64, 64))
        sender = CallSender(a, setup["fomm"], setup["params"], fps=source.fps, policy=POLICY, reference=reference,
                            impairment=Impairment(delay_ms=20, jitter_ms=10, seed=1), fingerprint=setup["fingerprint"])
        receiver = CallReceiver(b, setup["fomm"], out=tmp_path / "call.mp4", stats_path=tmp_path / "stats.json",
                                reference=reference, renderer=setup["renderer"], fingerprint=setup["fingerprint"],
                                playout_ms=150)
        sent, received = await asyncio.gather(sender.run(source.frames), receiver.run())
        return source, sent, received

    source, sent, stats = asyncio.run(asyncio.wait_for(main(), TIMEOUT_S))
    assert source.fps == 10.0
    assert sent.frames_sent == 12 and sent.ended == "sender finished"
    assert stats["frames"] == stats["frames_sent"] == 12
    assert stats["frames_shown"] + stats["frames_skipped"] == 12
    assert stats["packets_received"] == sent.packets_sent  # delayed, none lost
    assert read_mp4(tmp_path / "call.mp4").shape[0] == 12
    assert stats["latency_ms"]["p50"] > 0 and stats["keypoint_mae_raw"] is not None


# -- set-up ---------------------------------------------------------------------------------------------------


def handshake(setup, hello=None, *, receiver_fingerprint=None, receiver_predictor=sess.HOLD_LAST):
    """The set-up alone: -> (sender's error, receiver's error, the close reasons of both ends)."""
    fomm = setup["fomm"]

    async def main():
        a, b = MemoryLink.pair()
        message = hello or sess.make_hello(fomm_fingerprint=setup["fingerprint"], predictor_fingerprint=sess.HOLD_LAST,
                                           fps=FPS, source=setup["frames"][0], params=setup["params"], policy=POLICY)
        answer = sess.answer(b, fomm_fingerprint=receiver_fingerprint or setup["fingerprint"],
                             predictor_fingerprint=receiver_predictor, frame_shape=(64, 64), dim=6 * fomm.num_kp)
        results = await asyncio.gather(sess.offer(a, message), answer, return_exceptions=True)
        return (*results, a.close_reason, b.close_reason)

    return asyncio.run(asyncio.wait_for(main(), TIMEOUT_S))


def assert_refused_on_both_ends(result, words):
    sent, answered, reason_a, reason_b = result
    assert isinstance(sent, sess.SessionRefused) and isinstance(answered, sess.SessionRefused), result
    assert sent.reason == answered.reason and "\n" not in sent.reason
    assert words in sent.reason, sent.reason
    assert reason_a == reason_b == f"refused by the receiver: {sent.reason}"


def test_setup_accepted_and_decoded(setup):
    sent, session, reason_a, reason_b = handshake(setup)
    assert sent is None and isinstance(session, sess.Session) and reason_a == reason_b == ""
    assert session.fps == FPS and session.frame_shape == (64, 64, 3) and session.policy == POLICY
    assert np.abs(session.source - setup["frames"][0]).max() <= 0.5 / 255 + 1e-6  # 8-bit PNG
    assert all(np.array_equal(v, setup["params"].to_arrays()[k]) for k, v in session.params.to_arrays().items())


def test_setup_refused_for_another_fomm_in_one_line_on_both_ends(setup):
    import jax

    from kpflow.fomm.model import FOMM

    fomm = setup["fomm"]
    leaves, tree = jax.tree.flatten(fomm.variables)
    leaves[3] = np.nextafter(np.asarray(leaves[3]), np.float32(np.inf))  # one ulp in one array
    other = FOMM(fomm.config, jax.tree.unflatten(tree, leaves))
    other_fingerprint = sess.fomm_fingerprint(other)
    assert other_fingerprint != setup["fingerprint"] and sess.fomm_fingerprint(fomm) == setup["fingerprint"]
    assert_refused_on_both_ends(handshake(setup, receiver_fingerprint=other_fingerprint), "the FOMM differs")


def test_setup_refused_for_another_predictor_through_the_ends(setup):
    async def main():
        a, b = MemoryLink.pair()
        sender = CallSender(a, setup["fomm"], setup["params"], fps=FPS, policy=POLICY, fingerprint=setup["fingerprint"])
        receiver = CallReceiver(b, setup["fomm"], predictor_fingerprint="0123456789abcdef",
                                renderer=setup["renderer"], fingerprint=setup["fingerprint"])
        results = await asyncio.gather(sender.start(setup["frames"][0]), receiver.accept(), return_exceptions=True)
        return (*results, a.close_reason, b.close_reason)

    assert_refused_on_both_ends(asyncio.run(asyncio.wait_for(main(), TIMEOUT_S)), "the forecaster predictor differs")


def test_setup_refused_when_the_receiver_cannot_start(setup, tmp_path):
    (tmp_path / "file").write_text("")

    async def main():
        a, b = MemoryLink.pair()
        sender = CallSender(a, setup["fomm"], setup["params"], fps=FPS, policy=POLICY, fingerprint=setup["fingerprint"])
        receiver = CallReceiver(b, setup["fomm"], out=tmp_path / "file" / "call.mp4", renderer=setup["renderer"],
                                fingerprint=setup["fingerprint"])
        results = await asyncio.gather(sender.start(setup["frames"][0]), receiver.accept(), return_exceptions=True)
        return (*results, a.close_reason, b.close_reason)

    assert_refused_on_both_ends(asyncio.run(asyncio.wait_for(main(), TIMEOUT_S)), "the receiver cannot start: ")


def valid_hello(setup):
    return sess.make_hello(fomm_fingerprint=setup["fingerprint"], predictor_fingerprint=sess.HOLD_LAST, fps=FPS,
                           source=setup["frames"][0], params=setup["params"], policy=POLICY)


@pytest.mark.parametrize("change, words", [
    ({"protocol": 2}, "protocol version 2 differs from this receiver's 1"),
    ({"type": "bye"}, "malformed set-up: expected a hello"),
    ({"codec": None}, "malformed set-up: codec must be base64 text"),
    ({"codec": base64.b64encode(b"not an npz").decode()}, "malformed set-up: codec is not an .npz"),
    ({"source_png": "***"}, "malformed set-up: source_png is not base64"),
    ({"frame_shape": [32, 32, 3]}, "malformed set-up: frame_shape [32, 32, 3] is not this FOMM's"),
    ({"fps": -1}, "malformed set-up: fps must be"),
    ({"codec_policy": {"policy": "threshold"}}, "malformed set-up: codec_policy must hold"),
    ({"codec_policy": {**POLICY, "max_gap": 1000}}, "malformed set-up: max_gap must be"),
    ({"fingerprint": "x"}, "malformed set-up: fingerprint"),
])
def test_setup_refused_for_a_malformed_or_foreign_hello(setup, change, words):
    assert_refused_on_both_ends(handshake(setup, {**valid_hello(setup), **change}), words)


def test_setup_refused_for_a_source_of_another_size(setup):
    hello = {**valid_hello(setup), "source_png": sess.encode_png(np.zeros((32, 48, 3), np.float32))}
    assert_refused_on_both_ends(handshake(setup, hello), "source_png is 32x48, not the 64x64")


# -- pieces ---------------------------------------------------------------------------------------------------


def test_loss_process_rate_and_burst():
    draws = LossProcess(0.3, 3.0, np.random.default_rng(0))
    lost = np.array([draws.lost() for _ in range(40000)])
    runs = np.diff(np.flatnonzero(np.diff(np.concatenate([[0], lost.astype(int), [0]]))))[::2]
    assert lost.mean() == pytest.approx(0.3, abs=0.02)
    assert runs.mean() == pytest.approx(3.0, abs=0.2)
    independent = LossProcess(0.1, 1.0, np.random.default_rng(1))
    assert np.mean([independent.lost() for _ in range(20000)]) == pytest.approx(0.1, abs=0.01)
    assert not any(LossProcess(0.0, 1.0).lost() for _ in range(100))
    with pytest.raises(ValueError, match="needs a mean burst"):
        LossProcess(0.8, 2.0)


@pytest.mark.parametrize("kwargs, words", [
    ({"loss": 1.0}, "impairment: loss rate must be in [0, 1)"),
    ({"loss": 0.5, "burst": 0.5}, "impairment: mean burst length must be >= 1"),
    ({"reorder": 1.5}, "impairment: reorder must be a probability"),
    ({"duplicate": -0.1}, "impairment: duplicate must be a probability"),
    ({"delay_ms": -5}, "impairment: delay_ms must be >= 0"),
    ({"jitter_ms": float("nan")}, "impairment: jitter_ms must be >= 0"),
])
def test_bad_impairments_are_one_line_errors(kwargs, words):
    with pytest.raises(ValueError) as e:
        Impairment(**kwargs)
    assert words in str(e.value) and "\n" not in str(e.value)


def test_frames_are_centre_cropped_and_resized():
    wide = np.zeros((40, 80, 3), np.uint8)
    wide[:, :20] = wide[:, 60:] = (0, 0, 255)  # blue sides
    wide[:, 20:60] = (255, 0, 0)  # a red centre square
    out = fit_frame(wide, (16, 16))
    assert out.shape == (16, 16, 3) and out.dtype == np.float32
    assert np.allclose(out, [1, 0, 0])
    tall = np.transpose(wide, (1, 0, 2))
    assert np.allclose(fit_frame(tall, (8, 8)), [1, 0, 0])
    grey16 = np.full((8, 8), 65535, np.uint16)
    assert np.allclose(fit_frame(grey16, (4, 4)), 1.0)
    with pytest.raises(ValueError, match="a frame must be"):
        fit_frame(np.zeros((4, 4, 5)), (4, 4))


def test_frame_sources(tmp_path):
    from kpflow.data.synthetic_video import make_synthetic_videos
    from kpflow.data.videos import read_video

    mp4 = make_synthetic_videos(tmp_path / "mp4", num_train=1, num_test=0, num_frames=6, size=32)["train"][0]
    folder = make_synthetic_videos(tmp_path / "png", num_train=1, num_test=0, num_frames=6, size=32,
                                   fmt="folder")["train"][0]
    movie = open_source(mp4, (16, 16))
    frames = list(movie.frames)
    assert movie.fps == 10.0 and not movie.live and len(frames) == 6 and frames[0].shape == (16, 16, 3)
    images = open_source(folder, (32, 32), fps=25)
    assert images.fps == 25.0
    assert np.allclose(np.stack(list(images.frames)), read_video(folder), atol=1e-6)  # same size: unchanged
    assert open_source(folder, (32, 32)).fps == 30.0
    empty = tmp_path / "empty"
    empty.mkdir()
    for spec, words in [(tmp_path / "nope.mp4", "does not exist"), (empty, "no .png/.jpg images"),
                        ("/dev/video93", "/dev/video93 does not exist"), ("<video93>", "/dev/video93 does not exist"),
                        (tmp_path, "no .png/.jpg images")]:
        with pytest.raises(ValueError) as e:
            open_source(spec, (16, 16))
        assert words in str(e.value) and "\n" not in str(e.value), str(e.value)
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"not a movie")
    with pytest.raises(ValueError, match="broken.mp4: cannot read video"):
        list(open_source(broken, (16, 16)).frames)


def test_codec_parameters_fitted_from_series_folders_or_first_frames(setup, tmp_path):
    from kpflow.data.synthetic_video import make_synthetic_videos
    from kpflow.keypoints import vector_to_keypoints

    fomm = setup["fomm"]
    series = sess_series(fomm, clip(4, 12))
    value, jacobian = vector_to_keypoints(series)
    clips = tmp_path / "clips"
    clips.mkdir()
    np.savez(clips / "a.npz", value=value, jacobian=jacobian)
    np.savez(clips / "b.npz", value=value[::-1], jacobian=jacobian[::-1])
    from_series = sess.default_codec_params(fomm, [series, series[::-1]], step=STEP, policy=POLICY)
    from_folder = sess.default_codec_params(fomm, fit_dir=clips, step=STEP, policy=POLICY)
    assert all(np.array_equal(from_series.to_arrays()[k], v) for k, v in from_folder.to_arrays().items())
    videos = tmp_path / "videos"
    make_synthetic_videos(videos, num_train=1, num_test=0, num_frames=8, size=64)
    assert sess.default_codec_params(fomm, fit_dir=videos, step=STEP).quantizer.dim == 60
    first = sess.default_codec_params(fomm, first_frames=setup["frames"][:20], step=STEP)
    assert first.quantizer.dim == 60
    bad = tmp_path / "bad"
    bad.mkdir()
    np.savez(bad / "c.npz", value=value[:, :5], jacobian=jacobian[:, :5])
    for kwargs, words in [({}, "give the codec something to fit on"),
                          ({"fit_dir": tmp_path / "none"}, "--codec_fit"),
                          ({"fit_dir": bad}, "c.npz has keypoint vectors of shape (30,), this FOMM's are [60]"),
                          ({"first_frames": setup["frames"][:1]}, "first_frames must be [T >= 2"),
                          ({"series": [series], "step": 1e-9}, "too fine")]:
        with pytest.raises(ValueError) as e:
            sess.default_codec_params(fomm, **kwargs)
        assert words in str(e.value) and "\n" not in str(e.value), str(e.value)
