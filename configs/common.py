"""What every forecaster config shares: option parsing, the data section and the training loop's
defaults. The model and the run's own settings live in each ``configs/<model>_<data>.py``.

A config file's ``get_config(arg)`` receives the text after the ``:`` of
``--config configs/vrnn_vox.py:cpu,horizon=12-12`` as one comma-separated string, parsed by
:func:`parse_arg` against the options the file declares with their defaults.
"""

from __future__ import annotations

import dataclasses

import ml_collections

from kpflow.data.windows import parse_horizon
from kpflow.forecast import io

# The papers' horizons per dataset (observed-predicted frames); any N-M is accepted.
HORIZONS = {
    "vox": ("6-6", "6-24", "12-12"),
    "mgif": ("6-6", "6-24", "12-12"),
    "bair": ("5-5", "5-20", "15-15"),
    "synthetic": ("6-6", "6-24", "12-12"),
}

# Speakers held out of training for validation on the shared VoxCeleb keypoints (the others train).
VOX_HOLDOUT_SPEAKERS = ("id10284", "id10287", "id10289")


def parse_arg(arg: str | None, **defaults) -> ml_collections.ConfigDict:
    """The options of ``arg`` over ``defaults``, typed like them (big_vision's ``bvcc.parse_arg``).

    A boolean option is a bare word that turns it on; any other is ``key=value``, converted to its
    default's type: ``parse_arg("cpu,horizon=12-12", cpu=False, horizon="6-6")`` ->
    ``{cpu: True, horizon: "12-12"}``. An unknown word raises a one-line ValueError.
    """
    flags = [k for k, v in defaults.items() if isinstance(v, bool)]
    keys = [k for k in defaults if k not in flags]
    opts = dict(defaults)
    for part in (arg or "").split(","):
        part = part.strip()
        if not part:
            continue
        if "=" in part:
            k, v = part.split("=", 1)
            if k not in keys:
                raise ValueError(f"unknown config option {k!r}; options: {', '.join(keys) or 'none'}")
            try:
                opts[k] = type(defaults[k])(v)
            except ValueError:
                expected = type(defaults[k]).__name__
                raise ValueError(f"config option {k}={v!r}: expected a {expected}") from None
        elif part in flags:
            opts[part] = True
        else:
            raise ValueError(f"unknown config flag {part!r}; flags: {', '.join(flags) or 'none'}")
    return ml_collections.ConfigDict(opts)


def model_io(preset: str) -> ml_collections.ConfigDict:
    """``config.model.io``, every field of the shared input/output layer (kpflow.forecast.io) at
    ``preset``: "shared" (relative inputs, adaptive step scale, damped momentum, sign invariance,
    residual steps) or "plain" (the papers' inputs: the frame and its step; residual steps).
    Each field can then be overridden: ``--config.model.io.momentum=False``."""
    if preset not in io.PRESETS:
        raise ValueError(f"config option io={preset!r}: choose one of {', '.join(io.PRESETS)}")
    return ml_collections.ConfigDict(dataclasses.asdict(io.PRESETS[preset]))


def base_config(dataset: str, horizon: str, variant: str) -> ml_collections.ConfigDict:
    """The data section and the training loop's defaults of a forecaster run on ``dataset``.

    The config file fills ``config.model`` and adds its schedule to ``config.train``.
    """
    n, m = parse_horizon(horizon)

    c = ml_collections.ConfigDict()
    c.dataset = dataset
    c.variant = variant  # "paper" (the papers' sizes), "cpu" (a 2-core CPU) or "demo"
    c.horizon = horizon  # "N-M"; num_observed / num_predicted below must agree with it
    c.num_observed = n
    c.num_predicted = m

    c.data = ml_collections.ConfigDict()
    # "npz": a folder of per-clip .npz keypoints (dir); "tfds": a prepared kpflow_keypoints dataset
    # (tfds_name in tfds_data_dir; python -m kpflow.data.prepare); "synthetic": generated clips.
    c.data.kind = "synthetic" if dataset == "synthetic" else "npz"
    c.data.dir = ""  # a folder of per-clip .npz keypoints; set with --config.data.dir=PATH
    c.data.tfds_name = "kpflow_keypoints"
    c.data.tfds_data_dir = ""
    c.data.holdout_speakers = list(VOX_HOLDOUT_SPEAKERS) if dataset == "vox" else []
    c.data.split_file = ""  # optional: clip names (one per line) to hold out instead
    c.data.val_fraction = 0.2  # used when neither of the above is set
    c.data.seed = 0
    c.data.stride = 1  # training windows slide by this many frames
    c.data.augment = ()  # training-batch augmentations: "reflect", "reverse" (kpflow.data.windows)
    c.data.worker_count = 0  # grain worker processes building training batches (0: in the trainer's process)
    c.data.synthetic = ml_collections.ConfigDict(
        {"num_clips": 24, "num_speakers": 4, "min_frames": 80, "max_frames": 240,
         "num_keypoints": 10, "seed": 0}
    )

    c.model = ml_collections.ConfigDict()  # ``name`` and kpflow.forecast.create's hyper-parameters

    # The config file adds its schedule: batch_size, num_epochs, steps_per_epoch, learning_rate,
    # warmup_steps (optax AdamW, warmup-cosine) and val_samples (samples per validation window for
    # the closed-loop scores).
    c.train = ml_collections.ConfigDict()
    c.train.seed = 0
    c.train.weight_decay = 0.0
    c.train.clip_norm = 1.0
    # Validation score that picks the best checkpoint: "balanced" (the worst of mean/hold-last,
    # best-of-S/hold-last and energy/random-walk), "energy_score", "mae_mean" or "mae_best".
    c.train.select_metric = "balanced"
    c.train.keep_checkpoints = 2
    return c
