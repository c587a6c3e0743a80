r"""VRNN forecaster (Chung et al. 2015; the papers' main model) on BAIR robot-pushing keypoints.

Options after the ``:``: ``cpu`` (the small model and short schedule below, for a 2-core CPU;
without it, the papers' sizes) and ``horizon=N-M`` (5-5 by default; the papers' 5-20 and 15-15, or
any N-M).
The shared input/output layer (docs/design.md, "The shared input/output layer";
``config.model.io``) is on (``io=shared``); ``io=plain`` is the papers' original, the frame and its
step in and a residual step out (with ``cpu``, it turns ``equivariant`` off: reflecting a window
negates positions relative to its first frame, not absolute ones).
Validation: 20% of the clips (``data.val_fraction``), or the clip names in ``data.split_file``.

    python -m train.forecaster --config configs/vrnn_bair.py:cpu,horizon=HORIZON \
        --workdir runs/vrnn_bair --config.data.dir=PATH/bair_keypoints

Not trained here (no such keypoints on this machine): no time or result was measured. The
``cpu`` settings are those of configs/vrnn_vox.py, not tuned on this dataset.
"""

import ml_collections

from configs import common


def get_config(arg=None):
    arg = common.parse_arg(arg, cpu=False, horizon="5-5", io="shared")
    config = common.base_config("bair", arg.horizon, "cpu" if arg.cpu else "paper")

    if not arg.cpu:
        # The papers' sizes (appendix B).
        config.model = ml_collections.ConfigDict({
            "name": "vrnn", "hidden": 256, "latent": 20, "prior_hidden": 128,
            "posterior_hidden": 128, "decoder_hidden": 128, "kl_weight": 1.0,
            "io": common.model_io(arg.io),
        })
        config.train.update(batch_size=64, num_epochs=50, steps_per_epoch=200, learning_rate=1e-3,
                            warmup_steps=100, val_samples=32)
        return config

    # Chosen on VoxCeleb's held-out speakers (configs/vrnn_vox.py), not on this dataset.
    config.model = ml_collections.ConfigDict({
        "name": "vrnn",
        "hidden": 64,  # GRU units
        "latent": 16,  # size of z_t
        "prior_hidden": 64,
        "posterior_hidden": 64,
        "decoder_hidden": 64,
        "io": common.model_io(arg.io),  # the shared input/output layer (docs/design.md)
        "kl_weight": 0.2,  # a lighter KL lets z carry coherent motion
        "decoder_temperature": 0.0,  # deterministic decoder: each sample is a smooth path of z
        "closed_loop_weight": 1.0,  # the energy score of closed-loop rollouts calibrates the spread
        "latent_persistence": 0.9,  # AR(1) latent: a low-dimensional path per sample (best-of-100)
        "fresh_forecast_latent": True,  # no signed latent carries over from the context
        # Exact reflection equivariance: no training speakers' drift (it needs the relative inputs
        # of io=shared).
        "equivariant": arg.io == "shared",
        # Latent temperatures in turn when forecasting (a scale mixture about 0.8): tight and wide
        # futures for each window, a hedge for speakers moving more or less than the training ones.
        "latent_temperature": (0.4, 0.8, 1.2),
        "mirror_samples": True,  # antithetic pairs: the samples' mean is the damped momentum path
    })
    # The model peaks on held-out speakers after a few hundred steps and then overfits the two
    # training speakers: a short schedule, validated every 100 steps, keeps the best checkpoint. It
    # is picked with best-of-100, as the acceptance scores it (100 samples take about a second).
    config.train.update(batch_size=64, num_epochs=15, steps_per_epoch=100, learning_rate=1e-3,
                        warmup_steps=100, val_samples=100)
    config.data.augment = ("reflect",)  # half of each batch mirrored through its first frame
    return config
