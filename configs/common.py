"""Shared pieces of the forecaster configs (big_vision style).

A config file's ``get_config(arg)`` receives the text after the ``:`` of
``--config configs/vrnn_vox.py:cpu,horizon=12-12`` as one comma-separated string: bare words are
flags (``cpu`` picks the small variant that trains on a 2-core CPU), ``key=value`` pairs are options
(``horizon=N-M`` picks one of the paper's horizons).
"""

from __future__ import annotations

import ml_collections

from kpflow.data.windows import parse_horizon

# The papers' horizons per dataset (observed-predicted frames).
HORIZONS = {
    "vox": ("6-6", "6-24", "12-12"),
    "mgif": ("6-6", "6-24", "12-12"),
    "bair": ("5-5", "5-20", "15-15"),
    "synthetic": ("6-6", "6-24", "12-12"),
}

# Speakers held out of training for validation on the shared VoxCeleb keypoints (the others train).
VOX_HOLDOUT_SPEAKERS = ("id10284", "id10287", "id10289")


def parse_arg(arg: str | None, allowed_flags=("cpu",), allowed_keys=("horizon",)) -> tuple[set, dict]:
    """``"cpu,horizon=12-12"`` -> ({"cpu"}, {"horizon": "12-12"}); unknown words raise ValueError."""
    flags, opts = set(), {}
    for part in (arg or "").split(","):
        part = part.strip()
        if not part:
            continue
        if "=" in part:
            k, v = part.split("=", 1)
            if k not in allowed_keys:
                raise ValueError(f"unknown config option {k!r}; options: {', '.join(allowed_keys)}")
            opts[k] = v
        elif part in allowed_flags:
            flags.add(part)
        else:
            raise ValueError(f"unknown config flag {part!r}; flags: {', '.join(allowed_flags)}")
    return flags, opts


def base_config(dataset: str, arg: str | None) -> tuple[ml_collections.ConfigDict, set]:
    """The fields every forecaster config has; the caller fills ``config.model``."""
    flags, opts = parse_arg(arg)
    horizon = opts.get("horizon", HORIZONS[dataset][0])
    if horizon not in HORIZONS[dataset]:
        # Any N-M is allowed, but say when it is not one of the paper's settings.
        parse_horizon(horizon)
    n, m = parse_horizon(horizon)

    c = ml_collections.ConfigDict()
    c.dataset = dataset
    c.variant = "cpu" if "cpu" in flags else "paper"
    c.horizon = horizon  # "N-M"; num_observed / num_predicted below must agree with it
    c.num_observed = n
    c.num_predicted = m

    c.data = ml_collections.ConfigDict()
    c.data.kind = "synthetic" if dataset == "synthetic" else "npz"
    c.data.dir = ""  # a folder of per-clip .npz keypoints; set with --config.data.dir=PATH
    c.data.holdout_speakers = list(VOX_HOLDOUT_SPEAKERS) if dataset == "vox" else []
    c.data.split_file = ""  # optional: clip names (one per line) to hold out instead
    c.data.val_fraction = 0.2  # used when neither of the above is set
    c.data.seed = 0
    c.data.stride = 1  # training windows slide by this many frames
    c.data.augment = ()  # training-batch augmentations: "reflect", "reverse" (train/forecaster.py)
    c.data.synthetic = ml_collections.ConfigDict(
        {"num_clips": 24, "num_speakers": 4, "min_frames": 80, "max_frames": 240, "num_keypoints": 10, "seed": 0}
    )

    c.model = ml_collections.ConfigDict()

    c.train = ml_collections.ConfigDict()
    c.train.seed = 0
    c.train.batch_size = 64
    c.train.num_epochs = 50
    c.train.steps_per_epoch = 200
    c.train.learning_rate = 1e-3
    c.train.warmup_steps = 100
    c.train.weight_decay = 0.0
    c.train.clip_norm = 1.0
    c.train.val_samples = 32  # samples per validation window for the closed-loop scores
    # Validation score that picks the best checkpoint: "balanced" (the worst of mean/hold-last,
    # best-of-S/hold-last and energy/random-walk), "energy_score", "mae_mean" or "mae_best".
    c.train.select_metric = "balanced"
    c.train.keep_checkpoints = 2
    return c, flags


# -- model blocks and training schedules per variant --------------------------------------------
# ``config.model`` is ``name`` plus the hyper-parameters passed to ``kpflow.forecast.create``.
# "paper": the papers' sizes (appendix B); "cpu": small ones that train on a 2-core CPU.
_FLOW = {"activation": "tanh", "norm": "batch", "residual": True}
MODEL_SIZES = {
    "gru": {
        "paper": {"hidden": 256, "num_layers": 1, "residual": True, "deterministic": False},
        "cpu": {"hidden": 64, "num_layers": 1, "residual": True, "deterministic": False},
    },
    "vae": {
        "paper": {"hidden": 256, "latent": 20, "num_layers": 2, "beta": 1.0, "residual": True},
        "cpu": {"hidden": 64, "latent": 8, "num_layers": 2, "beta": 1.0, "residual": True},
    },
    "nf": {
        "paper": {"num_blocks": 12, "hidden": 2048, "num_layers": 5, "context_hidden": 256, **_FLOW},
        "cpu": {"num_blocks": 4, "hidden": 64, "num_layers": 2, "context_hidden": 64, **_FLOW},
    },
    "vrnn": {
        "paper": {
            "hidden": 256, "latent": 20, "prior_hidden": 128, "posterior_hidden": 128,
            "decoder_hidden": 128, "residual": True, "kl_weight": 1.0, "free_bits": 0.0,
        },
        # Chosen on held-out speakers (README, "Results"): a lighter KL lets z carry coherent motion;
        # a deterministic decoder and an AR(1) latent make each sample a smooth low-dimensional path
        # (best-of-100); the closed-loop energy score calibrates their spread; exact reflection
        # equivariance keeps the training speakers' drift out of the forecast of new ones; latent
        # temperatures 0.4, 0.8 and 1.2 in turn when forecasting (a scale mixture about 0.8) give
        # each window tight and wide futures, a hedge for speakers moving more or less than the
        # training ones; mirrored pairs keep the samples' mean on the damped momentum path.
        "cpu": {
            "hidden": 64, "latent": 16, "prior_hidden": 64, "posterior_hidden": 64,
            "decoder_hidden": 64, "residual": True, "kl_weight": 0.2, "free_bits": 0.0,
            "decoder_temperature": 0.0, "adaptive_scale": 4.0, "momentum": True, "sign_invariant": True,
            "closed_loop_weight": 1.0, "latent_persistence": 0.9, "fresh_forecast_latent": True,
            "equivariant": True, "latent_temperature": (0.4, 0.8, 1.2),
            "mirror_samples": True,
        },
    },
    "grunf": {
        "paper": {
            "hidden": 512, "num_gru_layers": 3, "num_blocks": 12, "flow_hidden": 2048,
            "flow_layers": 5, **_FLOW,
        },
        # temperature 0.85 and sign-invariant GRU inputs: chosen on held-out speakers (README, "Results").
        "cpu": {
            "hidden": 64, "num_gru_layers": 1, "num_blocks": 4, "flow_hidden": 64,
            "flow_layers": 2, **_FLOW, "temperature": 0.85, "adaptive_scale": 4.0, "momentum": True,
            "sign_invariant": True,
        },
    },
}

# Training-loop overrides of the "cpu" variant, for the 30 shared VoxCeleb clips (5.8k training
# frames). Measured here at 6-6 (2 busy cores, 2026-11): 15-45 ms per step for all five models, so
# 6,000 steps take 2-5 minutes, about twice that at 12-12 and 2.5x at 6-24: within 20 minutes.
# The "paper" variant keeps the defaults of base_config.
_CPU_SCHEDULE = {
    "batch_size": 64, "num_epochs": 30, "steps_per_epoch": 200, "warmup_steps": 200, "val_samples": 32,
}
# VRNN and GRU-NF peak on held-out speakers after a few hundred steps and then overfit the two
# training speakers: a short schedule, validated every 100 steps, keeps the best checkpoint.
_CPU_SHORT = {
    "batch_size": 64, "num_epochs": 15, "steps_per_epoch": 100, "warmup_steps": 100, "val_samples": 32,
}
# Symmetry augmentation for the short VRNN / GRU-NF schedules (see train/forecaster.py, augment).
CPU_AUGMENT = ("reflect",)
CPU_TRAIN = {
    "gru": _CPU_SCHEDULE,
    "vae": _CPU_SCHEDULE,
    "nf": _CPU_SCHEDULE,
    # The checkpoint is picked with best-of-100, as the acceptance scores it (best-of-32 is a
    # different, more pessimistic score); 100 samples of the held-out windows take about a second.
    "vrnn": {**_CPU_SHORT, "val_samples": 100},
    "grunf": _CPU_SHORT,
}


def forecaster_config(model: str, dataset: str, arg: str | None) -> ml_collections.ConfigDict:
    """``model`` on ``dataset``: base_config, then the variant's model block and schedule."""
    config, _ = base_config(dataset, arg)
    config.model = ml_collections.ConfigDict(dict(name=model, **MODEL_SIZES[model][config.variant]))
    if config.variant == "cpu":
        config.train.update(CPU_TRAIN[model])
        if model in ("vrnn", "grunf"):
            config.data.augment = CPU_AUGMENT
    return config
