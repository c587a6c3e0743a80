"""conditional-VAE forecaster on VoxCeleb keypoints.

Horizons 6-6 (default), 6-24, 12-12; validation: the held-out speakers.
Plain: the papers' sizes; ``:cpu``: a small model and schedule for a 2-core CPU (both in
configs/common.py).

    python -m train.forecaster --config configs/vae_vox.py:cpu,horizon=HORIZON \
        --workdir runs/vae_vox --config.data.dir=../shared/data/vox_keypoints
"""

from configs import common


def get_config(arg=None):
    return common.forecaster_config("vae", "vox", arg)
