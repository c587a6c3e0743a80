"""What the FOMM stage-1 configs share: the official training parameters common to the reference's
``config/{vox,mgif,bair}-256.yaml``, option parsing, and :func:`fomm_config` for code that names a
dataset. The model, the data, the schedule and the ``:tiny`` variant live in each
``configs/fomm_<dataset>.py``.

``config.model`` mirrors the reference's ``model_params`` (``common``, ``kp_detector``,
``generator`` with ``dense_motion_params``, ``discriminator``), so official checkpoints convert with
the same config.
"""

from __future__ import annotations

import importlib

import ml_collections

from configs import common

DATASETS = ("vox", "mgif", "bair")


def parse_arg(dataset: str, arg: str | None) -> ml_collections.ConfigDict:
    """``arg``: empty for the official model, ``tiny`` for the CPU variant; else a ValueError."""
    try:
        return common.parse_arg(arg, tiny=False)
    except ValueError as e:
        use = f"configs/fomm_{dataset}.py or configs/fomm_{dataset}.py:tiny"
        raise ValueError(f"{e}; use {use}") from None


def base_config(dataset: str, variant: str) -> ml_collections.ConfigDict:
    """The official ``train_params`` the three datasets share; the config file adds the rest."""
    config = ml_collections.ConfigDict()
    config.dataset = dataset
    config.variant = variant  # "official" or "tiny"
    config.model = ml_collections.ConfigDict()  # the config file's model_params
    config.seed = 0
    # The config file adds its dataset_params (dir, frame_shape, id_sampling, augmentation, cache).
    # Where the videos come from: "folder" reads dir (root/{train,test}/); "tfds" reads the prepared
    # dataset tfds_name in tfds_data_dir (python -m kpflow.data.prepare --kind videos; the name
    # kpflow_videos picks the config of frame_shape's size). worker_count: grain processes that
    # decode and augment training pairs (0: a thread of the trainer's process).
    config.data = ml_collections.ConfigDict({
        "kind": "folder", "tfds_name": "kpflow_videos", "tfds_data_dir": "", "worker_count": 0,
    })

    # The config file adds num_epochs, num_repeats, epoch_milestones, batch_size, checkpoint_freq
    # and loss_weights.generator_gan, which differ per dataset.
    config.train = ml_collections.ConfigDict({
        "lr_generator": 2e-4,
        "lr_discriminator": 2e-4,
        "lr_kp_detector": 2e-4,
        "adam_b1": 0.5,
        "adam_b2": 0.999,
        "scales": (1, 0.5, 0.25, 0.125),
        "keep_checkpoints": 2,
        "transform": {"sigma_affine": 0.05, "sigma_tps": 0.005, "points_tps": 5},
        "loss_weights": {
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
        "image_every": 500,  # steps between PNGs: source, driving+keypoints, prediction, occlusion
        "log_every": 50,
        "eval_every": 0,  # steps between reconstruction-L1 evaluations on test/ (0: once per epoch)
        "eval_clips": 6,
        "eval_frames": 32,
        "max_minutes": 0.0,  # stop (with a checkpoint) after this wall time; 0 = no limit
        "max_steps": 0,  # stop after this many steps; 0 = no limit
    })
    return config


def fomm_config(dataset: str, arg: str | None = None) -> ml_collections.ConfigDict:
    """The config of ``configs/fomm_<dataset>.py``: ``arg`` empty for the official model, ``tiny``
    for the CPU variant."""
    if dataset not in DATASETS:
        raise ValueError(f"unknown FOMM dataset {dataset!r}; expected one of {DATASETS}")
    return importlib.import_module(f"configs.fomm_{dataset}").get_config(arg)
