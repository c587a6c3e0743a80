"""A deterministic generator of multi-modal keypoint series: the embedded default dataset.

Each clip is a "head" of K keypoints arranged on an ellipse around a centre. The head moves in
regimes: every few frames it picks one of a few motion modes (still, drift left/right, nod up/down,
turn), so the future of a window is genuinely multi-modal, with volatility that changes between
regimes. Jacobians follow the head's rotation and scale, plus detector-like jitter on every number.
Everything is drawn from ``numpy.random.default_rng(seed)``, so the same arguments give the same data.
"""

from __future__ import annotations

import numpy as np

from kpflow.keypoints import keypoints_to_vector

# (dx, dy, dtheta, dscale) per frame, before the per-clip speed factor.
_MODES = np.array(
    [
        [0.0, 0.0, 0.0, 0.0],  # still
        [0.012, 0.0, 0.0, 0.0],  # drift right
        [-0.012, 0.0, 0.0, 0.0],  # drift left
        [0.0, 0.010, 0.0, 0.002],  # nod down (and closer)
        [0.0, -0.010, 0.0, -0.002],  # nod up
        [0.0, 0.0, 0.015, 0.0],  # turn
        [0.0, 0.0, -0.015, 0.0],
    ],
    np.float64,
)


def synthetic_clip(rng: np.random.Generator, num_frames: int, num_keypoints: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """One clip: ``value [T, K, 2]``, ``jacobian [T, K, 2, 2]`` float32."""
    angles = np.linspace(0, 2 * np.pi, num_keypoints, endpoint=False) + rng.normal(0, 0.2, num_keypoints)
    radius = rng.uniform(0.15, 0.35, num_keypoints)
    template = np.stack([radius * np.cos(angles), 1.2 * radius * np.sin(angles)], -1)  # [K, 2]
    speed = rng.uniform(0.5, 1.5)
    jitter = rng.uniform(0.002, 0.006)

    centre = rng.uniform(-0.2, 0.2, 2)
    theta, log_scale = 0.0, 0.0
    velocity = np.zeros(4)
    mode = 0
    values, jacobians = [], []
    for t in range(num_frames):
        if t == 0 or rng.random() < 0.12:  # regime switch
            mode = int(rng.integers(len(_MODES)))
        target = _MODES[mode] * speed
        velocity = 0.7 * velocity + 0.3 * target + rng.normal(0, 0.002, 4) * speed
        centre = np.clip(centre + velocity[:2], -0.6, 0.6)
        # Mean reversion keeps pose bounded, as a talking head stays in frame.
        theta = 0.97 * theta + velocity[2]
        log_scale = 0.97 * log_scale + velocity[3]
        c, s = np.cos(theta), np.sin(theta)
        affine = np.exp(log_scale) * np.array([[c, -s], [s, c]])
        kp = centre + template @ affine.T + rng.normal(0, jitter, (num_keypoints, 2))
        jac = np.broadcast_to(affine, (num_keypoints, 2, 2)) + rng.normal(0, 4 * jitter, (num_keypoints, 2, 2))
        values.append(np.clip(kp, -1, 1))
        jacobians.append(jac)
    return np.asarray(values, np.float32), np.asarray(jacobians, np.float32)


def synthetic_clips(
    num_clips: int = 24,
    num_speakers: int = 4,
    min_frames: int = 80,
    max_frames: int = 240,
    num_keypoints: int = 10,
    seed: int = 0,
) -> dict[str, np.ndarray]:
    """``{name: [T, 6K] float32}`` with VoxCeleb-style names ``synth<speaker>#clip<i>`` (speaker splits work)."""
    if num_clips < 1 or num_speakers < 1 or min_frames < 2 or max_frames < min_frames:
        raise ValueError("synthetic_clips: need num_clips, num_speakers >= 1 and 2 <= min_frames <= max_frames")
    rng = np.random.default_rng(seed)
    clips = {}
    for i in range(num_clips):
        t = int(rng.integers(min_frames, max_frames + 1))
        value, jacobian = synthetic_clip(rng, t, num_keypoints)
        clips[f"synth{i % num_speakers:02d}#clip{i:03d}"] = keypoints_to_vector(value, jacobian)
    return clips


def write_synthetic_folder(path: str, **kwargs) -> list[str]:
    """Write :func:`synthetic_clips` as ``.npz`` files in the shared format; returns the file paths."""
    import os

    from kpflow.data.clips import save_clip
    from kpflow.keypoints import vector_to_keypoints

    os.makedirs(path, exist_ok=True)
    paths = []
    for name, series in synthetic_clips(**kwargs).items():
        value, jacobian = vector_to_keypoints(series)
        p = os.path.join(path, name + ".npz")
        save_clip(p, value, jacobian)
        paths.append(p)
    return paths

