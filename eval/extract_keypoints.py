"""Extract FOMM keypoints from videos into the shared per-clip ``.npz`` format.

``python -m eval.extract_keypoints --fomm DIR --videos PATH --out DIR [--batch_size 32]
[--frame_size H] [--overwrite] [--format npz|tfds --data_dir OUT]``

- ``PATH`` is a folder of videos (anything ``kpflow.data.videos.list_videos`` accepts), a folder in
  FOMM's layout (``train/`` and/or ``test/``; both are processed and mirrored under ``--out``), or
  one video file.
- Each video is read resized to the model's frame size (``config.data.frame_shape``, or
  ``--frame_size H`` for H x H frames), its frames go through ``FOMM.detect`` in batches of
  ``--batch_size`` (the last one padded to a full batch, so the detector compiles once), and
  ``<out>/<clip name>.npz`` is written with ``kpflow.data.clips.save_clip``: float32
  ``value [T, K, 2]`` and ``jacobian [T, K, 2, 2]``, the format of ``shared/data/vox_keypoints``.
- Clips whose ``.npz`` exists are skipped unless ``--overwrite``.
- ``--format tfds --data_dir OUT`` then prepares the TFDS dataset ``kpflow_keypoints/default``
  (``kpflow.data.prepare.prepare_keypoints``, rebuilt each time) in ``OUT`` from the clips a
  forecaster trains on: ``--out`` itself, or ``--out/train`` for a FOMM layout (the test clips stay
  ``.npz`` files for ``eval.forecast``). The default ``--format npz`` writes the ``.npz`` files only.
- An unreadable video is reported on stderr (file and reason), skipped, and the run goes on; the
  run then ends with one ``error:`` line counting them and exit status 1, so a pipeline notices
  (``kpflow.io.read_videos``, the policy of every command that reads videos). When no video can be
  read, that is one error line at once, before the FOMM is loaded. Bad arguments exit with status 2.

Library use: ``kpflow.io.extract_keypoints`` (``frames [T, H, W, 3]`` -> ``value [T, K, 2]``,
``jacobian [T, K, 2, 2]``) and :func:`main` (``argv`` -> exit status).
"""

from __future__ import annotations

import argparse
import itertools
import os
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from kpflow.cli import EXIT_FAILED, EXIT_USAGE, OneLineArgumentParser, UsageError, one_line, run_cli
from kpflow.io import check_output_path, extract_keypoints, read_videos, video_run_status
from kpflow.progress import progress
from kpflow.runs import load_fomm, load_fomm_config

PROG = "python -m eval.extract_keypoints"
SPLITS = ("train", "test")
FORMATS = ("npz", "tfds")
# The exit status when some videos could not be read (the others were extracted).
EXIT_FAILED_VIDEOS = EXIT_FAILED
MAX_LISTED_FAILURES = 10


# -- the command line ---------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    p = OneLineArgumentParser(
        prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--fomm", required=True, help="FOMM directory (kpflow.fomm.load)")
    p.add_argument(
        "--videos",
        required=True,
        help="a folder of videos (with train/ and test/ sub-folders or flat) or one video",
    )
    p.add_argument("--out", required=True, help="folder for the per-clip .npz keypoint files")
    p.add_argument(
        "--batch_size", type=int, default=32, help="frames per detector call (default 32)"
    )
    p.add_argument(
        "--frame_size",
        type=int,
        default=None,
        metavar="H",
        help="resize frames to H x H (default: the FOMM config's data.frame_shape)",
    )
    p.add_argument("--overwrite", action="store_true", help="redo clips whose .npz already exists")
    p.add_argument("--format", choices=FORMATS, default="npz",
                   help="npz: the .npz files only (default); tfds: also a kpflow_keypoints dataset in --data_dir")
    p.add_argument("--data_dir", default=None, help="with --format tfds: the TFDS data dir to prepare it in")
    return p


def find_jobs(videos: str | os.PathLike, out: str | os.PathLike) -> list[tuple[Path, Path]]:
    """``[(video, output .npz)]`` for ``--videos`` and ``--out`` (see the module docstring).

    Raises UsageError when there is nothing to process or two videos share a clip name.
    """
    from kpflow.data.videos import VIDEO_EXTENSIONS, NoVideosError, list_videos, video_name

    videos, out = Path(videos), Path(out)
    if not videos.exists():
        raise UsageError(f"--videos {str(videos)!r} does not exist")
    if videos.is_file():
        if videos.suffix.lower() not in VIDEO_EXTENSIONS:
            raise UsageError(
                f"--videos {str(videos)!r} is not a video (expected one of "
                f"{', '.join(VIDEO_EXTENSIONS)}, or a folder of videos)"
            )
        return [(videos, out / f"{video_name(videos)}.npz")]
    splits = [s for s in SPLITS if (videos / s).is_dir()]
    folders = [(videos / s, out / s) for s in splits] or [(videos, out)]
    jobs: list[tuple[Path, Path]] = []
    for folder, out_folder in folders:
        try:
            found = list_videos(folder)
        except NoVideosError as e:
            if len(splits) > 1:  # an empty split beside a full one is fine
                continue
            raise UsageError(str(e)) from None
        by_name: dict[str, Path] = {}
        for path in found:
            name = video_name(path)
            if name in by_name:
                raise UsageError(
                    f"{by_name[name].name} and {path.name} in {folder} would both "
                    f"write {name}.npz; rename or remove one"
                )
            by_name[name] = path
            jobs.append((path, out_folder / f"{name}.npz"))
    if not jobs:
        raise UsageError(f"no videos in {', '.join(str(f) for f, _ in folders)}")
    return jobs


def _write_clip(path: Path, value: np.ndarray, jacobian: np.ndarray) -> None:
    """``save_clip`` through a temporary file, so an interrupted run leaves no truncated ``.npz``
    that a rerun would skip."""
    from kpflow.data.clips import save_clip

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.partial")  # not *.npz: folder readers never see it
    with open(tmp, "wb") as f:
        save_clip(f, value, jacobian)  # np.savez takes a file object as well as a path
    os.replace(tmp, path)


def run(args: argparse.Namespace) -> int:
    """Extract keypoints as ``args`` says; returns the exit status."""
    from kpflow.data.videos import VideoSkips
    from kpflow.fomm.model import frame_shape_of

    if args.batch_size < 1:
        raise UsageError(f"--batch_size must be >= 1, got {args.batch_size}")
    if args.frame_size is not None and args.frame_size < 1:
        raise UsageError(f"--frame_size must be >= 1, got {args.frame_size}")
    if args.format == "tfds" and not args.data_dir:
        raise UsageError("--format tfds needs --data_dir, the TFDS data dir to prepare the dataset in")
    if args.format != "tfds" and args.data_dir:
        raise UsageError("--data_dir applies only with --format tfds")
    check_output_path(args.out, "--out", folder=True)
    if args.data_dir:
        check_output_path(args.data_dir, "--data_dir", folder=True)
    config = load_fomm_config(args.fomm)  # before listing videos: the likelier mistake, and cheap
    jobs = find_jobs(args.videos, args.out)
    todo = [(v, o) for v, o in jobs if args.overwrite or not o.exists()]
    existing = len(jobs) - len(todo)
    if existing:
        print(
            f"skipping {existing} of {len(jobs)} clips whose .npz already exists under "
            f"{args.out} (pass --overwrite to redo them)",
            file=sys.stderr,
        )
    skips = VideoSkips()
    written = 0
    if todo:
        frame_shape = (args.frame_size, args.frame_size) if args.frame_size else frame_shape_of(config)
        videos = read_videos([v for v, _ in todo], frame_shape, skips, prefetch=True)
        first = next(videos)  # none readable: one line now, before the weights are loaded
        fomm = load_fomm(args.fomm)
        written = extract_all(fomm, itertools.chain([first], videos), dict(todo), args.batch_size, skips)
    summary = f"{written} clips written to {args.out}"
    if existing:
        summary += f", {existing} already there (kept)"
    summary += f", {len(skips)} skipped (unreadable)"
    if len(skips):
        names = [str(p) for p, _ in skips.skipped]
        more = len(names) - MAX_LISTED_FAILURES
        summary += ": " + ", ".join(names[:MAX_LISTED_FAILURES]) + (f" ... ({more} more)" if more > 0 else "")
    print(summary)
    if args.format == "tfds":
        print(prepare_extracted(args.out, args.data_dir).summary())
    return video_run_status(skips, PROG)


def prepare_extracted(out: str | os.PathLike, data_dir: str | os.PathLike):
    """Prepare ``kpflow_keypoints/default`` in ``data_dir`` (rebuilt) from the clips under ``out``
    that a forecaster trains on: ``out/train`` when ``out`` mirrors a FOMM layout, else ``out``.
    Returns the :class:`kpflow.data.prepare.Prepared`; UsageError (one line) when there are no
    clips or one is malformed."""
    from kpflow.data.prepare import prepare_keypoints

    out = Path(out)
    folder = out / "train" if (out / "train").is_dir() or (out / "test").is_dir() else out
    try:
        return prepare_keypoints(folder, data_dir, overwrite=True)
    except (ValueError, OSError, ImportError) as e:
        raise UsageError(f"--format tfds: {one_line(e)}") from None


def extract_all(fomm, videos: Iterator[tuple[Path, np.ndarray]], out_of: dict[Path, Path], batch_size: int,
                skips) -> int:
    """Detect and write the keypoints of every ``(video, frames)`` of ``videos`` (from
    :func:`kpflow.io.read_videos`, which reports and skips unreadable ones into ``skips``) to
    ``out_of[video]``; returns the number of clips written."""
    written, num_frames, busy = 0, 0, 0.0
    with progress(total=len(out_of), desc="extracting", unit="video") as bar:
        for video, frames in videos:
            start = time.perf_counter()
            value, jacobian = extract_keypoints(fomm, frames, batch_size)
            busy += time.perf_counter() - start
            _write_clip(out_of[video], value, jacobian)
            written += 1
            num_frames += len(frames)
            bar.set_postfix(frames_per_s=f"{num_frames / max(busy, 1e-9):.1f}", refresh=False)
            bar.update(skips.num_tried - bar.n)
        bar.update(skips.num_tried - bar.n)
    return written


def main(argv: Sequence[str] | None = None) -> int:
    """The command line; returns the exit status (0 ok, 1 some videos unreadable, 2 bad
    arguments)."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as e:  # argparse already printed usage and the error (or --help)
        return e.code if isinstance(e.code, int) else EXIT_USAGE
    return run_cli(lambda: run(args), prog=PROG)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
