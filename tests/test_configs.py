"""configs/: every file loads with every argument the docs use and describes a run that can start.

Checks: each ``configs/<file>.py:ARG`` named in the README, docs/, scripts/, the Makefile and the
configs' own docstrings loads; forecaster configs agree with their horizon and build through
``kpflow.forecast.create``; FOMM configs build their networks; bad arguments are one-line
ValueErrors; the same model has the same settings on every dataset; and the demo is the ``:cpu``
config it says it is (its VRNN exactly). No training: the whole file takes seconds.
"""

import importlib
import pathlib
import re

import pytest

from configs import common, demo, fomm_common
from kpflow import forecast
from kpflow.data.windows import parse_horizon

REPO = pathlib.Path(__file__).resolve().parent.parent
MODELS = ("gru", "vae", "nf", "vrnn", "grunf")
DATASETS = ("vox", "mgif", "bair")
FORECASTER_FILES = [f"{m}_{d}" for m in MODELS for d in DATASETS]
FOMM_FILES = [f"fomm_{d}" for d in DATASETS]
# The schedule every forecaster config file sets (base_config leaves it to them).
SCHEDULE = ("batch_size", "num_epochs", "steps_per_epoch", "learning_rate", "warmup_steps", "val_samples")


def load(stem: str):
    return importlib.import_module(f"configs.{stem}")


def standard_args(stem: str) -> list:
    """The arguments a config file documents: its options over the papers' horizons and both
    input/output layers."""
    if stem.startswith("fomm_"):
        return [None, "tiny"]
    if stem == "demo":
        return [None, *MODELS, *(f"{m},horizon={h}" for m in MODELS for h in common.HORIZONS["synthetic"]),
                *(f"{m},io={p}" for m in MODELS for p in ("shared", "plain"))]
    dataset = stem.split("_")[1]
    return [None, "cpu", *(f"{c}horizon={h}" for c in ("", "cpu,") for h in common.HORIZONS[dataset]),
            *(f"{c}io={p}" for c in ("", "cpu,") for p in ("shared", "plain"))]


def documented_uses() -> list:
    """``(stem, arg)`` for every ``configs/<stem>.py[:ARG]`` in the docs, placeholders expanded."""
    texts = [REPO / "README.md", REPO / "Makefile", *REPO.glob("docs/**/*.md"), *REPO.glob("scripts/*.sh"),
             *REPO.glob("configs/*.py")]
    found = set()
    for path in texts:
        found.update(re.findall(r"configs/([a-z_<>]+)\.py(?::([A-Za-z0-9_=,.<>-]+))?", path.read_text()))
    # ``configs/<model>_vox.py``: each model.
    found = {(s.replace("<model>", m), a) for s, a in found for m in (MODELS if "<model>" in s else ("",))}
    uses = set()
    for stem, arg in found:
        if stem in ("common", "fomm_common", "x") or not (REPO / "configs" / f"{stem}.py").exists():
            continue
        dataset = stem.split("_")[1] if stem in FORECASTER_FILES else "synthetic"
        for placeholder in ("HORIZON", "<horizon>", "<h>", "N-M"):
            if placeholder in arg:
                uses.update((stem, arg.replace(placeholder, h)) for h in common.HORIZONS[dataset])
                break
        else:
            uses.add((stem, arg or None))
    return sorted(uses, key=str)


def check_forecaster(config) -> None:
    """What train.forecaster checks before it reads data, and that the model can be built."""
    from kpflow.training.forecaster import validate_config

    validate_config(config)
    assert parse_horizon(config.horizon) == (config.num_observed, config.num_predicted)
    assert config.model.name in forecast.MODELS
    assert all(k in config.train for k in SCHEDULE), sorted(config.train)
    hparams = {k: v for k, v in config.model.items() if k != "name"}
    forecast.create(config.model.name, dim=60, num_observed=config.num_observed, horizon=config.num_predicted,
                    **hparams)


def check_fomm(config) -> None:
    from kpflow.fomm.model import build_networks

    assert set(config.model) == {"common", "kp_detector", "generator", "discriminator"}
    assert "dense_motion_params" in config.model.generator
    assert config.data.frame_shape[:2] == ((64, 64) if config.variant == "tiny" else (256, 256))
    build_networks(config.model)


def check(stem: str, config) -> None:
    if stem.startswith("fomm_"):
        check_fomm(config)
    else:
        check_forecaster(config)


@pytest.mark.parametrize("stem", ["demo", *FORECASTER_FILES, *FOMM_FILES])
def test_config_loads_and_validates_with_each_documented_argument(stem):
    for arg in standard_args(stem):
        config = load(stem).get_config(arg)
        check(stem, config)
        if stem in FORECASTER_FILES:
            model, dataset = stem.split("_")
            assert (config.model.name, config.dataset) == (model, dataset)
            assert config.variant == ("cpu" if arg and "cpu" in arg else "paper")
            if arg is None:  # the default horizon is the first of the papers'
                assert config.horizon == common.HORIZONS[dataset][0]
            # The input/output layer of the option, else the shared one (every model's default;
            # plain is the papers' original, by option only).
            preset = arg.split("io=")[1] if arg and "io=" in arg else "shared"
            assert config.model.io.to_dict() == common.model_io(preset).to_dict()


def test_every_config_use_in_the_docs_loads():
    uses = documented_uses()
    assert ("vrnn_vox", "cpu,horizon=12-12") in uses and ("fomm_vox", "tiny") in uses
    for stem, arg in uses:
        check(stem, load(stem).get_config(arg))


BAD_ARGS = {
    "unknown flag": ("vrnn_vox", "gpu", "unknown config flag 'gpu'; flags: cpu"),
    "unknown option": ("gru_bair", "depth=3", "unknown config option 'depth'; options: horizon, io"),
    "unknown io preset": ("grunf_vox", "cpu,io=fancy", "config option io='fancy': choose one of shared, plain"),
    "malformed horizon": ("nf_mgif", "cpu,horizon=6x6", "horizon '6x6' must look like N-M"),
    "too short a horizon": ("vae_vox", "horizon=1-6", "need at least 2 observed"),
    "FOMM flag": ("fomm_vox", "cpu", "unknown config flag 'cpu'; flags: tiny; use configs/fomm_vox.py"),
    "demo: two models": ("demo", "vrnn,grunf", "takes one model name"),
    "demo: unknown word": ("demo", "nosuch", "configs/demo.py also takes a model: gru, vae"),
    "demo: malformed horizon": ("demo", "horizon=6x6", "must look like N-M"),
}


@pytest.mark.parametrize("case", BAD_ARGS)
def test_bad_argument_is_a_one_line_value_error(case):
    stem, arg, expected = BAD_ARGS[case]
    with pytest.raises(ValueError, match=re.escape(expected)) as e:
        load(stem).get_config(arg)
    assert "\n" not in str(e.value)


def test_parse_arg_types_options_like_their_defaults():
    opts = common.parse_arg(" cpu , horizon=12-12,seed=3", cpu=False, tiny=False, horizon="6-6", seed=0)
    assert opts.to_dict() == {"cpu": True, "tiny": False, "horizon": "12-12", "seed": 3}
    assert common.parse_arg(None, cpu=False, horizon="6-6").to_dict() == {"cpu": False, "horizon": "6-6"}
    with pytest.raises(ValueError, match="config option seed='x': expected a int"):
        common.parse_arg("seed=x", seed=0)
    with pytest.raises(ValueError, match="unknown config option 'cpu'"):  # a flag is a bare word
        common.parse_arg("cpu=1", cpu=False, horizon="6-6")


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("variant", ["", "cpu"])
def test_a_model_has_the_same_settings_on_every_dataset(model, variant):
    # The files repeat the model so that each reads on its own; this keeps the copies equal.
    configs = [load(f"{model}_{d}").get_config(variant) for d in DATASETS]
    for c in configs[1:]:
        assert c.model == configs[0].model
        assert c.train == configs[0].train
        assert tuple(c.data.augment) == tuple(configs[0].data.augment)


@pytest.mark.parametrize("variant", ["", "tiny"])
def test_fomm_configs_share_all_but_the_official_dataset_settings(variant):
    vox, mgif, bair = (fomm_common.fomm_config(d, variant) for d in DATASETS)
    assert vox == load("fomm_vox").get_config(variant)
    # Per dataset, as in the reference's yaml files: mgif's single Jacobian map; the schedule and GAN weight.
    assert mgif.model.kp_detector.single_jacobian_map and not vox.model.kp_detector.single_jacobian_map
    mgif.model.kp_detector.single_jacobian_map = False
    assert vox.model == mgif.model == bair.model
    per_dataset = {"num_epochs", "num_repeats", "epoch_milestones", "batch_size", "checkpoint_freq"}
    if variant == "tiny":
        per_dataset = set()
    for other in (mgif, bair):
        for key in set(vox.train) - per_dataset - {"loss_weights"}:
            assert vox.train[key] == other.train[key], key
        assert {k: v for k, v in vox.train.loss_weights.items() if k != "generator_gan"} == {
            k: v for k, v in other.train.loss_weights.items() if k != "generator_gan"
        }
    with pytest.raises(ValueError, match="unknown FOMM dataset 'kitti'"):
        fomm_common.fomm_config("kitti")


# What the demo may shrink: sizes, never a setting that changes what the model does.
SIZES = {"hidden", "latent", "prior_hidden", "posterior_hidden", "decoder_hidden", "num_layers", "num_blocks",
         "context_hidden", "num_gru_layers", "flow_hidden", "flow_layers"}


@pytest.mark.parametrize("horizon", ["6-6", "12-12"])
def test_demo_vrnn_is_the_cpu_vrnn(horizon):
    """The drift check: every setting of the :cpu VRNN but its sizes reaches the demo."""
    cpu = load("vrnn_vox").get_config(f"cpu,horizon={horizon}").model
    demo_model = demo.get_config(f"vrnn,horizon={horizon}").model
    assert set(demo_model) == set(cpu)
    assert {k: v for k, v in demo_model.items() if k not in SIZES} == {k: v for k, v in cpu.items() if k not in SIZES}
    assert tuple(demo_model.latent_temperature) == (0.4, 0.8, 1.2) and demo_model.mirror_samples
    if horizon == "6-6":  # the demo's default model and horizon
        assert demo.get_config(None).model == demo_model


@pytest.mark.parametrize("model", MODELS)
def test_demo_is_the_cpu_config_shrunk(model):
    cpu = load(f"{model}_vox").get_config("cpu")
    config = demo.get_config(model)
    narrower = demo.NARROWER[model]
    assert set(narrower) <= set(cpu.model) & SIZES
    assert all(v <= cpu.model[k] for k, v in narrower.items())
    assert {k: v for k, v in config.model.items() if k not in narrower} == {
        k: v for k, v in cpu.model.items() if k not in narrower
    }
    assert tuple(config.data.augment) == tuple(cpu.data.augment)
    for key in ("learning_rate", "weight_decay", "clip_norm", "select_metric", "seed"):
        assert config.train[key] == cpu.train[key], key
    assert (config.dataset, config.data.kind, config.variant) == ("synthetic", "synthetic", "demo")
    # The demo's schedule is shorter than the :cpu one.
    assert config.train.num_epochs * config.train.steps_per_epoch < cpu.train.num_epochs * cpu.train.steps_per_epoch
