"""Stage-1 training of FOMM (keypoint detector + dense motion + generator [+ discriminator]), as a
library: ``python -m train.fomm`` is :func:`train_and_evaluate` behind flags.

Reconstruction training as in the reference ``train.py``: source and driving are two frames of one
video; losses are the multi-scale perceptual loss on VGG19 features (or the labelled pixel-pyramid
L1 substitute), equivariance of keypoint values and Jacobians under random thin-plate-spline warps,
and, when ``loss_weights.generator_gan`` is non-zero, a least-squares GAN with feature matching (the
discriminator is trained only then, as in the reference). Adam (b1 0.5) with the official
milestone schedule (x0.1 at each of ``epoch_milestones``).

The workdir holds ``config.json``, orbax ``checkpoints/`` (resume by training again) and
``best/`` (lowest test reconstruction L1), and the run log (:mod:`kpflow.training.runlog`):
``metrics.jsonl``, ``curves.png`` and ``samples/`` PNGs (source | driving with keypoints |
prediction | occlusion map). ``kpflow.fomm.load(workdir)`` loads the result.
"""

from __future__ import annotations

import json
import math
import os
import time
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from kpflow import parallel
from kpflow.data import loaders
from kpflow.data.video_augment import Augmentation
from kpflow.data.video_pairs import PairBatches, VideoFolder, VideoSet
from kpflow.fomm import losses
from kpflow.fomm.model import Networks, build_networks, init_variables, load_config, save_config
from kpflow.fomm.ops import resize_bilinear
from kpflow.progress import progress
from kpflow.run_store import BEST_STEP_KEY, CheckpointStore
from kpflow.training import checks, runlog
from kpflow.training.checks import (
    COUNT,
    COUNT_OR_ZERO,
    FLAG,
    LIST,
    NON_NEGATIVE,
    POSITIVE,
    SCALE,
    Rule,
)
from kpflow.workdir import run_lock

CURVES_FILE = "curves.png"
SAMPLES_DIR = "samples"
PERCEPTUAL_CHOICES = ("vgg19", "pixel_l1")
# config.data.kind: a FOMM-layout folder of videos, or a prepared TFDS dataset (kpflow.data.tfds).
DATA_KINDS = ("folder", "tfds")
TRAIN_HINT = "train with `python -m train.fomm --config configs/fomm_vox.py:tiny --workdir DIR`"
# Batches decoded and augmented ahead of the jitted step, in a background thread.
# Pairs shown in a samples/ grid.
SAMPLE_ROWS = 4
# Every numeric field of a FOMM config and its allowed values (kpflow.training.checks), checked by
# validate_config after the command-line overrides; all must be present.
CONFIG_FIELDS = {
    "seed": COUNT_OR_ZERO,
    **dict.fromkeys(("train.lr_generator", "train.lr_discriminator", "train.lr_kp_detector"), POSITIVE),
    **dict.fromkeys(("train.adam_b1", "train.adam_b2"), Rule(float, 0, 1, high_open=True)),
    "train.scales": Rule(float, 0, 1, low_open=True, form=LIST),  # image pyramid resolutions
    **dict.fromkeys(("train.batch_size", "train.num_epochs", "train.num_repeats", "train.checkpoint_freq",
                     "train.keep_checkpoints", "train.log_every", "train.eval_frames"), COUNT),
    "train.epoch_milestones": Rule(int, 0, form=LIST, may_be_empty=True),
    # 0: never (image_every), once per epoch (eval_every), no evaluation (eval_clips), no limit.
    **dict.fromkeys(("train.image_every", "train.eval_every", "train.eval_clips", "train.max_steps"), COUNT_OR_ZERO),
    "train.max_minutes": NON_NEGATIVE,
    "train.transform.sigma_affine": NON_NEGATIVE,
    "train.transform.sigma_tps": NON_NEGATIVE,
    "train.transform.points_tps": COUNT,
    **dict.fromkeys(("train.loss_weights.generator_gan", "train.loss_weights.discriminator_gan",
                     "train.loss_weights.equivariance_value", "train.loss_weights.equivariance_jacobian"), NON_NEGATIVE),
    **dict.fromkeys(("train.loss_weights.feature_matching", "train.loss_weights.perceptual"), Rule(float, 0, form=LIST)),
    "data.frame_shape": Rule(int, 1, form=LIST),
    "data.id_sampling": FLAG,
    "data.cache": FLAG,
}
# The networks' hyper-parameters (config.model, the reference's model_params), checked when present.
MODEL_FIELDS = {
    "common.num_kp": COUNT,
    "common.num_channels": COUNT,
    "common.estimate_jacobian": FLAG,
    "kp_detector.temperature": POSITIVE,
    "kp_detector.scale_factor": SCALE,
    "kp_detector.pad": COUNT_OR_ZERO,
    "kp_detector.single_jacobian_map": FLAG,
    "generator.num_down_blocks": COUNT_OR_ZERO,
    "generator.num_bottleneck_blocks": COUNT_OR_ZERO,
    "generator.estimate_occlusion_map": FLAG,
    "generator.dense_motion_params.scale_factor": SCALE,
    "discriminator.scales": Rule(float, 0, 1, low_open=True, form=LIST),
    "discriminator.sn": FLAG,
    "discriminator.kp_variance": POSITIVE,
    "discriminator.use_kp": FLAG,
    **{f"{net}.{size}": COUNT
       for net in ("kp_detector", "generator", "generator.dense_motion_params", "discriminator")
       for size in ("block_expansion", "max_features", "num_blocks")
       if (net, size) != ("generator", "num_blocks")},
}


@flax.struct.dataclass
class TrainState:
    """Everything a step changes: parameters, batch statistics, optimizer states, step, rng."""

    step: jax.Array
    params: dict  # {"kp_detector", "generator", "discriminator"}
    batch_stats: dict  # same keys
    opt_gen: Any  # optimizer of kp_detector + generator
    opt_disc: Any
    rng: jax.Array


def variables_of(state: TrainState) -> dict:
    """The Flax variables ``{"kp_detector": {"params", "batch_stats"}, ...}`` of a state."""
    out = {}
    for name, params in state.params.items():
        v = {"params": params}
        if state.batch_stats.get(name):
            v["batch_stats"] = state.batch_stats[name]
        out[name] = v
    return out


def milestone_schedule(lr: float, milestones_steps: list[int]) -> optax.Schedule:
    """``lr`` multiplied by 0.1 at each milestone (``torch.optim.lr_scheduler.MultiStepLR``)."""
    return optax.piecewise_constant_schedule(lr, {int(s): 0.1 for s in milestones_steps if s > 0})


def make_optimizers(config, steps_per_epoch: int) -> tuple[optax.GradientTransformation, optax.GradientTransformation]:
    t = config.train
    milestones = [m * steps_per_epoch for m in t.epoch_milestones]

    def adam(lr):
        return optax.adam(milestone_schedule(lr, milestones), b1=t.adam_b1, b2=t.adam_b2)

    gen = optax.multi_transform(
        {"kp_detector": adam(t.lr_kp_detector), "generator": adam(t.lr_generator)},
        {"kp_detector": "kp_detector", "generator": "generator"},
    )
    return gen, adam(t.lr_discriminator)


def create_train_state(nets: Networks, config, rng: jax.Array, opt_gen, opt_disc) -> TrainState:
    """Freshly initialised networks and optimizer states; ``rng`` seeds both and the training stream."""
    init_rng, rng = jax.random.split(rng)
    variables = init_variables(nets, init_rng, config.data.frame_shape)
    params = {k: v["params"] for k, v in variables.items()}
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        batch_stats={k: v.get("batch_stats", {}) for k, v in variables.items()},
        opt_gen=opt_gen.init({"kp_detector": params["kp_detector"], "generator": params["generator"]}),
        opt_disc=opt_disc.init(params["discriminator"]),
        rng=rng,
    )


def validate_config(config) -> None:
    """One-line ValueErrors for configs that cannot train: not a FOMM config, a field of
    :data:`CONFIG_FIELDS` (or of :data:`MODEL_FIELDS`, when present) missing, of the wrong type or
    out of range, a perceptual loss without its weights or too small for VGG19, no data folder."""
    if not isinstance(config, ml_collections.ConfigDict) or "model" not in config:
        raise ValueError("--config is not a FOMM config (no model section); use configs/fomm_<dataset>.py")
    checks.check_fields(config, CONFIG_FIELDS)
    checks.check_fields(config, checks.DATA_PIPELINE_FIELDS, required=False)
    checks.check_fields(config.model, MODEL_FIELDS, "model.", required=False)
    t = config.train
    if t.perceptual not in PERCEPTUAL_CHOICES:
        raise ValueError(f"train.perceptual must be one of {PERCEPTUAL_CHOICES}, got {t.perceptual!r}")
    if t.perceptual == "vgg19" and not t.vgg19_weights:
        raise ValueError(
            "this config trains with the paper's VGG19 perceptual loss, which needs torchvision's VGG19 weights: "
            "pass --config.train.vgg19_weights=PATH (vgg19-dcbb9e9d.pth or .npz), or select the labelled "
            "substitute with --config.train.perceptual=pixel_l1"
        )
    if t.perceptual == "vgg19" and min(config.data.frame_shape[:2]) * min(t.scales) < losses.VGG19_MIN_SIZE:
        raise ValueError(
            f"VGG19 needs at least {losses.VGG19_MIN_SIZE} px at every pyramid scale; frame "
            f"{config.data.frame_shape[:2]} x scale {min(t.scales)} is smaller: drop small train.scales"
        )
    if config.data.get("kind", "folder") == "folder" and not config.data.dir:
        raise ValueError("config.data.dir is empty: point it at a FOMM video folder (root/{train,test}/)")


# -- the loss --------------------------------------------------------------------------------------


def generator_losses(nets: Networks, config, params, batch_stats, batch, rng, vgg_apply):
    """FOMM's ``GeneratorFullModel``: ``(total, (loss dict, new batch_stats, generated))``."""
    t = config.train
    w = t.loss_weights
    scales = tuple(t.scales)
    stats = dict(batch_stats)

    def detect(frames):
        v = {"params": params["kp_detector"], "batch_stats": stats["kp_detector"]}
        kp, upd = nets.kp_detector.apply(v, frames, train=True, mutable=["batch_stats"])
        stats["kp_detector"] = upd["batch_stats"]
        return kp

    kp_source = detect(batch["source"])
    kp_driving = detect(batch["driving"])
    gv = {"params": params["generator"], "batch_stats": stats["generator"]}
    generated, upd = nets.generator.apply(gv, batch["source"], kp_source, kp_driving, train=True, mutable=["batch_stats"])
    stats["generator"] = upd["batch_stats"]

    pyramid_real = losses.image_pyramid(batch["driving"], scales)
    pyramid_gen = losses.image_pyramid(generated["prediction"], scales)
    terms = {}
    if t.perceptual == "vgg19":
        terms["perceptual"] = losses.perceptual_loss(vgg_apply, pyramid_gen, pyramid_real, scales, tuple(w.perceptual))
    else:
        terms["pixel_l1"] = losses.pixel_pyramid_l1(pyramid_gen, pyramid_real, scales, float(w.perceptual[0]))

    if w.generator_gan != 0:
        kp_detached = jax.tree.map(jax.lax.stop_gradient, kp_driving)
        dv = {"params": params["discriminator"], "batch_stats": stats.get("discriminator", {})}
        disc_gen = nets.discriminator.apply(dv, pyramid_gen, kp_detached)
        disc_real = nets.discriminator.apply(dv, pyramid_real, kp_detached)
        disc_scales = nets.discriminator.scales
        terms["gen_gan"] = losses.generator_gan_loss(disc_gen, disc_scales, float(w.generator_gan))
        if sum(w.feature_matching) != 0:
            terms["feature_matching"] = losses.feature_matching_loss(
                disc_real, disc_gen, disc_scales, tuple(w.feature_matching)
            )

    if w.equivariance_value + w.equivariance_jacobian != 0:
        tp = t.transform
        transform = losses.Transform.random(
            rng, batch["driving"].shape[0], tp.sigma_affine, tp.sigma_tps, tp.points_tps
        )
        kp_transformed = detect(transform.transform_frame(batch["driving"]))
        value_loss, jacobian_loss = losses.equivariance_losses(kp_driving, kp_transformed, transform)
        if w.equivariance_value != 0:
            terms["equivariance_value"] = w.equivariance_value * value_loss
        if w.equivariance_jacobian != 0 and kp_driving.jacobian is not None:
            terms["equivariance_jacobian"] = w.equivariance_jacobian * jacobian_loss

    total = sum(terms.values())
    generated = dict(generated, kp_source=kp_source, kp_driving=kp_driving)
    return total, (terms, stats, generated)


def make_train_step(nets: Networks, config, opt_gen, opt_disc, vgg_apply):
    """The jitted step: generator update, then (if the GAN is on) a discriminator update."""
    w = config.train.loss_weights
    train_disc = w.generator_gan != 0

    def step(state: TrainState, batch):
        rng, step_rng = jax.random.split(state.rng)
        gen_params = {"kp_detector": state.params["kp_detector"], "generator": state.params["generator"]}

        def loss_fn(p):
            return generator_losses(nets, config, {**state.params, **p}, state.batch_stats, batch, step_rng, vgg_apply)

        (total, (terms, stats, generated)), grads = jax.value_and_grad(loss_fn, has_aux=True)(gen_params)
        updates, opt_gen_state = opt_gen.update(grads, state.opt_gen, gen_params)
        gen_params = optax.apply_updates(gen_params, updates)
        params = {**state.params, **gen_params}
        opt_disc_state = state.opt_disc
        metrics = dict(terms, total=total)

        if train_disc:
            scales = tuple(config.train.scales)
            pyramid_real = losses.image_pyramid(batch["driving"], scales)
            pyramid_gen = losses.image_pyramid(jax.lax.stop_gradient(generated["prediction"]), scales)
            kp = jax.tree.map(jax.lax.stop_gradient, generated["kp_driving"])

            def disc_loss(dp):
                dv = {"params": dp, "batch_stats": stats["discriminator"]}
                real, upd = nets.discriminator.apply(dv, pyramid_real, kp, train=True, mutable=["batch_stats"])
                dv = {"params": dp, "batch_stats": upd["batch_stats"]}
                gen, upd = nets.discriminator.apply(dv, pyramid_gen, kp, train=True, mutable=["batch_stats"])
                loss = losses.discriminator_gan_loss(real, gen, nets.discriminator.scales, float(w.discriminator_gan))
                return loss, upd["batch_stats"]

            (d_loss, d_stats), d_grads = jax.value_and_grad(disc_loss, has_aux=True)(params["discriminator"])
            d_updates, opt_disc_state = opt_disc.update(d_grads, state.opt_disc, params["discriminator"])
            params = {**params, "discriminator": optax.apply_updates(params["discriminator"], d_updates)}
            stats = {**stats, "discriminator": d_stats}
            metrics["disc_gan"] = d_loss

        new_state = TrainState(
            step=state.step + 1, params=params, batch_stats=stats, opt_gen=opt_gen_state, opt_disc=opt_disc_state, rng=rng
        )
        visuals = {
            "prediction": generated["prediction"],
            "occlusion_map": generated.get("occlusion_map"),
            "kp_driving": generated["kp_driving"].value,
            "kp_source": generated["kp_source"].value,
        }
        return new_state, metrics, visuals

    return jax.jit(step, donate_argnums=(0,))


def make_reconstruct(nets: Networks):
    """Jitted eval-mode reconstruction: ``(variables, source [B,H,W,3], driving [B,H,W,3]) -> prediction``."""

    def reconstruct(variables, source, driving):
        kp_source = nets.kp_detector.apply(variables["kp_detector"], source)
        kp_driving = nets.kp_detector.apply(variables["kp_detector"], driving)
        return nets.generator.apply(variables["generator"], source, kp_source, kp_driving)["prediction"]

    return jax.jit(reconstruct)


def copy_source_l1(clips: list[np.ndarray]) -> float:
    """The same L1 when every frame is predicted as the clip's first (no motion at all): the bar a
    model must pass to have learned motion rather than only the appearance of the source."""
    total = sum(float(np.abs(frames - frames[:1]).mean()) * len(frames) for frames in clips)
    return total / max(sum(len(frames) for frames in clips), 1)


def reconstruction_l1(reconstruct, variables, clips: list[np.ndarray], batch_size: int) -> float:
    """Mean |prediction - driving| over ``clips`` (each ``[T, H, W, 3]``), source = each clip's first
    frame: FOMM's reconstruction protocol. Batches are padded to ``batch_size`` (one compilation)."""
    errors, count = 0.0, 0
    for frames in clips:
        for start in range(0, len(frames), batch_size):
            driving = frames[start : start + batch_size]
            n = len(driving)
            pad = np.concatenate([driving, np.repeat(driving[-1:], batch_size - n, axis=0)]) if n < batch_size else driving
            source = np.repeat(frames[:1], batch_size, axis=0)
            pred = np.asarray(reconstruct(variables, source, pad))[:n]
            errors += float(np.abs(pred - driving).mean()) * n
            count += n
    return errors / max(count, 1)


# -- pictures --------------------------------------------------------------------------------------


def sample_grid(batch, visuals, rows: int = SAMPLE_ROWS) -> np.ndarray:
    """Rows of ``source+kp | driving+kp | prediction | occlusion map`` as one ``[H', W', 3]`` uint8 image."""
    source, driving = np.asarray(batch["source"]), np.asarray(batch["driving"])
    pred = np.asarray(visuals["prediction"])
    h, w = source.shape[1:3]
    occ = visuals.get("occlusion_map")
    lines = []
    for i in range(min(rows, len(source))):
        cells = [
            runlog.draw_keypoints(source[i], np.asarray(visuals["kp_source"][i])),
            runlog.draw_keypoints(driving[i], np.asarray(visuals["kp_driving"][i])),
            pred[i],
        ]
        if occ is not None:
            o = np.asarray(resize_bilinear(jnp.asarray(occ[i : i + 1]), h, w))[0]
            cells.append(np.repeat(o, 3, axis=-1))
        lines.append(cells)
    return runlog.image_grid(lines)


def reconstruction_summary(workdir: str) -> str:
    """One line on a FOMM run's last test evaluation (``metrics.jsonl``) against copying the source
    frame, e.g. ``... mean absolute error 0.0332 vs 0.0518 copying the source frame -> FOMM 36% lower
    (better)``; a one-line ValueError when the run holds no test evaluation."""
    records = runlog.read_records(os.path.join(workdir, runlog.METRICS_FILE))
    evals = [r for r in records if r.get("kind") == "eval" and r.get("copy_source_l1") is not None]
    if not evals:
        raise ValueError(f"{workdir}: no test evaluation in {runlog.METRICS_FILE} (train with test/ clips)")
    last = evals[-1]
    fomm, copy = float(last["test_l1"]), float(last["copy_source_l1"])
    what = ""
    config_path = os.path.join(workdir, "config.json")
    if os.path.isfile(config_path):
        with open(config_path) as f:
            t = json.load(f).get("train", {})
        what = f"first {t.get('eval_frames')} frames of up to {t.get('eval_clips')} test clips, "
    change = (copy - fomm) / copy * 100 if copy > 0 else 0.0
    verdict = (f"FOMM {change:.0f}% lower (better)" if fomm < copy
               else f"FOMM {-change:.0f}% higher (worse: it has not learned the motion)")
    return (f"FOMM test reconstruction ({what}source = first frame), step {last['step']}: mean absolute "
            f"error {fomm:.4f} vs {copy:.4f} copying the source frame -> {verdict}")


def plot_curves(records: list[dict], path: str) -> None:
    """``curves.png``: the weighted training losses, and the test reconstruction L1 beside copying the source."""
    train = [r for r in records if r.get("kind") == "train"]
    evals = [r for r in records if r.get("kind") == "eval"]
    keys = sorted({k for r in train for k in r["losses"]})
    steps = [r["step"] for r in train]
    loss_lines = [runlog.Line(k, steps, [r["losses"].get(k, math.nan) for r in train]) for k in keys]
    copied = evals[-1].get("copy_source_l1") if evals else None
    runlog.plot_panels([
        runlog.Panel("training losses (weighted)", loss_lines, log_y=bool(loss_lines)),
        runlog.Panel(
            "reconstruction L1 on test/ (source = first frame)",
            [runlog.Line("FOMM", [r["step"] for r in evals], [r["test_l1"] for r in evals], style="o-")] if evals else [],
            hline=(copied, "source copied (no motion)") if copied is not None else None,
        ),
    ], path, panel_size=(5.5, 4.0))


# -- data ------------------------------------------------------------------------------------------


def load_data(config):
    """-> ``(train VideoSet, test VideoSet or None, Augmentation)`` of ``config.data``: a FOMM-layout
    folder (``kind='folder'``, ``dir``) or a prepared TFDS dataset (``kind='tfds'``, ``tfds_name``,
    ``tfds_data_dir``: ``kpflow_videos/<size>`` or TFDS's ``bair_robot_pushing_small``)."""
    d = config.data
    augment = Augmentation(d.augmentation.to_dict() if hasattr(d.augmentation, "to_dict") else d.augmentation)
    kind = d.get("kind", "folder")
    if kind == "tfds":
        return (*_tfds_videos(d), augment)
    if kind != "folder":
        raise ValueError(f"config.data.kind must be one of {DATA_KINDS}, got {kind!r}")
    frame_shape = tuple(d.frame_shape)
    train = VideoFolder(d.dir, "train", frame_shape=frame_shape, id_sampling=d.id_sampling, cache=d.cache)
    try:
        test = VideoFolder(d.dir, "test", frame_shape=frame_shape, id_sampling=False, cache=d.cache)
    except (FileNotFoundError, ValueError):
        test = None
    # Decode every clip now (kept when d.cache): an unreadable one is dropped and reported (one line
    # each, and a count here, before training), and the input pipeline never meets one.
    for folder in (train, test):
        if folder is not None:
            folder.drop_unreadable(progress=lambda it, f=folder: progress(  # shown after 1 s, not for a failure
                it, total=f.num_videos, desc=f"decoding {f.folder}", leave=False, delay=1))
    skipped = train.skipped + (test.skipped if test is not None else [])
    if skipped and parallel.is_main_process():
        print(f"skipping {len(skipped)} unreadable videos of {d.dir} (listed above); training without them")
    return train, test, augment


def _tfds_videos(d) -> tuple[VideoSet, VideoSet | None]:
    """The train and test splits (None when absent) of the TFDS dataset ``d.tfds_name``."""
    from kpflow.data import tfds as kp_tfds

    if not d.get("tfds_name") or not d.get("tfds_data_dir"):
        raise ValueError("config.data.kind='tfds' needs --config.data.tfds_name and --config.data.tfds_data_dir "
                         "(prepare one with `python -m kpflow.data.prepare --kind videos --src DIR --data_dir OUT`)")
    name = d.tfds_name if "/" in d.tfds_name else f"{d.tfds_name}/{d.frame_shape[0]}"
    videos = kp_tfds.TfdsVideos
    if d.tfds_name.split("/")[0] == kp_tfds.BAIR_NAME:
        name, videos = d.tfds_name, kp_tfds.BairVideos
    train = videos(name, d.tfds_data_dir, "train", id_sampling=d.id_sampling)
    try:
        test = videos(name, d.tfds_data_dir, "test")
    except (FileNotFoundError, ValueError):
        test = None
    want = tuple(d.frame_shape[:2])
    if train.frame_shape != want:
        raise ValueError(f"{train.description} holds {train.frame_shape[0]}x{train.frame_shape[1]} frames but "
                         f"config.data.frame_shape is {want}: prepare the dataset at that size (--frame_size) "
                         "or set --config.data.frame_shape")
    return train, test


def _loader(batches: PairBatches, total_steps: int, meta: dict, step: int, worker_count: int,
            workdir: str) -> loaders.Loader:
    """The run's batches from ``step`` on, at the position a checkpoint's ``meta`` saved (one from
    before the pipeline kept it starts at ``step``); a one-line ValueError when the two disagree."""
    source = loaders.PairBatchSource(batches, max(total_steps, step), jax.process_index(), jax.process_count())
    state = meta.get(loaders.STATE_KEY) or {"start": step, "next_batch": step}
    if int(state.get("next_batch", -1)) != step:
        raise ValueError(f"{workdir}: the checkpoint of step {step} saved the input pipeline at batch "
                         f"{state.get('next_batch')}; was it written by another config? train in a new workdir")
    return loaders.Loader.resume(source, state, worker_count=int(worker_count))


def eval_clips(test: VideoSet | None, config) -> list[np.ndarray]:
    """The first ``train.eval_frames`` frames of the first ``train.eval_clips`` test videos."""
    if test is None:
        return []
    t = config.train
    clips = []
    for i in range(min(t.eval_clips, test.num_videos)):
        _, frames = test.video(i)
        clips.append(np.asarray(frames[: t.eval_frames], np.float32))
    return clips


# -- the loop --------------------------------------------------------------------------------------


def train_and_evaluate(config, workdir: str) -> dict:
    """Train (resuming from ``workdir`` if it holds a run); returns the last evaluation record.

    Raises one-line ValueError / OSError for a config or data a user can fix, and
    :class:`~kpflow.training.runlog.TrainingDiverged` when the loss stops being finite or runs away
    (above :data:`~kpflow.training.checks.LOSS_DIVERGENCE_FACTOR` times its first logged value); the
    checkpoints saved before stay. Holds ``workdir``'s lock throughout
    (:func:`kpflow.workdir.run_lock`): a second run on it is refused with one line (an OSError).
    """
    with run_lock(workdir):
        return _train_locked(config, workdir)


def _train_locked(config, workdir: str) -> dict:
    """:func:`train_and_evaluate` while holding the workdir's lock."""
    if not workdir:
        raise ValueError("--workdir is required: the folder for checkpoints, metrics and samples")
    validate_config(config)
    train_set, test_set, augment = load_data(config)
    os.makedirs(workdir, exist_ok=True)
    if os.path.isfile(os.path.join(workdir, "config.json")):
        runlog.check_same_run(load_config(workdir), config, workdir)
    main_process = parallel.is_main_process()
    if main_process:
        save_config(workdir, config)

    t = config.train
    mesh = parallel.make_mesh()
    parallel.check_batch_size(t.batch_size, mesh)
    batches = PairBatches(train_set, t.batch_size, t.num_repeats, seed=config.seed, augment=augment)
    steps_per_epoch = batches.steps_per_epoch
    total_steps = steps_per_epoch * t.num_epochs
    if t.max_steps:
        total_steps = min(total_steps, int(t.max_steps))
    milestones = [x * steps_per_epoch for x in t.epoch_milestones]

    nets = build_networks(config.model)
    vgg_apply = None
    if t.perceptual == "vgg19":
        vgg_apply = losses.make_vgg_apply(losses.load_vgg19(t.vgg19_weights))
    opt_gen, opt_disc = make_optimizers(config, steps_per_epoch)
    state = create_train_state(nets, config, jax.random.key(config.seed), opt_gen, opt_disc)

    store = CheckpointStore(workdir, keep=t.keep_checkpoints, hint=TRAIN_HINT)
    best = {"l1": math.inf, "step": None}
    resumed_step, meta = None, {}
    if store.latest_step() is not None:
        restored_vars, train_part, meta = store.restore(
            "latest", variables_of(state), {"opt_gen": state.opt_gen, "opt_disc": state.opt_disc, "rng": state.rng}
        )
        state = TrainState(
            step=jnp.asarray(meta["step"], jnp.int32),
            params={k: v["params"] for k, v in restored_vars.items()},
            batch_stats={k: v.get("batch_stats", {}) for k, v in restored_vars.items()},
            opt_gen=train_part["opt_gen"],
            opt_disc=train_part["opt_disc"],
            rng=train_part["rng"],
        )
        resumed_step = int(meta["step"])
        best = {"l1": meta.get("best_test_l1", math.inf), "step": meta.get(BEST_STEP_KEY)}
        if main_process:
            print(f"resuming {workdir} at step {resumed_step}")
    log = runlog.MetricsLog(workdir, resumed_step, write=main_process)
    state = parallel.replicate(state, mesh)
    loader = _loader(batches, total_steps, meta, int(state.step), config.data.get("worker_count", 0), workdir)

    train_step = make_train_step(nets, config, opt_gen, opt_disc, vgg_apply)
    reconstruct = make_reconstruct(nets)
    clips = eval_clips(test_set, config)
    copy_l1 = copy_source_l1(clips) if clips else None
    eval_every = int(t.eval_every) or steps_per_epoch
    curves_path = os.path.join(workdir, CURVES_FILE)
    hint = (f"lower --config.train.lr_generator and --config.train.lr_kp_detector (now {t.lr_generator:g}, "
            f"{t.lr_kp_detector:g}); the checkpoints saved before it stay in {workdir}")
    metrics = None  # the last step's losses (device arrays)

    def check_diverged(step: int) -> dict | None:
        """The last step's losses on the host (None before the first step); TrainingDiverged when
        they are not finite or ran away from the run's first logged ones. Called at each log line
        and before each save, so no diverged state is saved."""
        if metrics is None:
            return None
        m = {k: float(v) for k, v in jax.device_get(metrics).items()}
        first = next((r["losses"]["total"] for r in log.records if r["kind"] == "train"), None)
        try:
            runlog.check_finite(m["total"], f"at step {step} (losses {m})", hint)
            if first is not None:
                checks.check_loss_ratio(m["total"], first, f"at step {step}", hint)
        except runlog.TrainingDiverged:
            store.close()  # waits for the asynchronous saves of the good checkpoints before it
            raise
        return m

    def save(step: int, is_best: bool = False) -> None:
        check_diverged(step)
        meta = {"step": step, "epoch": step / steps_per_epoch, "best_test_l1": best["l1"], BEST_STEP_KEY: best["step"],
                loaders.STATE_KEY: loader.state()}
        store.save(step, variables_of(state), {"opt_gen": state.opt_gen, "opt_disc": state.opt_disc, "rng": state.rng},
                   meta, is_best=is_best)

    def evaluate(step: int) -> dict | None:
        """Score, checkpoint and log the state at ``step``; None without test clips."""
        if not clips:
            return None
        l1 = reconstruction_l1(reconstruct, variables_of(state), clips, t.batch_size)
        is_best = l1 < best["l1"]
        if is_best:
            best.update(l1=l1, step=step)
        save(step, is_best)
        record = {"kind": "eval", "step": step, "epoch": step / steps_per_epoch, "test_l1": l1,
                  "copy_source_l1": copy_l1, "minutes": (time.time() - start) / 60}
        log.append(record)
        return record

    def save_samples(step: int, host_batch, visuals) -> None:
        grid = sample_grid(host_batch, jax.device_get(visuals))
        runlog.save_image(os.path.join(workdir, SAMPLES_DIR, f"step_{step:07d}.png"), grid)

    step = int(state.step)
    start = time.time()
    # The last evaluation: a resumed run's at its restored step counts (a finished run does not redo it).
    last = next((r for r in reversed(log.records) if r["kind"] == "eval" and r["step"] == step), None)
    if step == 0 and last is None:  # a run killed before step 1 has logged step 0's already
        last = evaluate(0)
    host_batch = visuals = None  # the last trained batch and its pictures, for the final samples grid
    bar = progress(total=total_steps, initial=step, desc="fomm", unit="step", disable=not main_process)
    stop_reason = "schedule done"
    try:
        while step < total_steps:
            host_batch = next(loader)
            state, metrics, visuals = train_step(state, parallel.shard_batch(host_batch, mesh))
            step += 1
            bar.update(1)
            if step % t.log_every == 0 or step == total_steps:
                m = check_diverged(step)
                bar.set_postfix({k: f"{v:.3g}" for k, v in m.items() if k in ("total", "pixel_l1", "perceptual")})
                log.append({"kind": "train", "step": step, "epoch": step / steps_per_epoch, "losses": m,
                            "lr": float(milestone_schedule(t.lr_generator, milestones)(step))})
            if t.image_every and step % t.image_every == 0 and main_process:
                save_samples(step, host_batch, visuals)
            if step % eval_every == 0:
                last = evaluate(step) or last
                if main_process and last:
                    plot_curves(log.records, curves_path)
            elif step % steps_per_epoch == 0 and (step // steps_per_epoch) % t.checkpoint_freq == 0:
                save(step)
            if t.max_minutes and (time.time() - start) / 60 >= t.max_minutes:
                stop_reason = f"time budget of {t.max_minutes:g} min reached"
                break
    finally:
        bar.close()
    if not last or last["step"] != step:
        last = evaluate(step) or last
        if not clips:
            save(step)
    store.close()
    if main_process:
        plot_curves(log.records, curves_path)
        if t.image_every and visuals is not None:
            save_samples(step, host_batch, visuals)
        first = next((r for r in log.records if r["kind"] == "eval"), None)
        summary = f"stopped at step {step} ({stop_reason}) after {(time.time() - start) / 60:.1f} min"
        if first and last:
            summary += f"; test reconstruction L1 {first['test_l1']:.4f} at step {first['step']} -> {last['test_l1']:.4f}"
            summary += f" (source copied: {copy_l1:.4f})"
        print(summary)
    # Only a folder drops unreadable videos; a prepared dataset was checked when it was prepared.
    skipped = [str(p) for f in (train_set, test_set) if f is not None for p, _ in getattr(f, "skipped", [])]
    return {**(last or {}), "skipped_videos": skipped} if skipped else (last or {})
