"""Stage-1 training of FOMM (keypoint detector + dense motion + generator [+ discriminator]).

    python -m train.fomm --config configs/fomm_vox.py --workdir runs/fomm_vox \
        --config.data.dir=data/vox --config.train.vgg19_weights=vgg19-dcbb9e9d.pth
    python -m train.fomm --config configs/fomm_vox.py:tiny --workdir runs/fomm_tiny \
        --config.data.dir=../shared/data/vox_videos

Reconstruction training as in the reference ``train.py``: source and driving are two frames of one
video; losses are the multi-scale perceptual loss on VGG19 features (or the labelled pixel-pyramid
L1 substitute), equivariance of keypoint values and Jacobians under random thin-plate-spline warps,
and, when ``loss_weights.generator_gan`` is non-zero, a least-squares GAN with feature matching (the
discriminator is trained only then, as in the reference). Adam (b1 0.5) with the official
milestone schedule (x0.1 at each of ``epoch_milestones``).

The workdir holds ``config.json``, orbax ``checkpoints/`` (resume by re-running the command) and
``best/`` (lowest test reconstruction L1), ``metrics.jsonl``, ``curves.png`` and ``samples/`` PNGs
(source | driving with keypoints | prediction | occlusion map). ``kpflow.fomm.load(workdir)`` loads
the result.
"""

from __future__ import annotations

import json
import os
import queue
import threading
import time
from collections.abc import Iterator
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import app, flags, logging
from ml_collections import config_flags
from tqdm import tqdm

from kpflow import parallel
from kpflow.data.videos import Augmentation, PairBatches, VideoFolder
from kpflow.fomm import losses
from kpflow.fomm.model import Networks, build_networks, init_variables, load_config, save_config
from kpflow.fomm.ops import resize_bilinear
from kpflow.run_store import CheckpointStore
from train.cli import one_line, parse_flags

FLAGS = flags.FLAGS
METRICS_FILE = "metrics.jsonl"
CURVES_FILE = "curves.png"
SAMPLES_DIR = "samples"
PERCEPTUAL_CHOICES = ("vgg19", "pixel_l1")
TRAIN_HINT = "train with `python -m train.fomm --config configs/fomm_vox.py:tiny --workdir DIR`"


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


def validate_config(config) -> None:
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
    if t.batch_size < 1 or t.num_epochs < 1 or t.num_repeats < 1:
        raise ValueError("train.batch_size, train.num_epochs and train.num_repeats must be at least 1")
    if not config.data.dir:
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

_KP_COLOURS = (np.array([[230, 25, 75], [60, 180, 75], [255, 225, 25], [0, 130, 200], [245, 130, 48],
                         [145, 30, 180], [70, 240, 240], [240, 50, 230], [210, 245, 60], [250, 190, 212]]) / 255.0)


def draw_keypoints(image: np.ndarray, value: np.ndarray, radius: int | None = None) -> np.ndarray:
    """``image [H, W, 3]`` with the keypoints ``value [K, 2]`` (in [-1, 1]) drawn as coloured dots."""
    out = np.array(image, copy=True)
    h, w = out.shape[:2]
    radius = radius or max(1, round(min(h, w) / 64))
    yy, xx = np.mgrid[0:h, 0:w]
    for k, (x, y) in enumerate(np.asarray(value)):
        cx, cy = (x + 1) / 2 * (w - 1), (y + 1) / 2 * (h - 1)
        disc = (xx - cx) ** 2 + (yy - cy) ** 2 <= radius**2
        out[disc] = _KP_COLOURS[k % len(_KP_COLOURS)]
    return out


def sample_grid(batch, visuals, rows: int = 4) -> np.ndarray:
    """Rows of ``source+kp | driving+kp | prediction | occlusion map`` as one ``[H', W', 3]`` uint8 image."""
    source, driving = np.asarray(batch["source"]), np.asarray(batch["driving"])
    pred = np.asarray(visuals["prediction"])
    h, w = source.shape[1:3]
    occ = visuals.get("occlusion_map")
    lines = []
    for i in range(min(rows, len(source))):
        cells = [
            draw_keypoints(source[i], np.asarray(visuals["kp_source"][i])),
            draw_keypoints(driving[i], np.asarray(visuals["kp_driving"][i])),
            np.clip(pred[i], 0, 1),
        ]
        if occ is not None:
            o = np.asarray(resize_bilinear(jnp.asarray(occ[i : i + 1]), h, w))[0]
            cells.append(np.repeat(o, 3, axis=-1))
        lines.append(np.concatenate(cells, axis=1))
    grid = (np.concatenate(lines, axis=0) * 255).round().astype(np.uint8)
    zoom = max(1, 128 // h)  # small training frames are hard to see otherwise
    return np.repeat(np.repeat(grid, zoom, axis=0), zoom, axis=1)


def plot_curves(records: list[dict], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = [r for r in records if r.get("kind") == "train"]
    evals = [r for r in records if r.get("kind") == "eval"]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    if train:
        keys = sorted({k for r in train for k in r["losses"]})
        steps = [r["step"] for r in train]
        for k in keys:
            axes[0].plot(steps, [r["losses"].get(k, np.nan) for r in train], label=k)
        axes[0].set_yscale("log")
        axes[0].set_xlabel("step")
        axes[0].set_title("training losses (weighted)")
        axes[0].legend(fontsize=8)
    if evals:
        axes[1].plot([r["step"] for r in evals], [r["test_l1"] for r in evals], "o-", label="FOMM")
        if evals[-1].get("copy_source_l1") is not None:
            axes[1].axhline(evals[-1]["copy_source_l1"], color="gray", ls="--", label="source copied (no motion)")
        axes[1].legend(fontsize=8)
        axes[1].set_xlabel("step")
        axes[1].set_title("reconstruction L1 on test/ (source = first frame)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


# -- data ------------------------------------------------------------------------------------------


def prefetch(iterator: Iterator, size: int = 3) -> Iterator:
    """Run ``iterator`` in a background thread (decoding and augmentation overlap the jitted step)."""
    q: queue.Queue = queue.Queue(maxsize=size)
    done = object()

    def worker():
        try:
            for item in iterator:
                q.put(item)
        except BaseException as exc:  # noqa: BLE001 - re-raised in the consumer
            q.put(exc)
        q.put(done)

    threading.Thread(target=worker, daemon=True).start()
    while True:
        item = q.get()
        if item is done:
            return
        if isinstance(item, BaseException):
            raise item
        yield item


def load_data(config):
    d = config.data
    frame_shape = tuple(d.frame_shape)
    train = VideoFolder(d.dir, "train", frame_shape=frame_shape, id_sampling=d.id_sampling, cache=d.cache)
    try:
        test = VideoFolder(d.dir, "test", frame_shape=frame_shape, id_sampling=False, cache=d.cache)
    except (FileNotFoundError, ValueError):
        test = None
    augment = Augmentation(d.augmentation.to_dict() if hasattr(d.augmentation, "to_dict") else d.augmentation)
    if d.cache:
        # Decode every clip now: fails early on a bad file, and keeps ffmpeg subprocesses out of the
        # training loop's prefetch thread.
        for folder in (train, test):
            if folder is not None:
                for i in tqdm(range(folder.num_videos), desc=f"decoding {folder.folder}", leave=False):
                    folder.video(i)
    return train, test, augment


def eval_clips(test: VideoFolder | None, config) -> list[np.ndarray]:
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
    """Train (resuming from ``workdir`` if it holds a run); returns the last evaluation record."""
    validate_config(config)
    train_set, test_set, augment = load_data(config)
    os.makedirs(workdir, exist_ok=True)
    if os.path.isfile(os.path.join(workdir, "config.json")):
        saved = load_config(workdir)
        if json.loads(saved.model.to_json()) != json.loads(config.model.to_json()):
            raise ValueError(f"{workdir!r} holds a FOMM run with a different model config; use a new --workdir")
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

    nets = build_networks(config.model)
    vgg_apply = None
    if t.perceptual == "vgg19":
        vgg_apply = losses.make_vgg_apply(losses.load_vgg19(t.vgg19_weights))
    opt_gen, opt_disc = make_optimizers(config, steps_per_epoch)

    rng = jax.random.key(config.seed)
    init_rng, rng = jax.random.split(rng)
    variables = init_variables(nets, init_rng, config.data.frame_shape)
    params = {k: v["params"] for k, v in variables.items()}
    stats = {k: v.get("batch_stats", {}) for k, v in variables.items()}
    state = TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        batch_stats=stats,
        opt_gen=opt_gen.init({"kp_detector": params["kp_detector"], "generator": params["generator"]}),
        opt_disc=opt_disc.init(params["discriminator"]),
        rng=rng,
    )

    store = CheckpointStore(workdir, keep=t.keep_checkpoints, hint=TRAIN_HINT)
    records: list[dict] = []
    metrics_path = os.path.join(workdir, METRICS_FILE)
    best = float("inf")
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
        best = meta.get("best_test_l1", best)
        if os.path.isfile(metrics_path):
            with open(metrics_path) as f:
                records = [json.loads(line) for line in f if line.strip()]
            records = [r for r in records if r["step"] <= meta["step"]]
        if main_process:
            print(f"resuming {workdir} at step {meta['step']}")
    state = parallel.replicate(state, mesh)

    train_step = make_train_step(nets, config, opt_gen, opt_disc, vgg_apply)
    reconstruct = make_reconstruct(nets)
    clips = eval_clips(test_set, config)
    copy_l1 = copy_source_l1(clips) if clips else None
    eval_every = int(t.eval_every) or steps_per_epoch
    samples_dir = os.path.join(workdir, SAMPLES_DIR)
    os.makedirs(samples_dir, exist_ok=True)

    def evaluate(step: int) -> dict | None:
        nonlocal best
        if not clips:
            return None
        l1 = reconstruction_l1(reconstruct, variables_of(state), clips, t.batch_size)
        record = {"kind": "eval", "step": step, "epoch": step / steps_per_epoch, "test_l1": l1,
                  "copy_source_l1": copy_l1, "minutes": (time.time() - start) / 60}
        is_best = l1 < best
        best = min(best, l1)
        save(step, is_best)
        log(record)
        return record

    saved_steps: set[int] = set()

    def save(step: int, is_best: bool = False) -> None:
        latest = step not in saved_steps  # an evaluation may follow an epoch-end save at one step
        if not (latest or is_best):
            return
        meta = {"step": step, "epoch": step / steps_per_epoch, "best_test_l1": best}
        store.save(step, variables_of(state), {"opt_gen": state.opt_gen, "opt_disc": state.opt_disc, "rng": state.rng},
                   meta, is_best=is_best, latest=latest)
        saved_steps.add(step)

    def log(record: dict) -> None:
        records.append(record)
        if main_process:
            with open(metrics_path, "a") as f:
                f.write(json.dumps(record) + "\n")

    step = int(state.step)
    start = time.time()
    first_eval = None
    if step == 0:
        first_eval = evaluate(0)
    bar = tqdm(total=total_steps, initial=step, desc="fomm", unit="step", disable=not main_process, dynamic_ncols=True)
    last = first_eval
    epoch = step // steps_per_epoch
    skip = step % steps_per_epoch
    stop_reason = "schedule done"
    try:
        while step < total_steps:
            for i, batch in enumerate(prefetch(batches.epoch(epoch))):
                if i < skip:
                    continue
                host_batch = batch
                state, metrics, visuals = train_step(state, parallel.shard_batch(parallel.process_slice(batch), mesh))
                step += 1
                bar.update(1)
                if step % t.log_every == 0 or step == total_steps:
                    m = {k: float(v) for k, v in jax.device_get(metrics).items()}
                    if not np.isfinite(m["total"]):
                        raise FloatingPointError(f"the loss diverged at step {step}: {m}")
                    bar.set_postfix({k: f"{v:.3g}" for k, v in m.items() if k in ("total", "pixel_l1", "perceptual")})
                    log({"kind": "train", "step": step, "epoch": step / steps_per_epoch, "losses": m,
                         "lr": float(milestone_schedule(t.lr_generator, [x * steps_per_epoch for x in t.epoch_milestones])(step))})
                if t.image_every and step % t.image_every == 0 and main_process:
                    import imageio.v3 as iio

                    iio.imwrite(os.path.join(samples_dir, f"step_{step:07d}.png"), sample_grid(host_batch, jax.device_get(visuals)))
                if step % eval_every == 0:
                    last = evaluate(step) or last
                    if main_process and last:
                        plot_curves(records, os.path.join(workdir, CURVES_FILE))
                if t.max_minutes and (time.time() - start) / 60 >= t.max_minutes:
                    stop_reason = f"time budget of {t.max_minutes:g} min reached"
                    total_steps = step
                    break
                if step >= total_steps:
                    break
            epoch += 1
            skip = 0
            if epoch % t.checkpoint_freq == 0 and step % eval_every != 0:
                save(step)
    finally:
        bar.close()
    if not last or last["step"] != step:
        last = evaluate(step) or last
        if not clips:
            save(step)
    store.close()
    if main_process:
        plot_curves(records, os.path.join(workdir, CURVES_FILE))
        if t.image_every and step > 0:
            import imageio.v3 as iio

            iio.imwrite(os.path.join(samples_dir, f"step_{step:07d}.png"), sample_grid(host_batch, jax.device_get(visuals)))
        first = next((r for r in records if r["kind"] == "eval"), None)
        summary = f"stopped at step {step} ({stop_reason}) after {(time.time() - start) / 60:.1f} min"
        if first and last:
            summary += f"; test reconstruction L1 {first['test_l1']:.4f} at step {first['step']} -> {last['test_l1']:.4f}"
            summary += f" (source copied: {copy_l1:.4f})"
        print(summary)
    return last or {}


# -- command line ----------------------------------------------------------------------------------

def define_flags() -> None:
    """The CLI's flags, defined on demand: tests import this module beside train.forecaster, whose
    ``--config`` flag would clash at import time."""
    config_flags.DEFINE_config_file("config", None, "FOMM config, e.g. configs/fomm_vox.py or configs/fomm_vox.py:tiny")
    flags.DEFINE_string("workdir", None, "run directory (checkpoints, metrics, samples); re-run to resume")


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise SystemExit(f"error: unexpected arguments {argv[1:]}; flags look like --workdir=DIR")
    if not FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)
    parallel.initialize_distributed()
    try:
        if FLAGS["config"].value is None:
            raise ValueError("--config is required, e.g. --config configs/fomm_vox.py:tiny")
        if not FLAGS.workdir:
            raise ValueError("--workdir is required: the folder for checkpoints, metrics and samples")
        config = FLAGS.config
        if not isinstance(config, ml_collections.ConfigDict) or "model" not in config:
            raise ValueError("--config is not a FOMM config (no model section); use configs/fomm_<dataset>.py")
        train_and_evaluate(config, FLAGS.workdir)
    except (ValueError, OSError, FloatingPointError, ImportError) as e:
        raise SystemExit(f"error: {one_line(e)}") from None
    parallel.finish_distributed()


def run() -> None:
    define_flags()
    app.run(main, flags_parser=parse_flags)


if __name__ == "__main__":
    run()
