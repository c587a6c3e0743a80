"""The three ways to run a call, as the CLI (``python -m kpflow.call``) runs them.

- :func:`receive`: serve signalling (and the viewer page) and animate the sender's source image;
- :func:`send`: read a video, a folder of images or a camera, and stream its keypoints to a receiver;
- :func:`loopback`: both ends in one process over a real local WebRTC connection, with the
  sender's detected keypoints shared in memory so that the receiver can score itself
  (``keypoint_mae_raw``, ``pixel_mae_vs_full_rate``, latency on one clock).

Each takes plain arguments (the CLI's options), so a notebook can call them with ``asyncio.run``.
Errors a user can fix are raised as ``kpflow.cli.UsageError`` (one line).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from pathlib import Path

import numpy as np

from kpflow.cli import UsageError, one_line


def load_ends(fomm_dir: str):
    """The FOMM both ends run, with a one-line error when it cannot be loaded."""
    from kpflow.runs import load_fomm

    return load_fomm(fomm_dir, "--fomm")


def load_predictor(workdir: str | None, fomm, gain: float = 1.0):
    """The codec's predictor and its fingerprint: hold-last (``workdir`` None), or the forecaster in
    ``workdir`` (:class:`kpflow.forecast.predictor.ForecastPredictor` at ``gain``). Both ends must load
    the same: the fingerprint covers the weights, the config, the gain and the grid."""
    from kpflow import codec
    from kpflow.call import session as sess

    if not workdir:
        return codec.hold_last, sess.HOLD_LAST
    from kpflow.forecast.predictor import ForecastPredictor
    from kpflow.runs import check_forecaster_fits, load_forecaster

    if not 0 <= gain <= 1:
        raise UsageError(f"--predictor_gain must be in [0, 1] (0: hold-last, 1: the forecaster's step); got {gain}")
    trained = load_forecaster(workdir, flag="--forecaster")
    f = trained.forecaster
    check_forecaster_fits(trained, 6 * fomm.num_kp, f.num_observed, f.horizon, flag="--forecaster")
    if f.num_observed > sess.CONTEXT_FRAMES:
        raise UsageError(f"--forecaster {workdir!r} reads {f.num_observed} frames; a call keeps {sess.CONTEXT_FRAMES}")
    predictor = ForecastPredictor(f, trained.variables, step=sess.DEFAULT_STEP, gain=gain)
    fingerprint = sess.forecaster_fingerprint(trained.config, trained.variables)
    return predictor, f"{fingerprint[:8]}{predictor.fingerprint()[:8]}"


def _check_output(path: str | None, flag: str) -> None:
    if path:
        from kpflow.io import check_output_path

        check_output_path(path, flag)


def open_frames(fomm, video: str, fps: float | None = None):
    """The sender's :class:`kpflow.call.sender.FrameSource` for ``video`` at the FOMM's frame shape."""
    from kpflow.call.sender import open_source
    from kpflow.fomm.model import frame_shape_of

    try:
        return open_source(video, frame_shape_of(fomm.config), fps)
    except ValueError as e:
        raise UsageError(one_line(e)) from None


def codec_params(fomm, video: str, codec_fit: str | None, fps: float | None, policy: dict, predict=None):
    """The sender's codec parameters (for the predictor ``predict``; default hold-last): fitted on
    ``codec_fit`` (clips or videos of other speakers), or else on the first seconds of ``video``
    itself (read once more, then sent from its start)."""
    from kpflow import codec
    from kpflow.call import session as sess

    predict = codec.hold_last if predict is None else predict
    try:
        if codec_fit:
            return sess.default_codec_params(fomm, fit_dir=codec_fit, policy=policy, predict=predict)
        source = open_frames(fomm, video, fps)
        count = max(2, round(sess.DEFAULT_FIT_SECONDS * source.fps))
        frames = [f for _, f in zip(range(count), source.frames)]
        if len(frames) < 2:
            raise UsageError(f"{video} has fewer than 2 frames: nothing to fit the codec on (give --codec_fit DIR)")
        return sess.default_codec_params(fomm, first_frames=np.stack(frames), policy=policy, predict=predict)
    except (ValueError, FileNotFoundError) as e:
        raise UsageError(one_line(e)) from None


def _source_image(path: str | None, fomm):
    """``--source IMAGE`` fitted to the FOMM's frames (transfer mode), or None (reconstruction)."""
    if not path:
        return None
    import imageio.v3 as iio

    from kpflow.call.sender import fit_frame
    from kpflow.fomm.model import frame_shape_of

    try:
        image = np.asarray(iio.imread(path))
    except Exception as e:  # noqa: BLE001 -- any decoder error is the same message for the user
        raise UsageError(f"--source {path}: cannot read the image ({type(e).__name__})") from None
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=-1)
    image = image[..., :3].astype(np.float32)
    return fit_frame(image / (255.0 if image.max() > 1 else 1.0), frame_shape_of(fomm.config))


def _print(message: str) -> None:
    print(message, flush=True)


async def receive(*, fomm_dir: str, port: int = 0, host: str = "127.0.0.1", token: str | None = None,
                  playout_ms: float = 100.0, out: str | None = None, stats: str | None = None,
                  peer_timeout_s: float = 3.0, viewer: bool = True, forecaster: str | None = None,
                  predictor_gain: float = 1.0) -> dict:
    """Wait for one call, animate it until it ends; -> the receiver's statistics. ``forecaster``: a
    workdir whose model predicts what packets do not carry (the sender's own; default hold-last)."""
    from kpflow.call.receiver import CallReceiver
    from kpflow.call.transport import CallServer

    _check_output(out, "--out")
    _check_output(stats, "--stats")
    fomm = load_ends(fomm_dir)
    predict, predictor_fingerprint = load_predictor(forecaster, fomm, predictor_gain)
    holder: dict = {}
    server = await _start(CallServer(token, host=host, port=port, heartbeat_timeout=peer_timeout_s),
                          holder if viewer else None)
    try:
        _print(f"receiver: waiting for a call at {server.url} (token {server.token})")
        if viewer:
            _print(f"viewer: {server.url}/")
        link = await server.accept()
        receiver = CallReceiver(link, fomm, playout_ms=playout_ms, out=out, stats_path=stats,
                                peer_timeout_s=peer_timeout_s, predict=predict,
                                predictor_fingerprint=predictor_fingerprint)
        holder["receiver"] = receiver
        result = await _run_receiver(receiver)
    finally:
        await server.stop()
    _report(result, out, stats)
    return result


async def _run_receiver(receiver) -> dict:
    from kpflow.call.session import SessionRefused, SetupFailed

    try:
        return await receiver.run()
    except (SessionRefused, SetupFailed) as e:
        raise UsageError(f"call refused: {one_line(e)}") from None


async def send(*, to: str, token: str, fomm_dir: str, video: str, source: str | None = None,
               codec_fit: str | None = None, fps: float | None = None, realtime: bool = True,
               policy: dict | None = None, impairment=None, forecaster: str | None = None,
               predictor_gain: float = 1.0) -> dict:
    """Stream ``video`` to the receiver at ``to``; -> the sender's statistics. ``forecaster``: the
    codec's predictor (:func:`load_predictor`; the receiver must load the same)."""
    from kpflow.call import session as sess
    from kpflow.call.sender import CallSender
    from kpflow.call.transport import CallError, connect

    fomm = load_ends(fomm_dir)
    predict, predictor_fingerprint = load_predictor(forecaster, fomm, predictor_gain)
    policy = sess.codec_policy(**(policy or {}))
    params = codec_params(fomm, video, codec_fit, fps, policy, predict)
    frames = open_frames(fomm, video, fps)
    image = _source_image(source, fomm)
    try:
        link = await connect(to, token)
    except CallError as e:
        raise UsageError(str(e)) from None
    sender = CallSender(link, fomm, params, fps=frames.fps, policy=policy, impairment=impairment, predict=predict,
                        predictor_fingerprint=predictor_fingerprint)
    try:
        stats = await sender.run(frames.frames, realtime=realtime, live=frames.live, source=image)
    except (sess.SessionRefused, sess.SetupFailed, ValueError) as e:
        raise UsageError(one_line(e)) from None
    result = stats.to_dict()
    _print(f"sender: {result['frames_sent']} frames, {result['packets_sent']} packets, {stats.kbps:.2f} kbps")
    return result


async def loopback(*, fomm_dir: str, video: str, source: str | None = None, codec_fit: str | None = None,
                   frames: int = 0, fps: float | None = None, playout_ms: float = 100.0, out: str | None = None,
                   stats: str | None = None, policy: dict | None = None, impairment=None,
                   realtime: bool = True, viewer_port: int | None = None, on_started=None,
                   forecaster: str | None = None, predictor_gain: float = 1.0, fomm=None, renderer=None,
                   quiet: bool = False, reference_pixels: bool = True) -> dict:
    """Both ends in this process over a real local WebRTC connection; -> the receiver's statistics.

    ``frames`` > 0 sends only the first that many frames. ``viewer_port``: also serve the viewer
    page there (None: no page). ``on_started(url)`` is called once the call is live (tests open
    the page then). ``fomm`` (loaded already, instead of ``fomm_dir``) and ``renderer`` (a
    :class:`~kpflow.call.receiver.FrameRenderer` of it) let several calls of one process share one
    model and its compiled functions; ``quiet`` prints no report; ``reference_pixels=False`` skips
    rendering every detected frame for ``pixel_mae_vs_full_rate`` (work a real receiver does not do).
    """
    import itertools

    from kpflow.call import session as sess
    from kpflow.call.receiver import CallReceiver, FrameRenderer
    from kpflow.call.sender import CallSender
    from kpflow.call.stats import LoopbackReference
    from kpflow.call.transport import CallServer, connect

    if frames < 0:
        raise UsageError(f"--frames must be >= 0 (0: the whole video); got {frames}")
    _check_output(out, "--out")
    _check_output(stats, "--stats")
    fomm = load_ends(fomm_dir) if fomm is None else fomm
    predict, predictor_fingerprint = load_predictor(forecaster, fomm, predictor_gain)
    policy = sess.codec_policy(**(policy or {}))
    params = codec_params(fomm, video, codec_fit, fps, policy, predict)
    source_frames = open_frames(fomm, video, fps)
    stream = itertools.islice(source_frames.frames, frames) if frames else source_frames.frames
    image = _source_image(source, fomm)
    reference = LoopbackReference()
    holder: dict = {}
    server = await _start(CallServer(port=viewer_port or 0), holder if viewer_port is not None else None)
    try:
        accepted = asyncio.ensure_future(server.accept())
        sender_link = await connect(server.url, server.token)
        receiver_link = await accepted
        receiver = CallReceiver(receiver_link, fomm, playout_ms=playout_ms, out=out, stats_path=stats,
                                reference=reference, reference_pixels=reference_pixels,
                                renderer=FrameRenderer(fomm) if renderer is None else renderer,
                                predict=predict, predictor_fingerprint=predictor_fingerprint)
        holder["receiver"] = receiver
        sender = CallSender(sender_link, fomm, params, fps=source_frames.fps, policy=policy, impairment=impairment,
                            reference=reference, predict=predict, predictor_fingerprint=predictor_fingerprint)
        receiving = asyncio.ensure_future(_run_receiver(receiver))
        if on_started is not None:
            on_started(server.url)
        try:
            await sender.run(stream, realtime=realtime, live=source_frames.live, source=image)
        except (sess.SessionRefused, sess.SetupFailed, ValueError) as e:
            receiving.cancel()
            with contextlib.suppress(asyncio.CancelledError, UsageError):
                await receiving
            raise UsageError(one_line(e)) from None
        result = await receiving
    finally:
        await server.stop()
    if not quiet:
        _report(result, out, stats)
    return result


async def _start(server, viewer_holder: dict | None):
    """Start ``server`` (a ``CallServer``), with the viewer page on it when ``viewer_holder`` is given
    (the dict where the receiver will be put); a port in use is one UsageError line."""
    from kpflow.call.transport import CallError

    if viewer_holder is not None:
        _add_viewer(server.app, viewer_holder)
    try:
        await server.start()
    except CallError as e:
        raise UsageError(str(e)) from None
    return server


def _add_viewer(app, holder: dict) -> None:
    """The viewer page on the signalling server: the receiver's newest frame and statistics."""
    from kpflow.call.viewer import add_viewer_routes

    def latest_frame():
        receiver = holder.get("receiver")
        return None if receiver is None else receiver.latest_frame()

    def live_stats():
        receiver = holder.get("receiver")
        if receiver is None:
            return {"state": "waiting"}
        return {"state": "ended" if receiver.ended else "live", **receiver.stats()}

    add_viewer_routes(app, latest_frame, live_stats)


def _report(result: dict, out: str | None, stats: str | None) -> None:
    def fmt(key, spec=".3f"):
        value = result.get(key)
        return "n/a" if value is None else format(value, spec)

    latency = result.get("latency_ms") or {}
    _print(f"call ended ({result.get('ended', '')}): {result.get('frames_shown')} frames shown, "
           f"{fmt('kbps', '.2f')} kbps, {100 * (result.get('forecast_share') or 0):.0f}% forecast, "
           f"keypoint MAE {fmt('keypoint_mae_raw', '.4f')} (lost frames {fmt('keypoint_mae_raw_lost', '.4f')}), "
           f"render {fmt('render_fps', '.1f')} fps"
           + (f", latency p50 {latency['p50']:.0f} ms" if latency.get("p50") is not None else ""))
    for path, what in ((out, "the call"), (stats, "statistics")):
        if path:
            _print(f"wrote {what}: {Path(path)}")


def frame_strip(video: str, out: str, count: int = 6) -> None:
    """``count`` frames of the call's mp4, side by side, as one PNG (the demo's summary image)."""
    import imageio.v3 as iio

    frames = np.asarray(iio.imread(video, plugin="pyav")) if os.path.getsize(video) else np.zeros((0,))
    if frames.ndim != 4 or not len(frames):
        raise UsageError(f"{video} holds no frames")
    picks = np.linspace(0, len(frames) - 1, min(count, len(frames))).astype(int)
    iio.imwrite(out, np.concatenate([frames[i] for i in picks], axis=1))
