"""FOMM stage-1 configs: the official hyper-parameters of ``config/<dataset>-256.yaml`` and a tiny
CPU variant.

``python -m train.fomm --config configs/fomm_vox.py`` trains the official vox-256 model;
``configs/fomm_vox.py:tiny`` a reduced one (64x64 frames, narrow networks) that learns on a 2-core
CPU in minutes. ``config.model`` mirrors the reference's ``model_params`` (``common``,
``kp_detector``, ``generator`` with ``dense_motion_params``, ``discriminator``), so official
checkpoints convert with the same config.
"""

from __future__ import annotations

import ml_collections

DATASETS = ("vox", "mgif", "bair")

# Official augmentation_params per dataset (flips, colour jitter; mgif also crops and resizes).
_JITTER = {"brightness": 0.1, "contrast": 0.1, "saturation": 0.1, "hue": 0.1}
AUGMENTATION = {
    "vox": {"flip_param": {"horizontal_flip": True, "time_flip": True}, "jitter_param": dict(_JITTER)},
    "bair": {"flip_param": {"horizontal_flip": True, "time_flip": True}, "jitter_param": dict(_JITTER)},
    "mgif": {
        "flip_param": {"horizontal_flip": True, "time_flip": True},
        "crop_param": {"size": (256, 256)},
        "resize_param": {"ratio": (0.9, 1.1)},
        "jitter_param": {"hue": 0.5},
    },
}
# Official train_params that differ per dataset.
SCHEDULE = {
    "vox": {"num_epochs": 100, "num_repeats": 75, "epoch_milestones": (60, 90), "batch_size": 40,
            "checkpoint_freq": 50, "generator_gan": 0.0},
    "mgif": {"num_epochs": 100, "num_repeats": 25, "epoch_milestones": (60, 90), "batch_size": 36,
             "checkpoint_freq": 100, "generator_gan": 1.0},
    "bair": {"num_epochs": 20, "num_repeats": 1, "epoch_milestones": (12, 18), "batch_size": 36,
             "checkpoint_freq": 10, "generator_gan": 1.0},
}
DATA_DIRS = {"vox": "data/vox", "mgif": "data/moving-gif", "bair": "data/bair"}


def model_config(dataset: str) -> ml_collections.ConfigDict:
    """The official ``model_params`` of ``<dataset>-256.yaml``."""
    return ml_collections.ConfigDict({
        "common": {"num_kp": 10, "num_channels": 3, "estimate_jacobian": True},
        "kp_detector": {
            "temperature": 0.1,
            "block_expansion": 32,
            "max_features": 1024,
            "scale_factor": 0.25,
            "num_blocks": 5,
            "single_jacobian_map": dataset == "mgif",
            "pad": 0,
        },
        "generator": {
            "block_expansion": 64,
            "max_features": 512,
            "num_down_blocks": 2,
            "num_bottleneck_blocks": 6,
            "estimate_occlusion_map": True,
            "dense_motion_params": {"block_expansion": 64, "max_features": 1024, "num_blocks": 5, "scale_factor": 0.25},
        },
        "discriminator": {"scales": (1,), "block_expansion": 32, "max_features": 512, "num_blocks": 4, "sn": True},
    })


def tiny_model(model: ml_collections.ConfigDict) -> None:
    """Shrink a model config in place for 64x64 frames on a CPU (same structure, fewer channels)."""
    model.kp_detector.update(block_expansion=16, max_features=128, num_blocks=4, scale_factor=0.5)
    model.generator.update(block_expansion=16, max_features=64, num_bottleneck_blocks=2)
    model.generator.dense_motion_params.update(block_expansion=16, max_features=128, num_blocks=4, scale_factor=0.5)
    model.discriminator.update(block_expansion=16, max_features=128, num_blocks=3)


def fomm_config(dataset: str, arg: str | None = None) -> ml_collections.ConfigDict:
    """``arg``: empty for the official model, ``tiny`` for the CPU variant."""
    if dataset not in DATASETS:
        raise ValueError(f"unknown FOMM dataset {dataset!r}; expected one of {DATASETS}")
    variant = (arg or "").strip()
    if variant not in ("", "tiny"):
        raise ValueError(f"unknown FOMM config variant {variant!r}; use configs/fomm_{dataset}.py or fomm_{dataset}.py:tiny")
    sched = SCHEDULE[dataset]
    config = ml_collections.ConfigDict()
    config.dataset = dataset
    config.variant = variant or "official"
    config.model = model_config(dataset)
    config.seed = 0

    config.data = ml_collections.ConfigDict({
        "dir": DATA_DIRS[dataset],
        "frame_shape": (256, 256, 3),
        "id_sampling": dataset == "vox",
        "augmentation": AUGMENTATION[dataset],
        "cache": True,
    })

    config.train = ml_collections.ConfigDict({
        "num_epochs": sched["num_epochs"],
        "num_repeats": sched["num_repeats"],
        "epoch_milestones": sched["epoch_milestones"],
        "lr_generator": 2e-4,
        "lr_discriminator": 2e-4,
        "lr_kp_detector": 2e-4,
        "adam_b1": 0.5,
        "adam_b2": 0.999,
        "batch_size": sched["batch_size"],
        "scales": (1, 0.5, 0.25, 0.125),
        "checkpoint_freq": sched["checkpoint_freq"],  # epochs between kept checkpoints
        "keep_checkpoints": 2,
        "transform": {"sigma_affine": 0.05, "sigma_tps": 0.005, "points_tps": 5},
        "loss_weights": {
            "generator_gan": sched["generator_gan"],
            "discriminator_gan": 1.0,
            "feature_matching": (10.0, 10.0, 10.0, 10.0),
            "perceptual": (10.0, 10.0, 10.0, 10.0, 10.0),
            "equivariance_value": 10.0,
            "equivariance_jacobian": 10.0,
        },
        # "vgg19": the paper's perceptual pyramid; needs torchvision VGG19 weights (vgg19_weights).
        # "pixel_l1": a labelled substitute (L1 on the image pyramid) for runs without them.
        "perceptual": "vgg19",
        "vgg19_weights": "",
        "image_every": 500,  # steps between PNGs of source / driving+keypoints / prediction / occlusion
        "log_every": 50,
        "eval_every": 0,  # steps between reconstruction-L1 evaluations on test/ (0: once per epoch)
        "eval_clips": 6,
        "eval_frames": 32,
        "max_minutes": 0.0,  # stop (with a checkpoint) after this wall time; 0 = no limit
        "max_steps": 0,  # stop after this many steps; 0 = no limit
    })

    if variant == "tiny":
        tiny_model(config.model)
        config.data.frame_shape = (64, 64, 3)
        config.data.id_sampling = False  # a handful of clips, often of one speaker
        if dataset == "mgif":
            config.data.augmentation.crop_param.size = (64, 64)
        config.train.update(
            num_epochs=1000,
            num_repeats=10,
            batch_size=8,
            epoch_milestones=(800, 900),
            checkpoint_freq=5,
            perceptual="pixel_l1",
            image_every=100,
            log_every=10,
            eval_every=100,
            eval_clips=6,
            eval_frames=16,
            max_minutes=15.0,
        )
        config.train.loss_weights.perceptual = (10.0,)
    return config
