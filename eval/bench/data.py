"""FOMM's input pipeline: ``python -m eval.bench data [--videos DIR] [--frame_size 256] [--workers 0 1 2]
[--tfds] [--out FILE.json]``.

Training pairs per second (``source`` and ``driving`` frames, FOMM's vox augmentation: flips and
colour jitter) at ``--frame_size``, each way of reading them timed in the same run, in blocks of
``--batches`` batches taken in turn over ``--rounds`` rounds (the median block counts):

- ``folder reader``: :class:`kpflow.data.video_pairs.PairBatches` over a
  :class:`~kpflow.data.video_pairs.VideoFolder` that decoded every video into memory first (the
  folder path for small local work), in this process.
- ``grain, folder, W workers``: the trainers' pipeline (:mod:`kpflow.data.loaders`) over the same
  folder; a worker process receives the folder without its decoded videos and decodes whole
  videos on demand; 0 workers read in a thread of this process, from the decoded cache.
- ``grain, tfds, W workers`` (``--tfds``): the same pipeline over a ``kpflow_videos`` dataset
  prepared from the videos into a temporary folder (the preparation is not timed), whose frames
  are stored one PNG each, so a pair decodes two frames.

Without ``--videos`` a generated FOMM layout is used (``kpflow.data.synthetic_video``).
The first batch of every pipeline (worker start-up, first decodes) is not timed.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from eval.bench import timing
from kpflow.cli import UsageError

HELP = "FOMM training pairs per second: the folder reader against grain with 0, 1, 2 workers (and TFDS)"

# FOMM's vox augmentation (configs/fomm_vox.py): every pair flipped and colour-jittered.
VOX_AUGMENTATION = {
    "flip_param": {"horizontal_flip": True, "time_flip": True},
    "jitter_param": {"brightness": 0.1, "contrast": 0.1, "saturation": 0.1, "hue": 0.1},
}


# Batches read before timing, in read-ahead buffers of kpflow.data.loaders (the most workers timed).
WARMUP_BUFFERS = 2
# Passes over the videos per epoch (the tiny configs' num_repeats).
NUM_REPEATS = 10


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--videos", default="", help="a FOMM video layout (root/train/); default: generated videos")
    p.add_argument("--frame_size", type=int, default=256, help="frames are resized to this square size")
    p.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2], help="grain worker counts to time")
    p.add_argument("--batch_size", type=int, default=8, help="pairs per batch")
    p.add_argument("--batches", type=int, default=24, help="batches per timed block")
    p.add_argument("--rounds", type=int, default=2, help="blocks per pipeline, taken in turn")
    p.add_argument("--tfds", action="store_true", help="also time a kpflow_videos TFDS dataset of the videos")


def _check(args: argparse.Namespace) -> None:
    if args.frame_size < 8 or args.batch_size < 1 or args.batches < 1 or args.rounds < 1 or min(args.workers) < 0:
        raise UsageError(f"need --frame_size >= 8, --batch_size, --batches, --rounds >= 1 and --workers >= 0; got "
                         f"{args.frame_size}, {args.batch_size}, {args.batches}, {args.rounds}, {args.workers}")
    if args.videos and not Path(args.videos).is_dir():
        raise UsageError(f"--videos {args.videos!r} is not a folder (a FOMM layout: root/train/ with videos)")


def _videos(args: argparse.Namespace, tmp: Path) -> Path:
    if args.videos:
        return Path(args.videos)
    from kpflow.data.synthetic_video import make_synthetic_videos

    root = tmp / "videos"
    make_synthetic_videos(root, num_train=6, num_test=1, num_frames=48, size=args.frame_size, fmt="mp4")
    return root


def _pipelines(args: argparse.Namespace, root: Path, tmp: Path) -> dict[str, Any]:
    """name -> a function that returns an endless iterator of batches."""
    from kpflow.data import loaders
    from kpflow.data.video_augment import Augmentation
    from kpflow.data.video_pairs import PairBatches, VideoFolder
    from kpflow.progress import progress

    size = (args.frame_size, args.frame_size)
    augment = Augmentation(VOX_AUGMENTATION)
    folder = VideoFolder(root, "train", frame_shape=size, cache=True)
    folder.drop_unreadable(progress=lambda it: progress(it, total=folder.num_videos, desc="decoding", leave=False))
    steps = 10**6  # batches the run's sampler may reach (epochs are planned as they come): more than asked for
    batches = PairBatches(folder, args.batch_size, num_repeats=NUM_REPEATS, seed=0, augment=augment)
    pipelines: dict[str, Any] = {"folder reader": lambda: iter(batches)}
    for w in args.workers:
        pipelines[f"grain, folder, {w} workers"] = (
            lambda w=w: iter(loaders.Loader(loaders.PairBatchSource(batches, steps), worker_count=w)))
    if args.tfds:
        from kpflow.data.prepare import prepare_videos
        from kpflow.data.tfds import TfdsVideos

        data_dir = tmp / "tfds"
        prepared = prepare_videos(str(root), str(data_dir), frame_size=args.frame_size)
        videos = TfdsVideos(prepared.name, str(data_dir), "train")
        tfds_batches = PairBatches(videos, args.batch_size, num_repeats=batches.num_repeats, seed=0, augment=augment)
        for w in args.workers:
            pipelines[f"grain, tfds, {w} workers"] = (
                lambda w=w: iter(loaders.Loader(loaders.PairBatchSource(tfds_batches, steps), worker_count=w)))
    return pipelines


def _pairs_per_second(make, batches: int, batch_size: int) -> float:
    """Pairs per second of ``batches`` batches from a pipeline started by ``make()``, alone on the
    machine: the pipeline is started, read until its read-ahead buffers are spent (not timed), timed,
    and stopped before the next one starts, so no pipeline fills its buffers while another is timed."""
    from kpflow.data import loaders

    iterator = make()
    for _ in range(1 + WARMUP_BUFFERS * loaders.WORKER_BUFFER + loaders.READ_AHEAD):
        next(iterator)
    start = time.perf_counter()
    for _ in range(batches):
        next(iterator)
    rate = batches * batch_size / (time.perf_counter() - start)
    del iterator
    gc.collect()  # stops a grain loader's worker processes
    return rate


def run(args: argparse.Namespace) -> dict[str, Any]:
    from kpflow.progress import progress

    _check(args)
    result: dict[str, Any] = {"frame_size": args.frame_size, "batch_size": args.batch_size, "batches": args.batches,
                              "rounds": args.rounds, "videos": args.videos or "generated", "pipelines": {},
                              "environment": timing.environment(), "load_average_before": timing.load_average()}
    with tempfile.TemporaryDirectory() as tmp:
        root = _videos(args, Path(tmp))
        pipelines = _pipelines(args, root, Path(tmp))
        blocks: dict[str, list[float]] = {name: [] for name in pipelines}
        for _ in progress(range(args.rounds), desc="rounds", unit="round"):
            for name, make in pipelines.items():
                blocks[name].append(_pairs_per_second(make, args.batches, args.batch_size))
    reference = statistics.median(blocks["folder reader"])
    for name, rates in blocks.items():
        median = statistics.median(rates)
        result["pipelines"][name] = {"pairs_per_s": median, "blocks_pairs_per_s": rates,
                                     "vs_folder_reader": median / reference}
    result["load_average_after"] = timing.load_average()
    return result


def format(result: dict[str, Any]) -> str:
    head = (f"FOMM training pairs at {result['frame_size']}x{result['frame_size']}, batches of {result['batch_size']} "
            f"({result['videos']} videos; median of {result['rounds']} blocks of {result['batches']} batches; load "
            f"average {result['load_average_before']} before, {result['load_average_after']} after):")
    lines = [head]
    for name, r in result["pipelines"].items():
        lines.append(f"  {name:26s} {r['pairs_per_s']:8.1f} pairs/s  ({r['vs_folder_reader']:.2f}x the folder reader)")
    return "\n".join(lines)
