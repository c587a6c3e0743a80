"""Train a keypoint forecaster.

    python -m train.forecaster --config configs/grunf_vox.py:cpu,horizon=12-12 --workdir runs/grunf_vox \
        --config.data.dir=../shared/data/vox_keypoints [--config.train.num_epochs=3 ...]

One readable loop (Flax-examples style): the causal input scaler is fitted on the training split,
sliding windows of N+M frames are shuffled per epoch, a jitted ``train_step`` (clip-by-global-norm +
AdamW with a warmup-cosine schedule) runs data-parallel over all devices (:mod:`kpflow.parallel`),
and after each epoch closed-loop samples on the non-overlapping validation windows give the energy
score and sample-mean / best-of-S MAE (in the model's scaled units, beside hold-last). The state with
the lowest ``config.train.select_metric`` is kept in ``WORKDIR/best``; see :mod:`kpflow.checkpoint`
for the directory layout. Running the same command again resumes from the latest checkpoint.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
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

from kpflow import checkpoint, parallel
from kpflow import metrics as kpmetrics
from kpflow.data import (
    ClipSet,
    check_long_enough,
    evaluation_windows,
    load_splits,
    observed_frames_of_windows,
    parse_horizon,
    stack_windows,
)
from kpflow.forecast import Forecaster
from kpflow.keypoints import CausalScaler, MinMaxScaler
from train.cli import one_line, parse_flags

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "forecaster config file, e.g. configs/vrnn_vox.py:cpu", lock_config=True)
flags.DEFINE_string("workdir", None, "run directory: checkpoints, metrics.jsonl, loss.png (resumed if present)")

# loss.png is redrawn after an epoch when this many seconds passed since the last drawing, and at the end.
PLOT_INTERVAL_S = 30.0

# Validation scores, all per window in the model's scaled units, averaged over windows.
# Validation scores summed by eval_step; "balanced" is derived from them in evaluate().
VAL_METRICS = ("energy_score", "mae_mean", "mae_best", "mae_hold_last", "energy_random_walk")
# Scores that can pick the best checkpoint (lower is better).
SELECT_METRICS = ("balanced", "energy_score", "mae_mean", "mae_best")


class TrainingDiverged(RuntimeError):
    """The training loss became NaN or infinite."""


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
    samples = forecaster.sample(variables, context, future.shape[1], rng, num_samples)  # [S, B, M, D]
    samples_z, future_z = samples / units[None, :, None], future / units[:, None]
    hold_last_z = jnp.broadcast_to(context[:, -1:] / units[:, None], future_z.shape)
    # The random-walk baseline: Gaussian steps with the training split's per-dimension step std
    # (the CausalScaler's step_scale, in raw units), from the last observed frame.
    scaler = forecaster.scaler_of(variables)
    eps = jax.random.normal(jax.random.fold_in(rng, 1), samples.shape, samples.dtype)
    walk = context[None, :, -1:] + jnp.cumsum(eps * (scaler.step_scale * scaler.scale), axis=2)
    scores = {
        "energy_score": kpmetrics.energy_score(samples_z, future_z),
        "mae_mean": kpmetrics.sample_mean_mae(samples_z, future_z),
        "mae_best": kpmetrics.best_of_s_mae(samples_z, future_z),
        "mae_hold_last": kpmetrics.mae(hold_last_z, future_z),
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


AUGMENTATIONS = ("reflect", "reverse")


def augment(batch: np.ndarray, kinds, rng: np.random.Generator) -> np.ndarray:
    """Randomly transform half of the windows of ``batch [B, T, D]`` per augmentation in ``kinds``.

    - ``reflect``: ``x' = 2 x_0 - x``, the window mirrored through its first frame. Forecasters see
      positions relative to the window's first frame and steps, so this negates every input they
      see: head motion has no preferred direction, and the learned drift then cannot carry one
      from the few training speakers.
    - ``reverse``: the window played backwards (motion statistics of talking heads are close to
      time-reversible).
    """
    out = batch.copy()
    b = len(out)
    for kind in kinds:
        pick = rng.random(b) < 0.5
        if kind == "reflect":
            out[pick] = 2.0 * out[pick, :1] - out[pick]
        elif kind == "reverse":
            out[pick] = out[pick, ::-1]
        else:
            raise ValueError(f"unknown augmentation {kind!r}; choose from {AUGMENTATIONS}")
    return out


def epoch_batches(windows: np.ndarray, batch_size: int, seed: int, epoch: int, augmentations=()) -> Iterator[np.ndarray]:
    """Endless shuffled (and optionally augmented) batches ``[B, N+M, D]`` for ``epoch``.

    The order and the augmentations depend only on (seed, epoch), so a resumed run sees the same batches.
    """
    rng = np.random.default_rng([seed, epoch])
    while True:
        order = rng.permutation(len(windows))
        if len(windows) <= batch_size:
            yield augment(windows[order], augmentations, rng)
            continue
        for i in range(0, len(order) - batch_size + 1, batch_size):
            yield augment(windows[order[i : i + batch_size]], augmentations, rng)


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
    """One-line ValueErrors for configs that cannot train."""
    n, m = parse_horizon(config.horizon)
    if (n, m) != (config.num_observed, config.num_predicted):
        raise ValueError(
            f"config.horizon {config.horizon!r} disagrees with num_observed={config.num_observed}, "
            f"num_predicted={config.num_predicted}; choose the horizon with --config configs/<file>.py:horizon={config.horizon}"
        )
    t = config.train
    if t.select_metric not in SELECT_METRICS:
        raise ValueError(f"train.select_metric must be one of {SELECT_METRICS}, got {t.select_metric!r}")
    if t.num_epochs < 1 or t.batch_size < 1 or t.val_samples < 1:
        raise ValueError("train.num_epochs, train.batch_size and train.val_samples must be at least 1")
    if config.data.stride < 1:
        raise ValueError(f"data.stride must be at least 1, got {config.data.stride}")
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
        checkpoint.check_same_run(checkpoint.load_config(workdir), config, workdir)
        if os.path.isfile(os.path.join(workdir, checkpoint.SPLIT_FILE)):
            saved = checkpoint.load_split(workdir)
            if saved["train"] != train_clips.names or saved["val"] != val_clips.names:
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


def read_metrics(path: str, up_to_epoch: int) -> list[dict]:
    """The records of ``metrics.jsonl`` for epochs <= ``up_to_epoch`` (later ones belong to a lost run)."""
    if not os.path.isfile(path):
        return []
    with open(path) as f:
        records = [json.loads(line) for line in f if line.strip()]
    return [r for r in records if r["epoch"] <= up_to_epoch]


def write_metrics(path: str, records: list[dict]) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in records)
    os.replace(tmp, path)


def plot_metrics(records: list[dict], path: str, select_metric: str) -> None:
    """``loss.png``: training loss, validation energy score and validation MAEs against epoch."""
    from matplotlib.figure import Figure  # no pyplot: no global figure state, no GUI backend

    epochs = [r["epoch"] for r in records]
    best = min(records, key=lambda r: _score(r, select_metric))
    fig = Figure(figsize=(13, 3.8))
    axes = fig.subplots(1, 3)
    panels = [
        ("training loss", [("train/loss", "loss", "-")]),
        (
            "validation energy score (min-max units)",
            [("val/energy_score", "model", "-"), ("val/energy_random_walk", "random walk", "--")],
        ),
        (
            "validation MAE (min-max units)",
            [("val/mae_mean", "mean of samples", "-"), ("val/mae_best", "best of S", "-"), ("val/mae_hold_last", "hold-last", "--")],
        ),
    ]
    for ax, (title, lines) in zip(axes, panels):
        for key, label, style in lines:
            ax.plot(epochs, [r.get(key, math.nan) for r in records], style, marker=".", label=label)
        ax.axvline(best["epoch"], color="grey", linestyle=":", label=f"best {select_metric} (epoch {best['epoch']})")
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.subplots_adjust(left=0.05, right=0.99, bottom=0.13, top=0.92, wspace=0.22)  # tight_layout costs a redraw
    tmp = path + ".tmp"
    fig.savefig(tmp, format="png", dpi=90)
    os.replace(tmp, path)


def _score(record: dict, select_metric: str) -> float:
    v = record.get(f"val/{select_metric}", math.nan)
    return v if math.isfinite(v) else math.inf


def fit(exp: Experiment, stop_after_epoch: int | None = None) -> dict:
    """Train ``exp`` in ``exp.workdir``, resuming from its latest checkpoint; returns the best record.

    ``stop_after_epoch``: stop cleanly after that epoch (as a preempted job would), leaving a
    checkpoint that a later call continues from.
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
    try:
        start_epoch, best = 0, None
        if store.latest_step() is None:
            state = create_train_state(init_rng, exp.forecaster, example, scaler, tx)
        else:
            # Resume: the restore target needs only shapes, so skip running the initialisation.
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
            start_epoch, best = int(meta["epoch"]), meta.get("best")
        metrics_path = os.path.join(workdir, checkpoint.METRICS_FILE)
        records = read_metrics(metrics_path, start_epoch)
        if main_process:
            checkpoint.save_config(workdir, config)
            checkpoint.save_split(workdir, exp.train_clips, exp.val_clips, config.data)
            write_metrics(metrics_path, records)  # drops lines of epochs the checkpoint does not have

        state = parallel.replicate(state, mesh)
        step_fn = functools.partial(train_step, forecaster=exp.forecaster, tx=tx)
        eval_fn = functools.partial(eval_step, forecaster=exp.forecaster, num_samples=int(tc.val_samples))
        eval_rng = parallel.replicate(eval_rng, mesh)
        chunk = _round_up(min(int(tc.batch_size), len(exp.val_windows)), mesh.size)

        if start_epoch >= tc.num_epochs and main_process:
            print(f"{workdir}: already trained for {start_epoch} of {tc.num_epochs} epochs")
        last_plot = -math.inf
        bar = tqdm(
            total=tc.num_epochs * steps_per_epoch, initial=start_epoch * steps_per_epoch, desc="train",
            unit="step", disable=not main_process or start_epoch >= tc.num_epochs, mininterval=1.0, dynamic_ncols=True,
        )
        for epoch in range(start_epoch + 1, tc.num_epochs + 1):
            t0 = time.time()
            batches = epoch_batches(exp.train_windows, int(tc.batch_size), int(tc.seed), epoch,
                                    tuple(exp.config.data.get("augment", ())))
            step_metrics = []
            for i in range(steps_per_epoch):
                batch = parallel.shard_batch(parallel.process_slice(next(batches)), mesh, trim=True)
                state, m = step_fn(state, batch)
                step_metrics.append(m)
                bar.update(1)
                if i % 20 == 0 or i == steps_per_epoch - 1:  # fetching the loss syncs: not every step
                    running = float(np.mean([float(s["loss"]) for s in step_metrics[-20:]]))
                    bar.set_postfix(epoch=epoch, loss=f"{running:.4f}")
            step_metrics = jax.device_get(step_metrics)  # one transfer per epoch
            train_means = {k: float(np.mean([m[k] for m in step_metrics])) for k in step_metrics[0]}
            if not math.isfinite(train_means["loss"]):
                raise TrainingDiverged(
                    f"training loss became {train_means['loss']} in epoch {epoch}; "
                    f"lower --config.train.learning_rate (now {tc.learning_rate}) or --config.train.clip_norm"
                )
            val = evaluate(eval_fn, state.variables, exp.val_windows, exp.val_units, chunk, mesh, eval_rng)

            record = {
                "epoch": epoch,
                "step": int(state.step),
                **{f"train/{k}": v for k, v in train_means.items()},
                **{f"val/{k}": v for k, v in val.items()},
                "seconds": round(time.time() - t0, 2),
            }
            score = _score(record, tc.select_metric)
            is_best = math.isfinite(score) and (best is None or score < best["score"])
            if is_best:
                best = {"score": score, "epoch": epoch, "step": record["step"], "val": val}
            records.append(record)
            last = epoch == tc.num_epochs or epoch == stop_after_epoch
            if main_process:  # metrics first: a crash before the checkpoint lands only loses this line on resume
                write_metrics(metrics_path, records)
                if last or time.time() - last_plot >= PLOT_INTERVAL_S:  # plotting costs about a second
                    plot_metrics(records, os.path.join(workdir, checkpoint.PLOT_FILE), tc.select_metric)
                    last_plot = time.time()
            meta = {"step": record["step"], "epoch": epoch, "val": val, "best": best}
            store.save(record["step"], state.variables, {"opt_state": state.opt_state, "rng": state.rng}, meta, is_best)
            if main_process:
                bar.write(
                    f"epoch {epoch}: loss {train_means['loss']:.4f} | val energy {val['energy_score']:.4f} "
                    f"mae_mean {val['mae_mean']:.4f} mae_best {val['mae_best']:.4f} (hold-last {val['mae_hold_last']:.4f})"
                    f"{' *' if is_best else ''} | {record['seconds']:.1f}s"
                )
            if last:
                break
        bar.close()
    finally:
        store.close()  # waits for the asynchronous saves
    return best or {}


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, stop_after_epoch: int | None = None) -> dict:
    """:func:`prepare` then :func:`fit`; returns the best epoch's record (score, epoch, step, val)."""
    return fit(prepare(config, workdir), stop_after_epoch=stop_after_epoch)


def _round_up(x: int, multiple: int) -> int:
    return -(-x // multiple) * multiple


# -- command line -----------------------------------------------------------------------------------


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise SystemExit(f"error: unexpected arguments {argv[1:]}; flags look like --workdir=DIR")
    if not FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)  # orbax logs every file it writes at INFO
    parallel.initialize_distributed()
    try:
        if FLAGS["config"].value is None:
            raise ValueError("--config is required, e.g. --config configs/vrnn_vox.py:cpu")
        path = config_flags.get_config_filename(FLAGS["config"]).split(":", 1)[0]  # drop ":arg"
        if not os.path.isfile(path):
            raise FileNotFoundError(f"config file {path!r} not found; the configs are in configs/, e.g. configs/demo.py")
        exp = prepare(FLAGS.config, FLAGS.workdir)
    except (ValueError, OSError) as e:
        raise SystemExit(f"error: {one_line(e)}") from None
    try:
        best = fit(exp)
    except TrainingDiverged as e:
        raise SystemExit(f"error: {e}") from None
    if parallel.is_main_process() and best:
        scores = ", ".join(f"{k} {v:.4f}" for k, v in best["val"].items())
        print(
            f"best checkpoint: {os.path.join(FLAGS.workdir, checkpoint.BEST_DIR)} (epoch {best['epoch']}, "
            f"step {best['step']}; val {exp.config.train.select_metric} {best['score']:.4f}) | {scores}"
        )
    parallel.finish_distributed()


def run() -> None:
    """The console entry point: ``python -m train.forecaster ...``."""
    app.run(main, flags_parser=parse_flags)


if __name__ == "__main__":
    run()
