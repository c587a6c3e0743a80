"""RealNVP normalising-flow forecaster on MGIF keypoints.

Horizons 6-6 (default), 6-24, 12-12; validation: a fraction of the clips.
Plain: the papers' sizes; ``:cpu``: a small model and schedule for a 2-core CPU (both in
configs/common.py).

    python -m train.forecaster --config configs/nf_mgif.py:cpu,horizon=HORIZON \
        --workdir runs/nf_mgif --config.data.dir=PATH/mgif_keypoints
"""

from configs import common


def get_config(arg=None):
    return common.forecaster_config("nf", "mgif", arg)
