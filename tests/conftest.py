"""Shared fixtures. ``shared_dir``: the real VoxCeleb keypoints, or a skip saying why they are absent."""

import os
import pathlib

import pytest

REPO = pathlib.Path(__file__).resolve().parent.parent
VOX_KEYPOINTS = pathlib.Path("data") / "vox_keypoints"


def shared_root() -> pathlib.Path:
    """``$KPFLOW_SHARED`` if set, else ``../shared`` beside the repository."""
    env = os.environ.get("KPFLOW_SHARED")
    return pathlib.Path(env).expanduser() if env else REPO.parent / "shared"


@pytest.fixture(scope="session")
def shared_dir() -> pathlib.Path:
    """Path of ``shared/data/vox_keypoints`` (30 real clips); skips the test when it is not there."""
    path = shared_root() / VOX_KEYPOINTS
    if not path.is_dir() or not any(path.glob("*.npz")):
        where = f"KPFLOW_SHARED={os.environ['KPFLOW_SHARED']}" if os.environ.get("KPFLOW_SHARED") else "beside the repo"
        pytest.skip(f"../shared/data/vox_keypoints not found: looked for {path} ({where}); set KPFLOW_SHARED to the shared/ folder")
    return path
