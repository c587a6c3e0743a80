r"""RealNVP normalising-flow forecaster (over the whole future, conditioned on the context),
on VoxCeleb keypoints.

Options after the ``:``: ``cpu`` (the small model and short schedule below, for a 2-core CPU;
without it, the papers' sizes) and ``horizon=N-M`` (6-6 by default; the papers' 6-24 and 12-12, or
any N-M).
The shared input/output layer (docs/design.md, "The shared input/output layer": positions relative
to the window's first frame, a context-adaptive step scale, damped momentum, sign-invariant
conditioning; ``config.model.io``) is on (``io=shared``); with ``cpu`` the model also mirrors its
samples and half of each training batch, and trains on the VRNN's short schedule, as the VRNN's and
GRU-NF's configs do. ``io=plain`` is the papers' original: the frame and its step in, a residual step
out, the long schedule.
Validation: the held-out speakers id10284, id10287 and id10289; id10283 and id10286 train.

    python -m train.forecaster --config configs/nf_vox.py:cpu,horizon=12-12 \
        --workdir runs/nf_12-12 --config.data.dir=../shared/data/vox_keypoints
    python -m eval.forecast --workdir runs/nf_12-12 --data_dir ../shared/data/vox_keypoints \
        --split val --out runs/nf_12-12/eval_val.json

Hardware and time: a 2-core CPU (AMD EPYC, Zen 4) shared with other trainings, 30-45 s for the
1,500 steps and their validations (2026-12-05).

Result on speakers that neither trained nor selected the checkpoint (docs/results.md, "Five
forecasters compared fairly": mean over 3 speaker rotations x 2 training seeds, 100 closed-loop
samples per window): mean / hold-last, best-of-100 / hold-last and energy score / random walk,
where below 1 beats the baseline:
    6-6    0.968 / 0.990 / 0.934
    12-12  0.981 / 1.026 / 0.975
The mean of the samples beats hold-last; their best-of-100 is far from the VRNN's (0.84 at both
horizons): much of a sample's noise is independent per coordinate, not a motion of the whole head.
``io=plain`` (the papers' inputs, trained for 10 epochs with ``--config.train.num_epochs=10``) on
the held-out speakers that selected it (docs/results.md, "Keypoint forecasting on held-out
speakers"): 6-6 1.162 / 1.675 / 1.289, 12-12 1.100 / 1.523 / 1.159, worse than hold-last.
Not trained here: 6-24, the papers' sizes (no ``cpu``).
"""

import ml_collections

from configs import common


def get_config(arg=None):
    arg = common.parse_arg(arg, cpu=False, horizon="6-6", io="shared")
    config = common.base_config("vox", arg.horizon, "cpu" if arg.cpu else "paper")

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
