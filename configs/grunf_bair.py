"""GRU-NF forecaster (a GRU state conditions RealNVP coupling blocks),
on BAIR robot-pushing keypoints.

Horizons 5-5 (default), 5-20, 15-15; validation: a fraction of the clips.
Plain: the papers' sizes; ``:cpu``: a small model and schedule for a 2-core CPU (both in
configs/common.py).

    python -m train.forecaster --config configs/grunf_bair.py:cpu,horizon=HORIZON \
        --workdir runs/grunf_bair --config.data.dir=PATH/bair_keypoints
"""

from configs import common


def get_config(arg=None):
    return common.forecaster_config("grunf", "bair", arg)
