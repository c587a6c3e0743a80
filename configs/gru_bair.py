r"""GRU forecaster (a stacked GRU with a Gaussian output per step, DeepAR-style),
on BAIR robot-pushing keypoints.

Options after the ``:``: ``cpu`` (the small model and short schedule below, for a 2-core CPU;
without it, the papers' sizes) and ``horizon=N-M`` (5-5 by default; the papers' 5-20 and 15-15, or
any N-M).
The shared input/output layer (docs/design.md, "The shared input/output layer": positions relative
to the window's first frame, a context-adaptive step scale, damped momentum, sign-invariant
conditioning; ``config.model.io``) is on (``io=shared``); with ``cpu`` the model also mirrors its
samples and half of each training batch, and trains on the VRNN's short schedule, as the VRNN's and
GRU-NF's configs do. ``io=plain`` is the papers' original: the frame and its step in, a residual step
out, the long schedule.
Validation: 20% of the clips (``data.val_fraction``), or the clip names in ``data.split_file``.

    python -m train.forecaster --config configs/gru_bair.py:cpu,horizon=HORIZON \
        --workdir runs/gru_bair --config.data.dir=PATH/bair_keypoints

Not trained here (no such keypoints on this machine): no time or result was measured. The
``cpu`` settings are those of configs/gru_vox.py, not tuned on this dataset.
"""

import ml_collections

from configs import common


def get_config(arg=None):
    arg = common.parse_arg(arg, cpu=False, horizon="5-5", io="shared")
    config = common.base_config("bair", arg.horizon, "cpu" if arg.cpu else "paper")

    if not arg.cpu:
        # The papers' sizes (appendix B).
        config.model = ml_collections.ConfigDict(
            {"name": "gru", "hidden": 256, "num_layers": 1,
             "deterministic": False, "io": common.model_io(arg.io)}
        )
        config.train.update(batch_size=64, num_epochs=50, steps_per_epoch=200, learning_rate=1e-3,
                            warmup_steps=100, val_samples=32)
        return config

    config.model = ml_collections.ConfigDict({
        "name": "gru",
        "hidden": 64,  # GRU units
        "num_layers": 1,
        "temperature": 1.0,  # of the head's noise when forecasting
        "noise_persistence": 0.0,  # AR(1) head noise across forecast steps (0: fresh every step)
        "io": common.model_io(arg.io),  # the shared layer (io=plain: the papers' inputs)
        # Antithetic pairs through the damped momentum path (io=shared; docs/design.md).
        "mirror_samples": arg.io == "shared",
        "deterministic": False,  # a Gaussian per step (True: a point forecast, MSE)
    })
    # 6,000 steps: on the 30 shared VoxCeleb clips (5.8k training frames) 15-45 ms per step at 6-6
    # on 2 busy cores (2026-11), so 2-5 minutes, about twice that at 12-12 and 2.5x at 6-24.
    config.train.update(batch_size=64, num_epochs=30, steps_per_epoch=200, learning_rate=1e-3,
                        warmup_steps=200, val_samples=32)
    if arg.io == "shared":  # the VRNN's and GRU-NF's recipe: the same biases, schedule and selection
        config.data.augment = ("reflect",)  # half of each batch mirrored through its first frame
        # On new speakers the model peaks after a few hundred steps and then overfits the two
        # training speakers: a short schedule, validated every 100 steps, keeps the best checkpoint.
        config.train.update(num_epochs=15, steps_per_epoch=100, warmup_steps=100)
    return config
