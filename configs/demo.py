r"""The demo: a model's ``:cpu`` config, shrunk to train in a minute or two on a laptop.

    python -m train.forecaster --config configs/demo.py --workdir /tmp/kpflow_demo
    python -m train.forecaster --config configs/demo.py:grunf,horizon=12-12 \
        --workdir /tmp/demo_grunf

The argument names the model (vrnn by default; any of gru, vae, nf, vrnn, grunf) and may add
``horizon=N-M`` and ``io=shared`` or ``io=plain`` (the input/output layer; by default the model's
``:cpu`` one, shared). No files needed: the clips are regenerated from ``config.data.synthetic``.
``make demo`` (scripts/demo.sh) trains the VRNN and the GRU-NF with it on the keypoints a tiny FOMM
extracted from generated videos (``--config.data.kind=npz --config.data.dir=...``).

What the demo takes from ``configs/<model>_vox.py:cpu`` (so a change there reaches it): every
setting of the model but its sizes, the augmentation and the training loop. What it changes:
synthetic data, a short schedule and narrower networks (:data:`NARROWER`, sizes only).

Hardware and time: ``make demo`` took 10 min 30 s on a 2-core CPU shared with one forecaster
training (2026-12-05), its 5-minute FOMM included (800 steps per forecaster). Result of that run
on the 4 test clips' keypoints (20 windows at 6-6; mean / hold-last, best-of-100 / hold-last,
energy score / random walk): VRNN 0.834 / 0.559 / 0.841, GRU-NF 0.812 / 0.603 / 0.812. The FOMM
trains for 5 minutes of wall time, so a busier machine gives it fewer steps and the keypoints, and
these numbers, change with it. The demo shows the system working end to end on easy generated
scenes; these numbers say nothing about real talking heads (configs/vrnn_vox.py has the VRNN's on
real keypoints).
"""

import importlib

from configs import common

MODELS = ("gru", "vae", "nf", "vrnn", "grunf")

# The demo's sizes where they differ from the ``:cpu`` config's. The VRNN at its :cpu sizes took
# about 7% more CPU time to train here (2026-11, 2 shared cores).
NARROWER = {
    "gru": {"hidden": 32},
    "vae": {"hidden": 32, "num_layers": 1},
    "nf": {"num_blocks": 2, "hidden": 32, "context_hidden": 32},
    "vrnn": {"hidden": 32, "latent": 8, "prior_hidden": 32, "posterior_hidden": 32, "decoder_hidden": 32},
    "grunf": {"hidden": 32, "num_blocks": 2, "flow_hidden": 32},
}


def get_config(arg=None):
    words = [p.strip() for p in (arg or "").split(",") if p.strip()]
    models = [w for w in words if w in MODELS]
    if len(models) > 1:
        raise ValueError(f"configs/demo.py takes one model name, got {models}")
    model = models[0] if models else "vrnn"
    try:
        # ``cpu`` is accepted and changes nothing: the demo is a :cpu config.
        rest = ",".join(w for w in words if w not in MODELS)
        opts = common.parse_arg(rest, cpu=False, horizon="6-6", io="")
        config = common.base_config("synthetic", opts.horizon, "demo")
    except ValueError as e:
        raise ValueError(f"{e}; configs/demo.py also takes a model: {', '.join(MODELS)}") from None

    layer = f",io={opts.io}" if opts.io else ""  # else the :cpu config's own
    cpu = importlib.import_module(f"configs.{model}_vox").get_config(f"cpu,horizon={opts.horizon}{layer}")
    config.model = cpu.model
    config.model.update(NARROWER[model])
    config.data.augment = cpu.data.augment
    config.train = cpu.train
    # Seconds per epoch on 2 CPU cores; one checkpoint kept.
    config.train.update(batch_size=32, num_epochs=8, steps_per_epoch=100, warmup_steps=50,
                        val_samples=16, keep_checkpoints=1)
    return config
