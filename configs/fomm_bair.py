r"""FOMM stage 1 on BAIR robot pushing: the official bair-256 model and training (the reference's
``config/bair-256.yaml``), and ``:tiny``, a reduced variant for a 2-core CPU.

Option after the ``:``: ``tiny`` (64x64 frames, narrow networks, an L1 image pyramid in place of the
VGG19 loss and a 15-minute budget; see below).

    python -m train.fomm --config configs/fomm_bair.py --workdir runs/fomm_bair \
        --config.data.dir=data/bair --config.train.vgg19_weights=vgg19-dcbb9e9d.pth
    python -m train.fomm --config configs/fomm_bair.py:tiny --workdir runs/fomm_tiny_bair \
        --config.data.dir=PATH/bair

Not trained here (no BAIR videos on this machine): no time or result was measured. Official
checkpoints convert with it (``python -m kpflow.fomm.convert --config configs/fomm_bair.py``).
"""

import ml_collections

from configs import fomm_common


def get_config(arg=None):
    arg = fomm_common.parse_arg("bair", arg)
    config = fomm_common.base_config("bair", "tiny" if arg.tiny else "official")

    # model_params of bair-256.yaml.
    config.model = ml_collections.ConfigDict({
        "common": {"num_kp": 10, "num_channels": 3, "estimate_jacobian": True},
        "kp_detector": {
            "temperature": 0.1,
            "block_expansion": 32,
            "max_features": 1024,
            "scale_factor": 0.25,
            "num_blocks": 5,
            "single_jacobian_map": False,
            "pad": 0,
        },
        "generator": {
            "block_expansion": 64,
            "max_features": 512,
            "num_down_blocks": 2,
            "num_bottleneck_blocks": 6,
            "estimate_occlusion_map": True,
            "dense_motion_params": {
                "block_expansion": 64, "max_features": 1024, "num_blocks": 5, "scale_factor": 0.25,
            },
        },
        "discriminator": {
            "scales": (1,), "block_expansion": 32, "max_features": 512, "num_blocks": 4, "sn": True,
        },
    })
    # dataset_params of bair-256.yaml.
    config.data.tfds_name = "bair_robot_pushing_small"  # TFDS's own, 64x64: use with :tiny
    config.data.update({
        "dir": "data/bair",
        "frame_shape": (256, 256, 3),
        "id_sampling": False,
        "augmentation": {
            "flip_param": {"horizontal_flip": True, "time_flip": True},
            "jitter_param": {"brightness": 0.1, "contrast": 0.1, "saturation": 0.1, "hue": 0.1},
        },
        "cache": True,  # decoded clips kept in memory
    })
    # train_params of bair-256.yaml that differ per dataset (the shared ones: fomm_common.py).
    config.train.update(num_epochs=20, num_repeats=1, epoch_milestones=(12, 18), batch_size=36,
                        checkpoint_freq=10)
    config.train.loss_weights.generator_gan = 1.0

    if arg.tiny:
        # Same structure, fewer channels, for 64x64 frames on a CPU.
        config.model.kp_detector.update(block_expansion=16, max_features=128, num_blocks=4,
                                        scale_factor=0.5)
        config.model.generator.update(block_expansion=16, max_features=64, num_bottleneck_blocks=2)
        config.model.generator.dense_motion_params.update(block_expansion=16, max_features=128,
                                                          num_blocks=4, scale_factor=0.5)
        config.model.discriminator.update(block_expansion=16, max_features=128, num_blocks=3)
        config.data.frame_shape = (64, 64, 3)
        config.data.id_sampling = False  # a handful of clips, often of one speaker
        config.train.update(
            num_epochs=1000,
            num_repeats=10,
            batch_size=8,
            epoch_milestones=(800, 900),
            checkpoint_freq=5,
            perceptual="pixel_l1",  # no VGG19 weights needed
            image_every=100,
            log_every=10,
            eval_every=100,
            eval_clips=6,
            eval_frames=16,
            max_minutes=15.0,
        )
        config.train.loss_weights.perceptual = (10.0,)  # the pixel pyramid is one "layer"
    return config
