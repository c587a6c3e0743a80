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


FOMM_FIXTURE_FILES = ("cpk.pth.tar", "state.npz", "reference.npz", "model_params.yaml")


@pytest.fixture(scope="session")
def fomm_fixture():
    """``fomm_fixture(name)`` -> ``shared/fixtures/fomm/<name>_tiny`` (reference outputs of the PyTorch
    FOMM), or a skip saying what is missing."""

    def get(name: str) -> pathlib.Path:
        path = shared_root() / "fixtures" / "fomm" / f"{name}_tiny"
        missing = [f for f in FOMM_FIXTURE_FILES if not (path / f).is_file()]
        if missing:
            pytest.skip(f"FOMM reference fixture {path} is absent or incomplete (missing {', '.join(missing)}); "
                        "set KPFLOW_SHARED to the shared/ folder")
        return path

    return get
