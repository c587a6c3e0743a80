"""Training a keypoint forecaster: the state, the jitted steps and the loop (``python -m train.forecaster``).

One readable loop (Flax-examples style): the causal input scaler is fitted on the training split,
sliding windows of N+M frames are shuffled per epoch and read through a grain pipeline
(:class:`kpflow.data.loaders.WindowBatchSource`, the batches of :func:`kpflow.data.epoch_batches`;
each process loads only its rows, and the position is kept in every checkpoint), a jitted
:func:`train_step` (clip-by-global-norm + AdamW with a warmup-cosine schedule) runs data-parallel
over all devices (:mod:`kpflow.parallel`), and after each epoch closed-loop samples on the
non-overlapping validation windows give the energy score and sample-mean / best-of-S MAE beside
the hold-last and random-walk baselines (:func:`eval_step`). The state with the lowest
``config.train.select_metric`` is kept in ``WORKDIR/best``; see :mod:`kpflow.checkpoint` for the
directory layout. Training again in the same workdir resumes from the latest checkpoint.

    exp = prepare(config, workdir)   # validated config, data, model
    best = fit(exp)                  # or train_and_evaluate(config, workdir)
"""

from __future__ import annotations

import dataclasses
import functools
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

from kpflow import checkpoint, parallel
from kpflow import metrics as kpmetrics
from kpflow.data import (
    AUGMENTATIONS,
    ClipSet,
    check_long_enough,
    evaluation_windows,
    load_splits,
    loaders,
    observed_frames_of_windows,
    parse_horizon,
    stack_windows,
)
from kpflow.forecast import Forecaster, baselines
from kpflow.keypoints import CausalScaler, MinMaxScaler
from kpflow.progress import progress
from kpflow.run_store import BEST_STEP_KEY
from kpflow.training import checks, runlog
from kpflow.training.checks import COUNT, COUNT_OR_ZERO, FINITE, FLAG, NON_NEGATIVE, POSITIVE, Rule
from kpflow.workdir import run_lock

# Validation scores summed by eval_step, all per window in min-max units; "balanced" is derived
# from them in evaluate().
VAL_METRICS = ("energy_score", "mae_mean", "mae_best", "mae_hold_last", "energy_random_walk")
# Scores that can pick the best checkpoint (lower is better).
SELECT_METRICS = ("balanced", "energy_score", "mae_mean", "mae_best")
# Every numeric field of a forecaster config and its allowed values (kpflow.training.checks), checked
# by validate_config after the command-line overrides; all must be present.
CONFIG_FIELDS = {
    "num_observed": COUNT,
    "num_predicted": COUNT,
    "train.seed": COUNT_OR_ZERO,
    "train.batch_size": COUNT,
    "train.num_epochs": COUNT,
    "train.steps_per_epoch": COUNT_OR_ZERO,  # 0: one pass over the training windows
    "train.learning_rate": POSITIVE,
    "train.warmup_steps": COUNT_OR_ZERO,
    "train.weight_decay": NON_NEGATIVE,
    "train.clip_norm": POSITIVE,
    "train.val_samples": COUNT,
    "train.keep_checkpoints": COUNT,
    "data.stride": COUNT,
    "data.val_fraction": Rule(float, 0, 1, low_open=True, high_open=True),
    "data.seed": COUNT_OR_ZERO,
}
# Fields of the synthetic data block, checked when present.
SYNTHETIC_FIELDS = {
    "num_clips": COUNT, "num_speakers": COUNT, "min_frames": COUNT, "max_frames": COUNT, "num_keypoints": COUNT,
    "seed": COUNT_OR_ZERO,
}
# The models' hyper-parameters (kpflow.forecast.*), checked when the config's model has them:
# sizes and counts, weights, temperatures and flags.
MODEL_FIELDS = {
    **dict.fromkeys(("hidden", "latent", "num_layers", "num_gru_layers", "num_blocks", "context_hidden",
                     "prior_hidden", "posterior_hidden", "decoder_hidden", "flow_hidden", "flow_layers",
                     "closed_loop_samples"), COUNT),
    **dict.fromkeys(("beta", "kl_weight", "closed_loop_weight", "decoder_temperature"), NON_NEGATIVE),
    "temperature": Rule(float, 0, low_open=True, form=checks.ONE_OR_LIST),  # the GRU-NF takes a mixture
    "latent_temperature": Rule(float, 0, low_open=True, form=checks.ONE_OR_LIST),
    **dict.fromkeys(("latent_persistence", "noise_persistence"), Rule(float, 0, 1, high_open=True)),  # AR(1)
    "noise_rank": COUNT_OR_ZERO,  # the GRU-NF's innovation rank (0: full)
    **dict.fromkeys(("deterministic", "fresh_forecast_latent", "equivariant", "mirror_samples",
                     "conditional_prior", "sample_noise", "embed_inputs", "position_features"), FLAG),
    # The shared input/output layer (kpflow.forecast.io).
    **dict.fromkeys(("io.residual", "io.relative", "io.momentum", "io.sign_invariant"), FLAG),
    "io.adaptive_scale": FINITE,  # negative turns the adaptation off
    # Its fields as configs written before the io block hold them, flat (read as io's).
    **dict.fromkeys(("residual", "momentum", "sign_invariant"), FLAG),
    "adaptive_scale": FINITE,
}
# The progress bar shows the mean loss of this many recent steps, fetched every this many steps:
# fetching a loss waits for the device, so not every step.
LOSS_DISPLAY_STEPS = 20


# -- state, optimizer, steps ----------------------------------------------------------------------


@flax.struct.dataclass
class TrainState:
    """Everything a step changes. Replicated over devices.

    ``params``: trainable Flax params; ``collections``: the other variable collections (``scaler``,
    which is never trained, and ``batch_stats``, updated by the loss); ``rng``: uint32 key data of
    the training stream (``jax.random.key_data``), stored as data so checkpoints hold it plainly.
    """

    step: jax.Array  # int32 []
    params: Any
    collections: dict
    opt_state: Any
    rng: jax.Array

    @property
    def variables(self) -> dict:
        return {"params": self.params, **self.collections}


def make_optimizer(train_config: ml_collections.ConfigDict, total_steps: int) -> optax.GradientTransformation:
    """Global-norm clipping, then AdamW with linear warmup and cosine decay to 1% over ``total_steps``."""
    t = train_config
    return _optimizer(float(t.learning_rate), int(t.warmup_steps), int(total_steps), float(t.weight_decay), float(t.clip_norm))


# Cached: equal settings give the same object, and the jitted steps below take the optimizer as a
# static argument, so repeated runs in one process (tests, notebooks, sweeps) compile once.
@functools.lru_cache(maxsize=16)
def _optimizer(learning_rate, warmup_steps, total_steps, weight_decay, clip_norm) -> optax.GradientTransformation:
    warmup = min(warmup_steps, max(total_steps - 1, 0))
    schedule = optax.warmup_cosine_decay_schedule(
        init_value=0.0,
        peak_value=learning_rate,
        warmup_steps=warmup,
        decay_steps=max(total_steps, warmup + 1),
        end_value=0.01 * learning_rate,
    )
    return optax.chain(optax.clip_by_global_norm(clip_norm), optax.adamw(schedule, weight_decay=weight_decay))


def create_train_state(
    rng: jax.Array, forecaster: Forecaster, example_batch: np.ndarray, scaler: CausalScaler, tx: optax.GradientTransformation
) -> TrainState:
    """Initialise from ``example_batch [B, N+M, D]`` (raw units); ``scaler`` goes into the variables."""
    return _init_state(rng, jnp.asarray(example_batch, jnp.float32), scaler, forecaster=forecaster, tx=tx)


# Jitted: one compilation instead of one per eager op of a large model's initialisation.
@functools.partial(jax.jit, static_argnames=("forecaster", "tx"))
def _init_state(rng, batch, scaler, *, forecaster, tx) -> TrainState:
    init_rng, train_rng = jax.random.split(rng)
    variables = forecaster.init(init_rng, batch, scaler)
    params = variables.get("params", {})
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        collections={k: v for k, v in variables.items() if k != "params"},
        opt_state=tx.init(params),
        rng=jax.random.key_data(train_rng),
    )


@functools.partial(jax.jit, static_argnames=("forecaster", "tx"))
def train_step(state: TrainState, batch: jax.Array, *, forecaster: Forecaster, tx: optax.GradientTransformation):
    """One optimizer step on ``batch [B, N+M, D]`` (raw units) -> (new state, scalar metrics).

    With a replicated ``state`` and a ``batch`` split over devices (:mod:`kpflow.parallel`), XLA
    averages the gradients across devices; the new state comes out replicated.
    """
    # A fresh key per step, derived from the stored stream: resuming at step k redraws the same noise.
    rng = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)

    def loss_fn(params):
        variables = {"params": params, **state.collections}
        return forecaster.loss_and_state(variables, batch, rng, train=True)

    (loss, (step_metrics, updated)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    out = {"loss": loss, **{k: jnp.mean(v) for k, v in step_metrics.items()}, "grad_norm": optax.tree.norm(grads)}
    new_state = state.replace(
        step=state.step + 1, params=params, collections={**state.collections, **updated}, opt_state=opt_state
    )
    return new_state, out


@functools.partial(jax.jit, static_argnames=("forecaster", "num_samples"))
def eval_step(variables, windows: jax.Array, units: jax.Array, mask: jax.Array, rng: jax.Array, *,
              forecaster: Forecaster, num_samples: int):
    """Closed-loop validation scores of ``windows [B, N+M, D]`` (raw) summed over rows where ``mask [B]``.

    Returns ``{name: scalar sum}`` for :data:`VAL_METRICS`, with errors divided by ``units [B, D]``:
    the min-max range of each window's clip (the papers' units, the ones the evaluation reports),
    so the best checkpoint is chosen on the evaluation's yardstick. Scores are translation-invariant,
    so only the division matters.
    """
    n = forecaster.num_observed
    context, future = windows[:, :n], windows[:, n:]
    m = future.shape[1]
    samples = forecaster.sample(variables, context, m, rng, num_samples)  # [S, B, M, D]
    samples_z, future_z = samples / units[None, :, None], future / units[:, None]
    held = baselines.hold_last(context, m)  # [B, M, D]
    # The random walk of kpflow.forecast.baselines: Gaussian steps from the last observed frame with
    # the training split's per-dimension step std (here in raw units). Its noise is drawn here from
    # fold_in(rng, 1), all samples at once, so the validation scores (and the checkpoints they pick)
    # stay those of earlier runs.
    scaler = forecaster.scaler_of(variables)
    eps = jax.random.normal(jax.random.fold_in(rng, 1), samples.shape, samples.dtype)
    walk = baselines.random_walk(context[None, :, -1:], eps, scaler.step_scale * scaler.scale)  # [S, B, M, D]
    scores = {
        "energy_score": kpmetrics.energy_score(samples_z, future_z),
        "mae_mean": kpmetrics.sample_mean_mae(samples_z, future_z),
        "mae_best": kpmetrics.best_of_s_mae(samples_z, future_z),
        "mae_hold_last": kpmetrics.mae(held / units[:, None], future_z),
        "energy_random_walk": kpmetrics.energy_score(walk / units[None, :, None], future_z),
    }
    # where(), not a product: a padded row's NaN must not poison the sum.
    return {k: jnp.sum(jnp.where(mask, v, 0.0)) for k, v in scores.items()}


def evaluate(eval_fn, variables, windows: np.ndarray, units: np.ndarray, chunk: int, mesh, rng: jax.Array) -> dict[str, float]:
    """Mean validation scores over all ``windows [W, N+M, D]`` (``units [W, D]``, see eval_step), in
    zero-padded chunks of ``chunk`` rows.

    Every chunk has the same shape (one compilation); padded rows are masked out. The rng of chunk
    ``i`` is ``fold_in(rng, i)``, so a fixed ``rng`` scores every epoch on the same noise.
    """
    totals = dict.fromkeys(VAL_METRICS, 0.0)
    for i, start in enumerate(range(0, len(windows), chunk)):
        part, part_units = windows[start : start + chunk], units[start : start + chunk]
        mask = np.arange(chunk) < len(part)
        pad = chunk - len(part)
        part = np.concatenate([part, np.zeros((pad,) + part.shape[1:], part.dtype)])
        part_units = np.concatenate([part_units, np.ones((pad,) + part_units.shape[1:], part_units.dtype)])
        part, part_units, mask = parallel.shard_batch(parallel.process_slice((part, part_units, mask)), mesh)
        sums = eval_fn(variables, part, part_units, mask, jax.random.fold_in(rng, i))
        for k, v in jax.device_get(sums).items():
            totals[k] += float(v)
    means = {k: v / len(windows) for k, v in totals.items()}
    means["balanced"] = balanced_score(means)
    return means


def balanced_score(scores: dict[str, float]) -> float:
    """The worst of three ratios to honest baselines (lower is better; below 1 beats them all):
    point accuracy ``mae_mean / hold-last``, sharpness ``mae_best / hold-last`` and calibration
    ``energy_score / random walk``. Energy score alone favours barely trained, diffuse models on
    these near-random-walk series; this keeps all three in view when picking a checkpoint."""
    return max(
        scores["mae_mean"] / scores["mae_hold_last"],
        scores["mae_best"] / scores["mae_hold_last"],
        scores["energy_score"] / scores["energy_random_walk"],
    )


def selection_score(record: dict, select_metric: str) -> float:
    """``record["val/<select_metric>"]``, lower is better; infinite when missing or not finite."""
    v = record.get(f"val/{select_metric}", math.nan)
    return v if math.isfinite(v) else math.inf


# -- the run ----------------------------------------------------------------------------------------


@dataclasses.dataclass
class Experiment:
    """A validated config with its data and model, ready to train (see :func:`prepare`)."""

    config: ml_collections.ConfigDict
    workdir: str
    forecaster: Forecaster
    train_clips: ClipSet
    val_clips: ClipSet
    train_windows: np.ndarray  # [W, N+M, D] sliding, config.data.stride apart
    val_windows: np.ndarray  # [V, N+M, D] non-overlapping, the papers' protocol
    val_units: np.ndarray  # [V, D] min-max range of each window's clip (the papers' units)

    @property
    def steps_per_epoch(self) -> int:
        """``config.train.steps_per_epoch``, or one pass over the windows when it is 0."""
        steps = int(self.config.train.steps_per_epoch)
        return steps if steps > 0 else max(1, len(self.train_windows) // int(self.config.train.batch_size))


def validate_config(config: ml_collections.ConfigDict) -> None:
    """One-line ValueErrors for configs that cannot train: a horizon that disagrees with its
    lengths, a field of :data:`CONFIG_FIELDS` (or of :data:`MODEL_FIELDS` that the model has)
    missing, of the wrong type or out of range, an unknown select metric or augmentation."""
    n, m = parse_horizon(config.horizon)
    if (n, m) != (config.num_observed, config.num_predicted):
        raise ValueError(
            f"config.horizon {config.horizon!r} disagrees with num_observed={config.num_observed}, "
            f"num_predicted={config.num_predicted}; choose the horizon with --config configs/<file>.py:horizon={config.horizon}"
        )
    checks.check_fields(config, CONFIG_FIELDS)
    checks.check_fields(config, checks.DATA_PIPELINE_FIELDS, required=False)
    checks.check_fields(config.data.get("synthetic") or {}, SYNTHETIC_FIELDS, "data.synthetic.", required=False)
    checks.check_fields(config.get("model") or {}, MODEL_FIELDS, "model.", required=False)
    t = config.train
    if t.select_metric not in SELECT_METRICS:
        raise ValueError(f"train.select_metric must be one of {SELECT_METRICS}, got {t.select_metric!r}")
    unknown = [a for a in config.data.get("augment", ()) if a not in AUGMENTATIONS]
    if unknown:
        raise ValueError(f"data.augment: unknown {unknown}; choose from {AUGMENTATIONS}")


def prepare(config: ml_collections.ConfigDict, workdir: str) -> Experiment:
    """Validate the config, load the data splits, build the model, and check ``workdir`` can host the run.

    Every problem a user can fix is a one-line ValueError / FileNotFoundError: bad horizon, missing
    or malformed data (NaN included), clips too short for a window, unknown model or
    hyper-parameter, or a workdir holding a different run.
    """
    if not workdir:
        raise ValueError("--workdir is required: the folder for checkpoints and metrics")
    validate_config(config)
    parallel.check_batch_size(config.train.batch_size, parallel.make_mesh())
    train_clips, val_clips = load_splits(config.data)
    length = config.num_observed + config.num_predicted
    check_long_enough(train_clips.clips, length, "training split")
    check_long_enough(val_clips.clips, length, "validation split")
    forecaster = checkpoint.build_forecaster(config, train_clips.dim)

    if os.path.isfile(os.path.join(workdir, checkpoint.CONFIG_FILE)):
        saved = checkpoint.load_config(workdir)
        runlog.check_same_run(saved, config, workdir, also={"horizon": ("num_observed", "num_predicted")})
        if os.path.isfile(os.path.join(workdir, checkpoint.SPLIT_FILE)):
            split = checkpoint.load_split(workdir)
            if split["train"] != train_clips.names or split["val"] != val_clips.names:
                raise ValueError(f"{workdir!r} was trained on a different data split; use a new --workdir")

    train_windows = stack_windows(train_clips.clips, length, config.data.stride)
    n, m = config.num_observed, config.num_predicted
    val_windows, val_units = [], []
    for s in val_clips.series():
        w = evaluation_windows(s, n, m)
        if len(w):
            val_windows.append(w)
            val_units.append(np.broadcast_to(MinMaxScaler.fit(observed_frames_of_windows(s, n, m)).range, (len(w), s.shape[-1])))
    return Experiment(config, workdir, forecaster, train_clips, val_clips, train_windows,
                      np.concatenate(val_windows).astype(np.float32), np.concatenate(val_units).astype(np.float32))


def plot_metrics(records: list[dict], path: str, select_metric: str) -> None:
    """``loss.png``: training loss, validation energy score and validation MAEs against epoch."""
    best = min(records, key=lambda r: selection_score(r, select_metric))
    marked = (best["epoch"], f"best {select_metric} (epoch {best['epoch']})")

    def lines(*named):
        return [runlog.Line(label, *runlog.series(records, key, x="epoch"), style=style, marker=".")
                for key, label, style in named]

    runlog.plot_panels([
        runlog.Panel("training loss", lines(("train/loss", "loss", "-")), xlabel="epoch", vline=marked),
        runlog.Panel(
            "validation energy score (min-max units)",
            lines(("val/energy_score", "model", "-"), ("val/energy_random_walk", "random walk", "--")),
            xlabel="epoch", vline=marked,
        ),
        runlog.Panel(
            "validation MAE (min-max units)",
            lines(("val/mae_mean", "mean of samples", "-"), ("val/mae_best", "best of S", "-"),
                  ("val/mae_hold_last", "hold-last", "--")),
            xlabel="epoch", vline=marked,
        ),
    ], path)


def _restore(store: checkpoint.CheckpointStore, exp: Experiment, tx, init_rng, example, scaler, mesh) -> tuple[TrainState, dict]:
    """The latest state of ``store`` and its meta; the restore target needs only shapes, so the
    initialisation is traced, not run."""
    target = jax.eval_shape(lambda r, x, sc: create_train_state(r, exp.forecaster, x, sc, tx), init_rng, example, scaler)
    variables, train, meta = store.restore(
        "latest", target.variables, {"opt_state": target.opt_state, "rng": target.rng}, parallel.replicated_sharding(mesh)
    )
    state = TrainState(
        step=jnp.asarray(meta["step"], jnp.int32),
        params=variables.get("params", {}),
        collections={k: v for k, v in variables.items() if k != "params"},
        opt_state=train["opt_state"],
        rng=train["rng"],
    )
    return state, meta


def fit(exp: Experiment, stop_after_epoch: int | None = None) -> dict:
    """Train ``exp`` in ``exp.workdir``, resuming from its latest checkpoint; returns the best record.

    ``stop_after_epoch``: stop cleanly after that epoch (as a preempted job would), leaving a
    checkpoint that a later call continues from.

    Raises :class:`~kpflow.training.runlog.TrainingDiverged` (one line) when an epoch's training
    loss is not finite or above :data:`~kpflow.training.checks.LOSS_DIVERGENCE_FACTOR` times the
    first logged one, or its validation MAE above
    :data:`~kpflow.training.checks.VAL_MAE_DIVERGENCE_FACTOR` times hold-last's; that epoch is
    neither logged nor saved, so the checkpoints before it (``best/`` included) stay.
    """
    config, workdir = exp.config, exp.workdir
    tc = config.train
    main_process = parallel.is_main_process()
    mesh = parallel.make_mesh()
    steps_per_epoch = exp.steps_per_epoch
    tx = make_optimizer(tc, tc.num_epochs * steps_per_epoch)

    root = jax.random.key(tc.seed)
    init_rng, eval_rng = jax.random.split(root)
    scaler = CausalScaler.fit(exp.train_clips.series())  # training split only: no leak from validation
    example = exp.train_windows[: tc.batch_size]

    os.makedirs(workdir, exist_ok=True)
    store = checkpoint.CheckpointStore(workdir, keep=tc.keep_checkpoints)
    bar = None
    try:
        start_epoch, best, resumed_step, meta = 0, None, None, {}
        if store.latest_step() is None:
            state = create_train_state(init_rng, exp.forecaster, example, scaler, tx)
        else:
            state, meta = _restore(store, exp, tx, init_rng, example, scaler, mesh)
            start_epoch, best, resumed_step = int(meta["epoch"]), meta.get("best"), int(meta["step"])
        loader = _loader(exp, meta, start_epoch)
        saved_step = resumed_step  # the step of the newest checkpoint, for a divergence message
        log = runlog.MetricsLog(workdir, resumed_step, write=main_process)
        if main_process:
            checkpoint.save_config(workdir, config)
            checkpoint.save_split(workdir, exp.train_clips, exp.val_clips, config.data)

        state = parallel.replicate(state, mesh)
        step_fn = functools.partial(train_step, forecaster=exp.forecaster, tx=tx)
        eval_fn = functools.partial(eval_step, forecaster=exp.forecaster, num_samples=int(tc.val_samples))
        eval_rng = parallel.replicate(eval_rng, mesh)
        chunk = _round_up(min(int(tc.batch_size), len(exp.val_windows)), mesh.size)

        if start_epoch >= tc.num_epochs and main_process:
            print(f"{workdir}: already trained for {start_epoch} of {tc.num_epochs} epochs")
        last_plot = -math.inf
        bar = progress(
            total=tc.num_epochs * steps_per_epoch, initial=start_epoch * steps_per_epoch, desc="train",
            unit="step", disable=not main_process or start_epoch >= tc.num_epochs, mininterval=1.0,
        )
        for epoch in range(start_epoch + 1, tc.num_epochs + 1):
            t0 = time.time()
            step_metrics = []
            for i in range(steps_per_epoch):
                batch = parallel.shard_batch(next(loader), mesh, trim=True)
                state, m = step_fn(state, batch)
                step_metrics.append(m)
                bar.update(1)
                if i % LOSS_DISPLAY_STEPS == 0 or i == steps_per_epoch - 1:
                    running = float(np.mean([float(s["loss"]) for s in step_metrics[-LOSS_DISPLAY_STEPS:]]))
                    bar.set_postfix(epoch=epoch, loss=f"{running:.4f}")
            step_metrics = jax.device_get(step_metrics)  # one transfer per epoch
            train_means = {k: float(np.mean([m[k] for m in step_metrics])) for k in step_metrics[0]}
            # Divergence stops the run before anything of this epoch is logged or saved: the
            # checkpoints of earlier epochs (best/ included) stay as they are.
            hint = (f"lower --config.train.learning_rate (now {tc.learning_rate:g}) or --config.train.clip_norm "
                    f"(now {tc.clip_norm:g}); " + (f"{workdir} keeps its checkpoints up to step {saved_step}"
                                                   if saved_step is not None else "no checkpoint was saved"))
            runlog.check_finite(train_means["loss"], f"in epoch {epoch}", hint)
            if log.records:  # the run's first logged loss (kept across resumption) is the yardstick
                checks.check_loss_ratio(train_means["loss"], log.records[0]["train/loss"], f"in epoch {epoch}", hint)
            val = evaluate(eval_fn, state.variables, exp.val_windows, exp.val_units, chunk, mesh, eval_rng)
            checks.check_val_mae(val["mae_mean"], val["mae_hold_last"], f"in epoch {epoch}", hint)

            record = {
                "epoch": epoch,
                "step": int(state.step),
                **{f"train/{k}": v for k, v in train_means.items()},
                **{f"val/{k}": v for k, v in val.items()},
                "seconds": round(time.time() - t0, 2),
            }
            score = selection_score(record, tc.select_metric)
            is_best = math.isfinite(score) and (best is None or score < best["score"])
            if is_best:
                best = {"score": score, "epoch": epoch, "step": record["step"], "val": val}
            last = epoch == tc.num_epochs or epoch == stop_after_epoch
            log.append(record)  # before the checkpoint: a crash in between only loses this line on resume
            if main_process and (last or time.time() - last_plot >= runlog.PLOT_INTERVAL_S):
                plot_metrics(log.records, os.path.join(workdir, checkpoint.PLOT_FILE), tc.select_metric)
                last_plot = time.time()
            meta = {"step": record["step"], "epoch": epoch, "val": val, "best": best,
                    BEST_STEP_KEY: best["step"] if best else None, loaders.STATE_KEY: loader.state()}
            store.save(record["step"], state.variables, {"opt_state": state.opt_state, "rng": state.rng}, meta, is_best)
            saved_step = record["step"]
            if main_process:
                bar.write(
                    f"epoch {epoch}: loss {train_means['loss']:.4f} | val energy {val['energy_score']:.4f} "
                    f"mae_mean {val['mae_mean']:.4f} mae_best {val['mae_best']:.4f} (hold-last {val['mae_hold_last']:.4f})"
                    f"{' *' if is_best else ''} | {record['seconds']:.1f}s"
                )
            if last:
                break
    finally:
        if bar is not None:
            bar.close()  # before an error's line, which then comes last
        store.close()  # waits for the asynchronous saves
    return best or {}


def _loader(exp: Experiment, meta: dict, start_epoch: int) -> loaders.Loader:
    """The run's training batches from epoch ``start_epoch + 1`` on: at the position a checkpoint's
    ``meta`` saved (a checkpoint from before the pipeline kept one starts at the epoch's first batch).
    Raises a one-line ValueError when the saved position disagrees with the saved epoch."""
    tc = exp.config.train
    source = loaders.WindowBatchSource(
        exp.train_windows, int(tc.batch_size), int(tc.seed), exp.steps_per_epoch, int(tc.num_epochs),
        tuple(exp.config.data.get("augment", ())), first_epoch=1,
        process_index=jax.process_index(), process_count=jax.process_count(),
    )
    first = min(start_epoch, int(tc.num_epochs)) * exp.steps_per_epoch
    state = meta.get(loaders.STATE_KEY) or {"start": first, "next_batch": first}
    if int(state.get("next_batch", -1)) != first:
        raise ValueError(
            f"{exp.workdir}: the checkpoint of epoch {start_epoch} saved the input pipeline at batch "
            f"{state.get('next_batch')}, not {first}; was it written by another config? train in a new workdir"
        )
    return loaders.Loader.resume(source, state, worker_count=int(exp.config.data.get("worker_count", 0)))


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, stop_after_epoch: int | None = None) -> dict:
    """:func:`prepare` then :func:`fit`; returns the best epoch's record (score, epoch, step, val).

    Holds ``workdir``'s lock throughout (:func:`kpflow.workdir.run_lock`): a second run on it is
    refused with one line (:class:`kpflow.workdir.WorkdirInUse`, an OSError).
    """
    with run_lock(workdir):
        return fit(prepare(config, workdir), stop_after_epoch=stop_after_epoch)


def _round_up(x: int, multiple: int) -> int:
    return -(-x // multiple) * multiple
