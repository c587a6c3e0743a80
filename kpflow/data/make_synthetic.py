"""``python -m kpflow.data.make_synthetic --out DIR``: write a synthetic keypoint folder."""

from __future__ import annotations

import sys

from kpflow.data.synthetic import write_synthetic_folder

PROG = "python -m kpflow.data.make_synthetic"


def main(argv=None) -> int:
    """``python -m kpflow.data.make_synthetic --out DIR [--seed S --num_clips N]``: write a synthetic keypoint folder.

    Returns the exit status; a bad argument is one line ``<prog>: error: ...`` and status 2."""
    from kpflow.cli import OneLineArgumentParser, UsageError, one_line, run_cli
    from kpflow.io import check_output_path

    p = OneLineArgumentParser(prog=PROG, description=main.__doc__)
    p.add_argument("--out", required=True, help="folder to write <clip>.npz files into")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--num_clips", type=int, default=24, help="clips to write (>= 1)")
    p.add_argument("--num_speakers", type=int, default=4, help="speakers the clips are spread over (>= 1)")
    p.add_argument("--min_frames", type=int, default=80, help="frames of the shortest clip (>= 2)")
    p.add_argument("--max_frames", type=int, default=240, help="frames of the longest clip (>= --min_frames)")
    try:
        a = p.parse_args(argv)
    except SystemExit as e:  # the parser printed its one line (or the help)
        return e.code if isinstance(e.code, int) else 2

    def write() -> None:
        for flag, value, low in (("--num_clips", a.num_clips, 1), ("--num_speakers", a.num_speakers, 1),
                                 ("--min_frames", a.min_frames, 2)):
            if value < low:
                raise UsageError(f"{flag} must be >= {low}, got {value}")
        if a.max_frames < a.min_frames:
            raise UsageError(f"--max_frames ({a.max_frames}) must be >= --min_frames ({a.min_frames})")
        check_output_path(a.out, "--out", folder=True)
        try:
            paths = write_synthetic_folder(
                a.out, num_clips=a.num_clips, num_speakers=a.num_speakers, min_frames=a.min_frames,
                max_frames=a.max_frames, seed=a.seed,
            )
        except (ValueError, OSError) as e:
            raise UsageError(f"--out {a.out!r}: {one_line(e)}") from None
        print(f"wrote {len(paths)} synthetic clips to {a.out}")

    return run_cli(write, prog=PROG)


if __name__ == "__main__":
    sys.exit(main())
