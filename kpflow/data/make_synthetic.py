"""``python -m kpflow.data.make_synthetic --out DIR``: write a synthetic keypoint folder."""

from __future__ import annotations

from kpflow.data.synthetic import write_synthetic_folder


def main(argv=None) -> None:
    """``python -m kpflow.data.make_synthetic --out DIR [--seed S --num_clips N]``: write a synthetic keypoint folder."""
    import argparse

    p = argparse.ArgumentParser(description=main.__doc__)
    p.add_argument("--out", required=True, help="folder to write <clip>.npz files into")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--num_clips", type=int, default=24)
    p.add_argument("--num_speakers", type=int, default=4)
    p.add_argument("--min_frames", type=int, default=80)
    p.add_argument("--max_frames", type=int, default=240)
    a = p.parse_args(argv)
    paths = write_synthetic_folder(
        a.out, num_clips=a.num_clips, num_speakers=a.num_speakers, min_frames=a.min_frames,
        max_frames=a.max_frames, seed=a.seed,
    )
    print(f"wrote {len(paths)} synthetic clips to {a.out}")


if __name__ == "__main__":
    main()
