r"""GRU-NF forecaster (Rasul et al. 2021: a GRU state conditions a RealNVP per step),
on Moving-GIF (MGIF) keypoints.

Options after the ``:``: ``cpu`` (the small model and short schedule below, for a 2-core CPU;
without it, the papers' sizes) and ``horizon=N-M`` (6-6 by default; the papers' 6-24 and 12-12, or
any N-M).
The shared input/output layer (docs/design.md, "The shared input/output layer";
``config.model.io``) is on (``io=shared``); ``io=plain`` is the papers' original, the frame and its
step in and a residual step out.
Validation: 20% of the clips (``data.val_fraction``), or the clip names in ``data.split_file``.

    python -m train.forecaster --config configs/grunf_mgif.py:cpu,horizon=HORIZON \
        --workdir runs/grunf_mgif --config.data.dir=PATH/mgif_keypoints

Not trained here (no such keypoints on this machine): no time or result was measured. The
``cpu`` settings are those of configs/grunf_vox.py, not tuned on this dataset.
"""

import ml_collections

from configs import common


def get_config(arg=None):
    arg = common.parse_arg(arg, cpu=False, horizon="6-6", io="shared")
    config = common.base_config("mgif", arg.horizon, "cpu" if arg.cpu else "paper")

    if not arg.cpu:
        # The papers' sizes (appendix B).
        config.model = ml_collections.ConfigDict({
            "name": "grunf", "hidden": 512, "num_gru_layers": 3, "num_blocks": 12,
            "flow_hidden": 2048, "flow_layers": 5, "activation": "tanh", "norm": "batch",
            "io": common.model_io(arg.io),
        })
        config.train.update(batch_size=64, num_epochs=50, steps_per_epoch=200, learning_rate=1e-3,
                            warmup_steps=100, val_samples=32)
        return config

    # Chosen on VoxCeleb's held-out speakers (configs/grunf_vox.py), not on this dataset.
    config.model = ml_collections.ConfigDict({
        "name": "grunf",
        "hidden": 64,  # GRU units
        "num_gru_layers": 1,
        "num_blocks": 4,  # coupling blocks of the per-step RealNVP
        "flow_hidden": 64,
        "flow_layers": 2,
        "activation": "tanh",
        "norm": "batch",  # batch-norm bijectors between blocks, as in the paper
        "io": common.model_io(arg.io),  # the shared input/output layer (docs/design.md)
        # Temperatures of the flow's base noise in turn when forecasting (a scale mixture): tight
        # and wide futures for each window, as the VRNN's latent_temperature.
        "temperature": (0.3, 0.8, 1.5),
        "noise_persistence": 0.9,  # AR(1) base noise: each sample is a path, not a random walk
        "noise_rank": 8,  # each step's innovation in the 8 principal axes of the training steps
        "closed_loop_weight": 1.0,  # the energy score of closed-loop rollouts calibrates the spread
        "mirror_samples": True,  # antithetic pairs: the samples' mean is the damped momentum path
    })
    # The model peaks on held-out speakers after a few hundred steps and then overfits the two
    # training speakers: a short schedule, validated every 100 steps, keeps the best checkpoint.
    # It is picked with best-of-100, as the acceptance scores it.
    config.train.update(batch_size=64, num_epochs=15, steps_per_epoch=100, learning_rate=1e-3,
                        warmup_steps=100, val_samples=100)
    config.data.augment = ("reflect",)  # half of each batch mirrored through its first frame
    return config
