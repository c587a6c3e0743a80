"""The real VoxCeleb keypoints in ../shared/data/vox_keypoints (skipped when absent)."""

import numpy as np
import pytest

import kpflow.data as kd
from configs.common import VOX_HOLDOUT_SPEAKERS

pytestmark = pytest.mark.shared_data

SPEAKERS = ["id10283", "id10284", "id10286", "id10287", "id10289"]


@pytest.fixture(scope="module")
def vox(shared_dir):
    return kd.load_folder(str(shared_dir))


def test_all_clips_load_with_the_documented_shapes(vox, shared_dir):
    assert len(vox) == 30
    assert vox.num_frames == 6927
    assert vox.dim == 60
    assert vox.speakers() == SPEAKERS
    for name, series in vox.clips.items():
        assert series.dtype == np.float32 and series.ndim == 2, name
        assert np.all(np.isfinite(series)), name
        # Locations are FOMM's normalised coordinates: x and y of every keypoint within [-1, 1].
        xy = series.reshape(len(series), 10, 6)[..., :2]
        assert np.all(np.abs(xy) <= 1.0 + 1e-6), name
    with np.load(shared_dir / (vox.names[0] + ".npz")) as f:
        assert f["value"].shape[1:] == (10, 2) and f["jacobian"].shape[1:] == (10, 2, 2)


def test_every_clip_holds_a_12_12_window(vox):
    kd.check_long_enough(vox.clips, 24, "vox")
    windows = [kd.evaluation_windows(s, 12, 12) for s in vox.series()]
    assert sum(len(w) for w in windows) > 200


def test_speaker_split_of_the_five_speakers(vox):
    holdout = sorted(VOX_HOLDOUT_SPEAKERS)  # the split the vox configs use
    train, val = kd.split_by_speaker(vox, holdout)
    assert val.speakers() == holdout
    assert train.speakers() == sorted(set(SPEAKERS) - set(holdout))
    assert len(train) + len(val) == 30
    assert not set(train.names) & set(val.names)
    for speaker in SPEAKERS:
        sides = {side for side, part in (("train", train), ("val", val)) for n in part.names if kd.speaker_of(n) == speaker}
        assert len(sides) == 1, speaker
