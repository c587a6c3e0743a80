r"""GRU-NF forecaster (Rasul et al. 2021: a GRU state conditions a RealNVP per step),
on VoxCeleb keypoints.

Options after the ``:``: ``cpu`` (the small model and short schedule below, for a 2-core CPU;
without it, the papers' sizes) and ``horizon=N-M`` (6-6 by default; the papers' 6-24 and 12-12, or
any N-M).
The shared input/output layer (docs/design.md, "The shared input/output layer";
``config.model.io``) is on (``io=shared``); ``io=plain`` is the papers' original, the frame and its
step in and a residual step out.
Validation: the held-out speakers id10284, id10287 and id10289; id10283 and id10286 train.

    python -m train.forecaster --config configs/grunf_vox.py:cpu,horizon=12-12 \
        --workdir runs/grunf_12-12 --config.data.dir=../shared/data/vox_keypoints
    python -m eval.forecast --workdir runs/grunf_12-12 --data_dir ../shared/data/vox_keypoints \
        --split val --out runs/grunf_12-12/eval_val.json

Hardware and time: a 2-core CPU (AMD EPYC, Zen 4) shared with another training, 8 min at 6-6 and
15 min at 12-12 for the 1,500 steps and their validations (2026-12-05).

Result (docs/results.md, "Keypoint forecasting on held-out speakers"; 100 closed-loop samples per
window of the held-out speakers): mean / hold-last, best-of-100 / hold-last and energy score /
random walk, where below 1 beats the baseline:
    6-6    0.962 / 0.847 / 0.955
    12-12  0.975 / 0.864 / 0.994
On speakers that neither trained nor selected the checkpoint (docs/results.md, "Five forecasters
compared fairly": mean over 3 speaker rotations x 2 training seeds):
    6-6    0.981 / 0.876 / 0.965
    12-12  0.986 / 0.878 / 1.000
Not trained here: 6-24, and the papers' sizes (no ``cpu``).
"""

import ml_collections

from configs import common


def get_config(arg=None):
    arg = common.parse_arg(arg, cpu=False, horizon="6-6", io="shared")
    config = common.base_config("vox", arg.horizon, "cpu" if arg.cpu else "paper")

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

    # Chosen on held-out speakers (docs/results.md, "Keypoint forecasting on held-out speakers").
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
        # Each step's innovation kept to the 8 principal axes of the training steps: keypoints
        # move together, without the per-coordinate jitter (best-of-100 rewards that).
        "noise_rank": 8,
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
