"""A tiny deterministic video dataset in FOMM's layout, for tests and the demo.

Two scenes (``scene``):

- ``"textured"`` (the default, what the tests use): three coloured, striped ellipses that glide
  along smooth Lissajous paths and rotate, over a background of fine gratings and noise.
- ``"bold"`` (``make demo``): two larger, coarsely striped ellipses over a smooth background (a
  colour gradient and one gentle wave). Copying a clip's first frame errs about as much as on
  VoxCeleb talking heads (mean absolute error about 0.05 over 60 frames, 0.047 over a VoxCeleb
  clip's first 16), but a tiny FOMM learns this motion within minutes on a CPU: its generator need
  not first learn to redraw fine background texture, which the textured scene's needs.

Clips alternate between two identities (``id0000``, ``id0001``); an identity fixes the background
and the ellipses' colours and shapes, a clip its motion. Names follow VoxCeleb's
``<identity>#<video>#<start>#<end>``, e.g. ``id0000#synthetic#000000#000024.mp4``.

``python -m kpflow.data.synthetic_video --out DIR [--size 64 --num_train 6 --scene bold ...]``
writes one.
"""

from __future__ import annotations

import os
from pathlib import Path

import imageio.v3 as iio
import numpy as np

FORMATS = ("mp4", "png", "gif", "folder")
SCENES = ("textured", "bold")
NUM_IDENTITIES = 2
NUM_BLOBS = 3  # of the textured scene
NUM_BOLD_BLOBS = 2
# How the ellipses of each scene move (render_clip): the range of their Lissajous amplitudes
# (fractions of the frame), periods (frames) and angular speeds (radians per frame), the period of
# their stripes (fractions of the major semi-axis) and the amplitude of their breathing.
MOTION = {
    "textured": {"amplitude": (0.08, 0.2), "period": (16, 40), "spin": 0.15, "stripes": 0.5,
                 "pulse": 0.1},
    "bold": {"amplitude": (0.05, 0.12), "period": (20, 40), "spin": 0.08, "stripes": 1.0,
             "pulse": 0.0},
}


def identity_style(seed: int, identity: int, size: int, scene: str = "textured") -> dict:
    """What an identity looks like: background ``[S, S, 3]`` float32 in [0, 1], blob colours
    ``[N, 3]`` and semi-axes ``[N, 2]`` (fractions of the frame), and the scene's name."""
    if scene not in SCENES:
        raise ValueError(f"scene must be one of {SCENES}, got {scene!r}")
    if scene == "bold":
        return _bold_style(seed, identity, size)
    rng = np.random.default_rng([seed, 1_000_000 + identity])
    ys, xs = np.meshgrid(np.linspace(0, 1, size), np.linspace(0, 1, size), indexing="ij")
    background = np.broadcast_to(rng.uniform(0.25, 0.6, 3), (size, size, 3)).copy()
    # A few gratings of random orientation: texture that makes any background motion visible.
    for _ in range(3):
        angle, freq = rng.uniform(0, np.pi), rng.uniform(2, 6)
        phase = rng.uniform(0, 2 * np.pi)
        wave = np.sin(2 * np.pi * freq * (np.cos(angle) * xs + np.sin(angle) * ys) + phase)
        background += 0.08 * wave[..., None] * rng.uniform(-1, 1, 3)
    # Smooth noise: a coarse random grid, upsampled by repetition and a box blur.
    coarse = rng.uniform(-0.06, 0.06, (8, 8, 3))
    noise = np.kron(coarse, np.ones((size // 8 + 1, size // 8 + 1, 1)))[:size, :size]
    kernel = max(1, size // 16)
    for axis in (0, 1):
        shifts = range(-kernel, kernel + 1)
        noise = sum(np.roll(noise, k, axis=axis) for k in shifts) / len(shifts)
    background = np.clip(background + noise, 0, 1)
    # Saturated colours far from the grey-ish background.
    colours = rng.uniform(0.0, 1.0, (NUM_BLOBS, 3))
    colours[np.arange(NUM_BLOBS), rng.integers(0, 3, NUM_BLOBS)] = 1.0
    axes = np.stack([rng.uniform(0.12, 0.2, NUM_BLOBS), rng.uniform(0.06, 0.1, NUM_BLOBS)], -1)
    return {"background": background.astype(np.float32), "colours": colours, "axes": axes,
            "scene": "textured"}


def _bold_style(seed: int, identity: int, size: int) -> dict:
    """The bold scene's identity: a smooth background, two large saturated ellipses."""
    rng = np.random.default_rng([seed, 2_000_000 + identity])
    ys, xs = np.meshgrid(np.linspace(0, 1, size), np.linspace(0, 1, size), indexing="ij")
    low, high = rng.uniform(0.2, 0.5, 3), rng.uniform(0.2, 0.5, 3)
    angle = rng.uniform(0, 2 * np.pi)
    ramp = np.cos(angle) * (xs - 0.5) + np.sin(angle) * (ys - 0.5) + 0.5
    background = low + (high - low) * ramp[..., None]
    freq, phase = rng.uniform(0.8, 1.5), rng.uniform(0, 2 * np.pi)
    wave = np.sin(2 * np.pi * freq * (np.cos(angle + 1) * xs + np.sin(angle + 1) * ys) + phase)
    background = np.clip(background + 0.06 * wave[..., None] * rng.uniform(-1, 1, 3), 0, 1)
    n = NUM_BOLD_BLOBS
    colours = rng.uniform(0.0, 0.4, (n, 3))
    colours[np.arange(n), rng.permutation(3)[:n]] = 1.0  # each a different dominant channel
    axes = np.stack([rng.uniform(0.2, 0.26, n), rng.uniform(0.11, 0.14, n)], -1)
    return {"background": background.astype(np.float32), "colours": colours, "axes": axes, "scene": "bold"}


def render_clip(
    style: dict[str, np.ndarray], rng: np.random.Generator, num_frames: int, size: int
) -> np.ndarray:
    """One clip of ``style`` (:func:`identity_style`) with motion drawn from ``rng`` ->
    ``frames [T, S, S, 3]`` uint8."""
    m = MOTION[style.get("scene", "textured")]
    blobs = len(style["colours"])
    centres = (np.arange(size) + 0.5) / size  # pixel centres in [0, 1]
    ys, xs = np.meshgrid(centres, centres, indexing="ij")
    t = np.arange(num_frames, dtype=np.float64)[:, None]  # [T, 1], blobs on the last axis
    centre0 = rng.uniform(0.3, 0.7, (2, blobs))
    amplitude = rng.uniform(*m["amplitude"], (2, blobs))
    period = rng.uniform(*m["period"], (2, blobs))  # frames
    phase = rng.uniform(0, 2 * np.pi, (2, blobs))
    cx = centre0[0] + amplitude[0] * np.sin(2 * np.pi * t / period[0] + phase[0])  # [T, N]
    cy = centre0[1] + amplitude[1] * np.sin(2 * np.pi * t / period[1] + phase[1])
    angle = rng.uniform(0, np.pi, blobs) + rng.uniform(-m["spin"], m["spin"], blobs) * t
    pulse = 1 + m["pulse"] * np.sin(2 * np.pi * t / rng.uniform(12, 30, blobs))  # gentle breathing

    frames = np.empty((num_frames, size, size, 3), np.float32)
    for i in range(num_frames):
        image = style["background"].astype(np.float64)
        for n in range(blobs):
            c, s = np.cos(angle[i, n]), np.sin(angle[i, n])
            u = c * (xs - cx[i, n]) + s * (ys - cy[i, n])  # along the major axis
            v = -s * (xs - cx[i, n]) + c * (ys - cy[i, n])
            a, b = style["axes"][n] * pulse[i, n]
            radius = np.sqrt((u / a) ** 2 + (v / b) ** 2)
            # Soft edge about one pixel wide: anti-aliased, so codecs and bilinear warps behave.
            alpha = np.clip(0.5 + (1 - radius) * b * size, 0, 1)[..., None]
            # Stripes across the major axis make the rotation visible, not just the outline.
            shade = 0.75 + 0.25 * np.cos(2 * np.pi * u / (m["stripes"] * a))[..., None]
            image = (1 - alpha) * image + alpha * style["colours"][n] * shade
        frames[i] = image
    return np.round(np.clip(frames, 0, 1) * 255).astype(np.uint8)


def _write(path: Path, frames: np.ndarray, fmt: str) -> Path:
    """Write ``frames [T, S, S, 3]`` uint8 as ``fmt``; returns the path written."""
    if fmt == "mp4":
        path = path.with_name(path.name + ".mp4")
        # macro_block_size=1: imageio would otherwise resize to a multiple of 16 (sizes are even).
        iio.imwrite(
            path, frames, fps=10, codec="libx264", macro_block_size=1, ffmpeg_log_level="error"
        )
        # ffmpeg reports some failures only on stderr and leaves an empty file: check.
        if not path.is_file() or path.stat().st_size == 0:
            raise OSError(f"{path}: ffmpeg wrote nothing (see its messages above)")
    elif fmt == "gif":
        path = path.with_name(path.name + ".gif")
        iio.imwrite(path, frames, duration=100, loop=0)
    elif fmt == "png":  # a frame strip: [S, T * S, 3]
        path = path.with_name(path.name + ".png")
        iio.imwrite(path, np.concatenate(list(frames), axis=1))
    else:  # a folder of frames
        path.mkdir(parents=True, exist_ok=True)
        for t, frame in enumerate(frames):
            iio.imwrite(path / f"{t:06d}.png", frame)
    return path


def make_synthetic_videos(
    root: str | os.PathLike,
    num_train: int = 6,
    num_test: int = 2,
    num_frames: int = 24,
    size: int = 64,
    seed: int = 0,
    fmt: str = "mp4",
    scene: str = "textured",
) -> dict[str, list[Path]]:
    """Write ``root/train/`` and ``root/test/`` with synthetic clips (deterministic given the seed).

    Args:
      root: the dataset folder (created if needed; same-named clips are overwritten).
      num_train, num_test: clips per split; clip ``k`` (counting train then test) is of identity
        ``k % 2`` and spans frames ``[k * num_frames, (k + 1) * num_frames)`` in its name.
      num_frames: frames per clip (>= 2).
      size: frame height and width (>= 8; even for mp4, as libx264's yuv420p needs).
      seed: the seed of every draw.
      fmt: ``"mp4"``, ``"png"`` (frame strips), ``"gif"`` or ``"folder"`` (folders of PNG frames).
      scene: ``"textured"`` or ``"bold"`` (see the module's docstring).

    Returns:
      ``{"train": [paths], "test": [paths]}``.
    """
    if fmt not in FORMATS:
        raise ValueError(f"fmt must be one of {FORMATS}, got {fmt!r}")
    if scene not in SCENES:
        raise ValueError(f"scene must be one of {SCENES}, got {scene!r}")
    if num_train < 0 or num_test < 0 or num_train + num_test == 0:
        raise ValueError(f"need num_train, num_test >= 0, not both 0; got {num_train}, {num_test}")
    if num_frames < 2:
        raise ValueError(f"num_frames must be >= 2, got {num_frames}")
    if size < 8 or (fmt == "mp4" and size % 2):
        raise ValueError(f"size must be >= 8 (and even for mp4), got {size}")
    root = Path(root)
    styles = [identity_style(seed, i, size, scene) for i in range(NUM_IDENTITIES)]
    written: dict[str, list[Path]] = {"train": [], "test": []}
    splits = ["train"] * num_train + ["test"] * num_test
    for k, split in enumerate(splits):
        identity = k % NUM_IDENTITIES
        frames = render_clip(styles[identity], np.random.default_rng([seed, k]), num_frames, size)
        folder = root / split
        folder.mkdir(parents=True, exist_ok=True)
        name = f"id{identity:04d}#synthetic#{k * num_frames:06d}#{(k + 1) * num_frames:06d}"
        written[split].append(_write(folder / name, frames, fmt))
    return written


def main(argv: list[str] | None = None) -> None:
    """``python -m kpflow.data.synthetic_video --out DIR``: write a synthetic video dataset in
    FOMM's layout (DIR/train, DIR/test). A bad argument is one line on stderr and status 2."""
    from kpflow.cli import OneLineArgumentParser, UsageError, one_line
    from kpflow.io import check_output_path

    p = OneLineArgumentParser(prog="python -m kpflow.data.synthetic_video", description=main.__doc__)
    p.add_argument("--out", required=True, help="dataset folder; train/ and test/ go in it")
    p.add_argument("--num_train", type=int, default=6)
    p.add_argument("--num_test", type=int, default=2)
    p.add_argument("--num_frames", type=int, default=24)
    p.add_argument("--size", type=int, default=64, help="frame height and width in pixels")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--fmt", choices=FORMATS, default="mp4")
    p.add_argument("--scene", choices=SCENES, default="textured",
                   help="textured: three small striped ellipses over fine texture; bold: two large ones "
                        "over a smooth background (make demo)")
    a = p.parse_args(argv)
    try:
        check_output_path(a.out, "--out", folder=True)
        written = make_synthetic_videos(
            a.out, num_train=a.num_train, num_test=a.num_test, num_frames=a.num_frames,
            size=a.size, seed=a.seed, fmt=a.fmt, scene=a.scene,
        )
    except (UsageError, ValueError, OSError) as e:
        p.error(one_line(e))
    for split, paths in written.items():
        if paths:
            print(f"wrote {len(paths)} {split} clips ({a.num_frames} frames, {a.size}x{a.size}, "
                  f"{a.fmt}{'' if a.scene == 'textured' else ', ' + a.scene}) to {Path(a.out) / split}")


if __name__ == "__main__":
    main()
