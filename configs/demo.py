"""A couple of minutes on a laptop: a tiny forecaster on the built-in synthetic keypoint data.

    python -m train.forecaster --config configs/demo.py --workdir /tmp/kpflow_demo
    python -m train.forecaster --config configs/demo.py:grunf,horizon=12-12 --workdir /tmp/demo_grunf

The argument names the model (vrnn by default; any of gru, vae, nf, vrnn, grunf) and may add
``horizon=N-M``. No files needed: the clips are regenerated from ``config.data.synthetic``.
"""

import ml_collections

from configs import common

# Tiny sizes: seconds per epoch on 2 CPU cores.
DEMO_SIZES = {
    "gru": {"hidden": 32, "num_layers": 1, "residual": True, "deterministic": False},
    "vae": {"hidden": 32, "latent": 8, "num_layers": 1, "beta": 1.0, "residual": True},
    "nf": {
        "num_blocks": 2, "hidden": 32, "num_layers": 2, "activation": "tanh", "norm": "batch",
        "context_hidden": 32, "residual": True,
    },
    # VRNN and GRU-NF carry the structural defaults of their :cpu configs (configs/common.py).
    "vrnn": {
        "hidden": 32, "latent": 8, "prior_hidden": 32, "posterior_hidden": 32, "decoder_hidden": 32,
        "residual": True, "kl_weight": 0.2, "free_bits": 0.0, "decoder_temperature": 0.0,
        "adaptive_scale": 4.0, "momentum": True, "sign_invariant": True, "closed_loop_weight": 1.0,
        "latent_persistence": 0.9, "fresh_forecast_latent": True, "equivariant": True,
        "latent_temperature": 0.8, "mirror_samples": True,
    },
    "grunf": {
        "hidden": 32, "num_gru_layers": 1, "num_blocks": 2, "flow_hidden": 32, "flow_layers": 2,
        "activation": "tanh", "norm": "batch", "residual": True, "temperature": 0.85,
        "adaptive_scale": 4.0, "momentum": True, "sign_invariant": True,
    },
}


def get_config(arg=None):
    parts = [p.strip() for p in (arg or "").split(",") if p.strip()]
    models = [p for p in parts if p in DEMO_SIZES]
    if len(models) > 1:
        raise ValueError(f"configs/demo.py takes one model name, got {models}")
    model = models[0] if models else "vrnn"
    rest = [p for p in parts if p not in DEMO_SIZES]
    try:
        config, _ = common.base_config("synthetic", ",".join(rest))
    except ValueError as e:
        raise ValueError(f"{e}; configs/demo.py also takes a model: {', '.join(DEMO_SIZES)}") from None
    config.variant = "demo"
    config.model = ml_collections.ConfigDict(dict(name=model, **DEMO_SIZES[model]))
    config.train.update(
        batch_size=32, num_epochs=8, steps_per_epoch=100, warmup_steps=50, val_samples=16,
        keep_checkpoints=1,
    )
    if model in ("vrnn", "grunf"):
        config.data.augment = common.CPU_AUGMENT
    return config
