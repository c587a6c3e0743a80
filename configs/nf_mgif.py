r"""RealNVP normalising-flow forecaster (over the whole future, conditioned on the context),
on Moving-GIF (MGIF) keypoints.

Options after the ``:``: ``cpu`` (the small model and short schedule below, for a 2-core CPU;
without it, the papers' sizes) and ``horizon=N-M`` (6-6 by default; the papers' 6-24 and 12-12, or
any N-M).
The shared input/output layer (docs/design.md, "The shared input/output layer": positions relative
to the window's first frame, a context-adaptive step scale, damped momentum, sign-invariant
conditioning; ``config.model.io``) is on (``io=shared``); with ``cpu`` the model also mirrors its
samples and half of each training batch, and trains on the VRNN's short schedule, as the VRNN's and
GRU-NF's configs do. ``io=plain`` is the papers' original: the frame and its step in, a residual step
out, the long schedule.
Validation: 20% of the clips (``data.val_fraction``), or the clip names in ``data.split_file``.

    python -m train.forecaster --config configs/nf_mgif.py:cpu,horizon=HORIZON \
        --workdir runs/nf_mgif --config.data.dir=PATH/mgif_keypoints

Not trained here (no such keypoints on this machine): no time or result was measured. The
``cpu`` settings are those of configs/nf_vox.py, not tuned on this dataset.
"""

import ml_collections

from configs import common


def get_config(arg=None):
    arg = common.parse_arg(arg, cpu=False, horizon="6-6", io="shared")
    config = common.base_config("mgif", arg.horizon, "cpu" if arg.cpu else "paper")

    if not arg.cpu:
        # The papers' sizes (appendix B).
        config.model = ml_collections.ConfigDict({
            "name": "nf", "num_blocks": 12, "hidden": 2048, "num_layers": 5, "context_hidden": 256,
            "activation": "tanh", "norm": "batch",
            "io": common.model_io(arg.io),
        })
        config.train.update(batch_size=64, num_epochs=50, steps_per_epoch=200, learning_rate=1e-3,
                            warmup_steps=100, val_samples=32)
        return config

    config.model = ml_collections.ConfigDict({
        "name": "nf",
        "num_blocks": 4,  # coupling blocks
        "hidden": 64,  # width of the coupling networks
        "num_layers": 2,  # their hidden layers
        "context_hidden": 64,  # the context encoder (the flow's condition)
        "activation": "tanh",
        "norm": "batch",  # batch-norm bijectors between blocks
        "io": common.model_io(arg.io),  # the shared layer (io=plain: the papers' inputs)
        # Antithetic pairs through the damped momentum path (io=shared; docs/design.md).
        "mirror_samples": arg.io == "shared",
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
