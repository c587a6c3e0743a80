r"""RealNVP normalising-flow forecaster (over the whole future, conditioned on the context),
on VoxCeleb keypoints.

Options after the ``:``: ``cpu`` (the small model and short schedule below, for a 2-core CPU;
without it, the papers' sizes) and ``horizon=N-M`` (6-6 by default; the papers' 6-24 and 12-12, or
any N-M).
``io=shared`` puts the shared input/output layer around the model (docs/design.md, "The shared
input/output layer": positions relative to the window's first frame, a context-adaptive step
scale, damped momentum, sign-invariant conditioning; ``config.model.io``); the default ``io=plain``
is the papers' original, the frame and its step in and a residual step out. With ``cpu``,
``io=shared`` also mirrors half of each training batch (``data.augment``), as the VRNN's does.
Validation: the held-out speakers id10284, id10287 and id10289; id10283 and id10286 train.

    python -m train.forecaster --config configs/nf_vox.py:cpu,horizon=12-12 \
        --workdir runs/nf_12-12 --config.data.dir=../shared/data/vox_keypoints \
        --config.train.num_epochs=10
    python -m eval.forecast --workdir runs/nf_12-12 --data_dir ../shared/data/vox_keypoints \
        --split val --out runs/nf_12-12/eval_val.json

Hardware and time: a 2-core CPU (AMD EPYC, Zen 4), 50-170 s per run for the five models
(2026-11-22).

Result, trained for 10 epochs as above (docs/results.md, "Keypoint forecasting on held-out speakers"; 100 closed-loop samples per window
of the held-out speakers): mean / hold-last, best-of-100 / hold-last and energy score / random
walk, where below 1 beats the baseline:
    6-6    1.162 / 1.675 / 1.289
    12-12  1.100 / 1.523 / 1.159
Worse than hold-last on new speakers: a plain likelihood model (``io=plain``), without the
inductive biases of the VRNN and GRU-NF configs.
Not trained here: 6-24, the papers' sizes (no ``cpu``), and ``io=shared`` (the same biases as the
VRNN's and GRU-NF's: ``configs/nf_vox.py:cpu,io=shared``).
"""

import ml_collections

from configs import common


def get_config(arg=None):
    arg = common.parse_arg(arg, cpu=False, horizon="6-6", io="plain")
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
        "io": common.model_io(arg.io),  # the papers' inputs; io=shared: the shared layer
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
