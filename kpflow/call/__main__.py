"""Hold a call: ``python -m kpflow.call {receive,send,loopback} ...`` (needs the ``call`` extra).

    python -m kpflow.call receive --fomm DIR --port 8080 [--out call.mp4] [--stats s.json]
    python -m kpflow.call send --to http://HOST:8080 --token TOKEN --fomm DIR --video V [--source IMG]
    python -m kpflow.call loopback --fomm DIR --video V [--frames N] [--loss 0.1 --burst 3] \\
        [--forecaster WORKDIR] --out call.mp4 --stats s.json

The receiver prints its URL and token; the sender needs both. Signalling binds 127.0.0.1 unless
``--host`` says otherwise. The viewer page is at the receiver's URL. See ``docs/call.md``.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Sequence

from kpflow.cli import OneLineArgumentParser, UsageError, one_line, run_cli

PROG = "python -m kpflow.call"


def _predictor(p) -> None:
    p.add_argument("--forecaster", default="", help="a train.forecaster workdir: the codec's predictor on both ends "
                                                    "(both must load the same; default hold-last)")
    p.add_argument("--predictor_gain", type=float, default=1.0,
                   help="share of the forecaster's step used (0..1; python -m eval.codec --predictor fits it)")


def _codec_and_impairment(p) -> None:
    _predictor(p)
    g = p.add_argument_group("codec")
    g.add_argument("--codec_fit", default="", help="clips (.npz) or videos to fit the codec on (default: the first "
                                                   "seconds of the video)")
    g.add_argument("--threshold", type=float, default=0.02, help="send when the receiver would drift beyond this")
    g.add_argument("--intra_period", type=int, default=30, help="an intra packet at least every N frames")
    g.add_argument("--fps", type=float, default=None, help="override the video's frame rate")
    g.add_argument("--as_fast_as_possible", action="store_true",
                   help="do not pace the frames by the video's clock (default: real time)")
    g = p.add_argument_group("impairment (before the channel; loopback WebRTC loses nothing)")
    g.add_argument("--loss", type=float, default=0.0, help="long-run share of packets lost")
    g.add_argument("--burst", type=float, default=1.0, help="mean length of a loss run (1: independent losses)")
    g.add_argument("--reorder", type=float, default=0.0, help="probability that a packet is delivered late")
    g.add_argument("--duplicate", type=float, default=0.0, help="probability that a packet is sent twice")
    g.add_argument("--delay_ms", type=float, default=0.0, help="added delay")
    g.add_argument("--jitter_ms", type=float, default=0.0, help="random extra delay")
    g.add_argument("--seed", type=int, default=0, help="seed of the impairment")


def parse_args(argv: Sequence[str] | None = None):
    p = OneLineArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True, parser_class=OneLineArgumentParser)
    r = sub.add_parser("receive", help="wait for a call and animate it")
    r.add_argument("--fomm", required=True, help="FOMM directory (the sender's own)")
    r.add_argument("--port", type=int, default=8080, help="signalling and viewer port (0: a free one)")
    r.add_argument("--host", default="127.0.0.1", help="address to bind (default loopback only)")
    r.add_argument("--token", default=None, help="the call's token (default: generated and printed)")
    r.add_argument("--playout_ms", type=float, default=100.0, help="how late a packet may be and still be used")
    r.add_argument("--peer_timeout_s", type=float, default=3.0, help="a silent peer is gone after this long")
    r.add_argument("--out", default="", help="write the call as shown to this mp4")
    r.add_argument("--stats", default="", help="write the statistics to this JSON")
    _predictor(r)
    s = sub.add_parser("send", help="stream a video's keypoints to a receiver")
    s.add_argument("--to", required=True, help="the receiver's URL, http://HOST:PORT")
    s.add_argument("--token", required=True, help="the token the receiver printed")
    s.add_argument("--fomm", required=True, help="FOMM directory (the receiver's own)")
    _source(s)
    _codec_and_impairment(s)
    lb = sub.add_parser("loopback", help="both ends in this process over a real local WebRTC connection")
    lb.add_argument("--fomm", required=True, help="FOMM directory")
    _source(lb)
    lb.add_argument("--frames", type=int, default=0, help="send only the first N frames (0: all)")
    lb.add_argument("--playout_ms", type=float, default=100.0, help="how late a packet may be and still be used")
    lb.add_argument("--viewer_port", type=int, default=None, help="also serve the viewer page on this port")
    lb.add_argument("--out", default="", help="write the call as shown to this mp4")
    lb.add_argument("--stats", default="", help="write the statistics to this JSON")
    _codec_and_impairment(lb)
    return p.parse_args(argv)


def _source(p) -> None:
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--video", help="a video file")
    g.add_argument("--frames_dir", help="a folder of images")
    g.add_argument("--camera", help="a camera device, e.g. 0 or /dev/video0")
    p.add_argument("--source", default="", help="the image to animate (transfer mode; default: the first frame)")


def _video(a) -> str:
    if a.camera is not None:
        return a.camera if a.camera.startswith("/dev/") else f"<video{a.camera}>"
    return a.video or a.frames_dir


def _impairment(a):
    from kpflow.call.sender import Impairment

    try:
        return Impairment(loss=a.loss, burst=a.burst, reorder=a.reorder, duplicate=a.duplicate,
                          delay_ms=a.delay_ms, jitter_ms=a.jitter_ms, seed=a.seed)
    except ValueError as e:
        raise UsageError(one_line(e)) from None


def _policy(a) -> dict:
    return {"threshold": a.threshold, "intra_period": a.intra_period}


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)

    def work() -> None:
        try:
            from kpflow.call import app
        except ImportError as e:
            raise UsageError(f"the call needs the call extra ({e.name} is missing): pip install -e '.[call]'") from None
        if args.command == "receive":
            coroutine = app.receive(fomm_dir=args.fomm, port=args.port, host=args.host, token=args.token,
                                    playout_ms=args.playout_ms, out=args.out or None, stats=args.stats or None,
                                    peer_timeout_s=args.peer_timeout_s, forecaster=args.forecaster or None,
                                    predictor_gain=args.predictor_gain)
        elif args.command == "send":
            coroutine = app.send(to=args.to, token=args.token, fomm_dir=args.fomm, video=_video(args),
                                 source=args.source or None, codec_fit=args.codec_fit or None, fps=args.fps,
                                 realtime=not args.as_fast_as_possible, policy=_policy(args),
                                 impairment=_impairment(args), forecaster=args.forecaster or None,
                                 predictor_gain=args.predictor_gain)
        else:
            coroutine = app.loopback(fomm_dir=args.fomm, video=_video(args), source=args.source or None,
                                     codec_fit=args.codec_fit or None, frames=args.frames, fps=args.fps,
                                     playout_ms=args.playout_ms, out=args.out or None, stats=args.stats or None,
                                     policy=_policy(args), impairment=_impairment(args),
                                     realtime=not args.as_fast_as_possible, viewer_port=args.viewer_port,
                                     forecaster=args.forecaster or None, predictor_gain=args.predictor_gain)
        try:
            asyncio.run(coroutine)
        except KeyboardInterrupt:
            print(f"{PROG}: interrupted", file=sys.stderr)

    return run_cli(work, PROG)


if __name__ == "__main__":
    sys.exit(main())
