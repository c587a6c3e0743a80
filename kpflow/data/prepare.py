"""Prepare kpflow's data as a TFDS dataset: ``python -m kpflow.data.prepare --kind keypoints|videos
--src DIR --data_dir OUT``.

- ``--kind keypoints``: ``--src`` is a folder of per-clip ``.npz`` keypoint files (what
  ``python -m eval.extract_keypoints`` writes); the dataset ``kpflow_keypoints/<config>`` has one
  example per clip and speaker-disjoint ``train`` and ``validation`` splits: the clips listed in
  ``--split_file``, or every clip of ``--holdout_speakers a,b``, or a ``--val_fraction`` of the
  speakers drawn with ``--seed`` (default 0.2 and 0: the config ``default``).
- ``--kind videos``: ``--src`` is a FOMM-layout folder (``train/``, ``test/``) of videos; the dataset
  ``kpflow_videos/<frame_size>`` holds every video's frames resized to ``--frame_size`` (64, 128
  or 256; default 256), one ``--encoding`` image each (png, lossless, by default; jpeg is smaller
  and lossy, config ``<size>-jpeg``).

Datasets are written as ArrayRecord files under ``OUT/<dataset>/<config>/<version>/``; one that
exists is kept unless ``--overwrite``. At the end the command prints the dataset's folder, its
examples per split, its size and the config flags that train from it. A bad input (a missing or
empty folder, an unreadable or malformed file) is one line on stderr naming it, exit status 2.

Library use: :func:`prepare_keypoints`, :func:`prepare_videos` (-> :class:`Prepared`).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import sys
from collections.abc import Sequence

from kpflow.cli import OneLineArgumentParser, UsageError, one_line, run_cli

PROG = "python -m kpflow.data.prepare"
KINDS = ("keypoints", "videos")


@dataclasses.dataclass(frozen=True)
class Prepared:
    """A prepared dataset: ``name`` (``dataset/config``) in ``data_dir``, its folder ``path``, the
    examples per split, its size on disk and whether an existing one was kept (``reused``)."""

    name: str
    data_dir: str
    path: str
    num_examples: dict[str, int]
    num_bytes: int
    reused: bool = False

    def config_flags(self) -> str:
        """The trainers' config flags that read this dataset."""
        return (f"--config.data.kind=tfds --config.data.tfds_name={self.name} "
                f"--config.data.tfds_data_dir={self.data_dir}")

    def summary(self) -> str:
        """Three lines: where it is, what it holds, how to use it."""
        splits = ", ".join(f"{split} {n}" for split, n in self.num_examples.items())
        state = "kept (already prepared; --overwrite rebuilds it)" if self.reused else "prepared"
        return (f"{self.name} {state} in {self.path}\n"
                f"examples: {splits}; {_human_bytes(self.num_bytes)} on disk\n"
                f"use it: {self.config_flags()}")


def _human_bytes(n: float) -> str:
    """``1536`` -> ``"1.5 KiB"``."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def _folder_bytes(path: str) -> int:
    return sum(os.path.getsize(os.path.join(root, f)) for root, _, files in os.walk(path) for f in files)


@contextlib.contextmanager
def _quiet_tfds():
    """TFDS's progress bars and warnings off while preparing: the builders show their own progress
    through :func:`kpflow.progress.progress` (plain periodic lines when stderr is not a terminal), and
    TFDS warns of things that are meant here (a custom config, a dataset folder not there yet)."""
    import tensorflow_datasets as tfds
    from absl import logging

    verbosity = logging.get_verbosity()
    tfds.disable_progress_bar()
    logging.set_verbosity(logging.ERROR)
    try:
        yield
    finally:
        logging.set_verbosity(verbosity)
        tfds.enable_progress_bar()


def _prepare(builder_cls, config, src: str, data_dir: str, overwrite: bool) -> Prepared:
    """Build ``config`` of ``builder_cls`` from the manual dir ``src`` into ``data_dir``."""
    from kpflow.data.tfds import require_tensorflow, require_tfds

    tfds = require_tfds(PROG)
    data_dir = os.path.abspath(os.path.expanduser(os.fspath(data_dir)))
    # A config equal to one of the builder's own is named, not passed (TFDS refuses a custom
    # config that shares a name with one of its own).
    known = builder_cls.builder_configs.get(config.name)
    same = known is not None and dataclasses.asdict(known) == dataclasses.asdict(config)
    with _quiet_tfds():
        builder = builder_cls(config=config.name if same else config, data_dir=data_dir,
                              file_format="array_record")
        reused = builder.is_prepared() and not overwrite
        if not reused:
            require_tensorflow()  # TFDS writes through TensorFlow (reading does not need it)
            mode = (tfds.download.GenerateMode.REUSE_CACHE_IF_EXISTS if overwrite
                    else tfds.download.GenerateMode.REUSE_DATASET_IF_EXISTS)
            builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
                manual_dir=os.path.abspath(src), download_mode=mode))
    path = os.fspath(builder.data_dir)
    return Prepared(
        name=f"{builder.name}/{builder.builder_config.name}",
        data_dir=data_dir,
        path=path,
        num_examples={str(s): int(builder.info.splits[s].num_examples) for s in sorted(builder.info.splits)},
        num_bytes=_folder_bytes(path),
        reused=reused,
    )


def prepare_keypoints(src: str | os.PathLike, data_dir: str | os.PathLike, *, split_file: str | None = None,
                      holdout_speakers: Sequence[str] = (), val_fraction: float | None = None,
                      seed: int | None = None, overwrite: bool = False) -> Prepared:
    """Prepare ``kpflow_keypoints`` from the ``.npz`` folder ``src`` into ``data_dir``, split by
    ``split_file``, else ``holdout_speakers``, else ``val_fraction`` (default 0.2) and ``seed``
    (default 0); see :func:`kpflow.data.tfds.keypoints_config`.

    Raises:
      FileNotFoundError: one line, for a missing or empty ``src`` or a missing ``split_file``.
      ValueError: one line naming the file, for a malformed or implausible clip, or a split rule
        that does not fit the clips.
      ImportError: one line, when the tfds extra is not installed.
    """
    from kpflow.data.tfds import require_tfds

    src = os.fspath(src)
    require_tfds(PROG)
    from kpflow.data.tfds.keypoints import WHAT_TO_PUT, KpflowKeypoints, keypoints_config

    config = keypoints_config(split_file, holdout_speakers, val_fraction, seed)
    # Checked here too, before TensorFlow is imported: the likeliest mistakes fail at once.
    if not os.path.isdir(src):
        raise FileNotFoundError(f"{src} does not exist; {WHAT_TO_PUT}")
    if not any(f.endswith(".npz") for f in os.listdir(src)):
        raise FileNotFoundError(f"{src} has no .npz files; {WHAT_TO_PUT}")
    if split_file and not os.path.isfile(split_file):
        raise FileNotFoundError(f"split file {split_file!r} not found (one clip name per line)")
    return _prepare(KpflowKeypoints, config, src, data_dir, overwrite)


def prepare_videos(src: str | os.PathLike, data_dir: str | os.PathLike, *, frame_size: int = 256,
                   encoding: str = "png", overwrite: bool = False) -> Prepared:
    """Prepare ``kpflow_videos/<frame_size>`` from the FOMM-layout folder ``src`` into ``data_dir``.

    Raises:
      FileNotFoundError: one line, for a missing ``src`` or one with neither train/ nor test/.
      ValueError: one line naming the file, for a video that cannot be read (none is skipped: the
        dataset would silently differ from the folder), or a bad ``frame_size`` or ``encoding``.
      ImportError: one line, when the tfds extra is not installed.
    """
    from kpflow.data.tfds import require_tfds

    src = os.fspath(src)
    require_tfds(PROG)
    from kpflow.data.tfds.videos import SPLITS, WHAT_TO_PUT, KpflowVideos, videos_config

    config = videos_config(frame_size, encoding)
    if not os.path.isdir(src):
        raise FileNotFoundError(f"{src} does not exist; {WHAT_TO_PUT}")
    if not any(os.path.isdir(os.path.join(src, s)) for s in SPLITS):
        raise FileNotFoundError(f"{src} has no train/ or test/ folder; {WHAT_TO_PUT}")
    return _prepare(KpflowVideos, config, src, data_dir, overwrite)


# -- the command line ---------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    p = OneLineArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0],
                              formatter_class=argparse.RawDescriptionHelpFormatter,
                              epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("--kind", required=True, choices=KINDS, help="what --src holds")
    p.add_argument("--src", required=True, help="a folder of .npz keypoint files, or a FOMM-layout video folder")
    p.add_argument("--data_dir", required=True, help="the TFDS data dir to write the dataset into")
    p.add_argument("--overwrite", action="store_true", help="rebuild a dataset that is already prepared")
    videos = p.add_argument_group("--kind videos")
    videos.add_argument("--frame_size", type=int, default=None, metavar="S",
                        help="frames are resized to S x S (64, 128 or 256; default 256)")
    videos.add_argument("--encoding", default=None, choices=("png", "jpeg"),
                        help="how frames are stored (default png, lossless)")
    keypoints = p.add_argument_group("--kind keypoints: the validation split (default: a fifth of the speakers)")
    keypoints.add_argument("--split_file", default=None, help="hold out the clips listed in this file, one per line")
    keypoints.add_argument("--holdout_speakers", default=None, metavar="A,B",
                           help="hold out every clip of these speakers")
    keypoints.add_argument("--val_fraction", type=float, default=None,
                           help="hold out this fraction of the speakers (default 0.2)")
    keypoints.add_argument("--seed", type=int, default=None, help="draws the held-out speakers (default 0)")
    return p


def run(args: argparse.Namespace) -> None:
    """Prepare what ``args`` asks for and print the summary; UsageError for a bad argument or input."""
    from kpflow.io import check_output_path

    given = {flag: value is not None for flag, value in (
        ("--frame_size", args.frame_size), ("--encoding", args.encoding), ("--split_file", args.split_file),
        ("--holdout_speakers", args.holdout_speakers), ("--val_fraction", args.val_fraction),
        ("--seed", args.seed))}
    other = {"keypoints": ("--frame_size", "--encoding"),
             "videos": ("--split_file", "--holdout_speakers", "--val_fraction", "--seed")}[args.kind]
    wrong = [flag for flag in other if given[flag]]
    if wrong:
        raise UsageError(f"{', '.join(wrong)} do{'es' if len(wrong) == 1 else ''} not apply to --kind {args.kind}")
    if given["--split_file"] and given["--holdout_speakers"]:
        raise UsageError("give --split_file or --holdout_speakers, not both")
    if (given["--split_file"] or given["--holdout_speakers"]) and (given["--val_fraction"] or given["--seed"]):
        raise UsageError("--val_fraction and --seed apply only without --split_file and --holdout_speakers")
    if args.frame_size is not None and args.frame_size < 1:
        raise UsageError(f"--frame_size must be >= 1, got {args.frame_size}")
    if args.val_fraction is not None and not 0 < args.val_fraction < 1:
        raise UsageError(f"--val_fraction must be between 0 and 1, got {args.val_fraction:g}")
    if args.seed is not None and args.seed < 0:
        raise UsageError(f"--seed must be >= 0, got {args.seed}")
    if not os.path.exists(args.src):
        raise UsageError(f"--src {args.src!r} does not exist")
    if not os.path.isdir(args.src):
        raise UsageError(f"--src {args.src!r} is a file; give a folder")
    check_output_path(args.data_dir, "--data_dir", folder=True)
    try:
        if args.kind == "keypoints":
            speakers = [s.strip() for s in (args.holdout_speakers or "").split(",") if s.strip()]
            if given["--holdout_speakers"] and not speakers:
                raise UsageError("--holdout_speakers is empty; give speaker names, e.g. id10283,id10284")
            prepared = prepare_keypoints(args.src, args.data_dir, split_file=args.split_file,
                                         holdout_speakers=speakers, val_fraction=args.val_fraction,
                                         seed=args.seed, overwrite=args.overwrite)
        else:
            prepared = prepare_videos(args.src, args.data_dir, frame_size=args.frame_size or 256,
                                      encoding=args.encoding or "png", overwrite=args.overwrite)
    except (ValueError, OSError, ImportError) as e:  # bad input, said in one line naming the file
        raise UsageError(one_line(e)) from None
    print(prepared.summary())


def main(argv: Sequence[str] | None = None) -> int:
    """The command line; returns the exit status (0 ok, 2 a bad argument or input)."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as e:  # argparse printed its one line (or the help)
        return e.code if isinstance(e.code, int) else 2
    return run_cli(lambda: run(args), prog=PROG)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
