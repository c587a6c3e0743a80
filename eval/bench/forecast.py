"""Closed-loop sampling speed: ``python -m eval.bench forecast [--torch_reference] [--out FILE.json]``.

Measures the median time to draw S closed-loop samples of one N-M window (batch of one window)
with a randomly initialised forecaster (the VRNN: the authors' architecture and sizes) or a trained
one (``--forecaster``), as one jitted ``vmap``-ed call (``Forecaster.sample``) and as a Python loop
calling a jitted single-sample function once per sample (how the authors' PyTorch code draws them).
Compilation is excluded. ``--torch_reference`` also times the authors' VRNN in eager PyTorch in the
same run (``eval/bench/torch_reference.py``): their sampling procedure, and the same closed loop
batched over samples. The headline is kpflow's call against those same-run references; the
authors' 128 ms (100 samples x 24 steps on a 2-core CPU, docs/design.md) was measured on another
machine and is shown only as context.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import json
import os
import subprocess
import sys
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from eval.bench import timing
from kpflow import forecast
from kpflow.cli import UsageError
from kpflow.data import parse_horizon, synthetic_clips
from kpflow.keypoints import FEATURES_PER_KEYPOINT, CausalScaler
from kpflow.runs import load_forecaster

HELP = "closed-loop sampling: one vmap-ed jitted call vs a Python loop over samples"

# The authors' VRNN (appendix B of the papers; their published code): a 256-unit GRU fed the raw
# keypoint vector and z (no phi_x / phi_z embeddings: 80 inputs), a 20-d latent, 128-unit prior,
# posterior and decoder MLPs, and a deterministic decoder (its output is the frame; the samples'
# randomness is all in z). ``--set embed_inputs=True --set position_features=True
# --set decoder_temperature=1`` times Chung et al.'s layout, kpflow's VRNN default, instead.
AUTHORS_ARCHITECTURE: dict[str, Any] = {"embed_inputs": False, "position_features": False, "decoder_temperature": 0.0}
AUTHORS_SIZES: dict[str, dict[str, Any]] = {
    "vrnn": {"hidden": 256, "latent": 20, "prior_hidden": 128, "posterior_hidden": 128, "decoder_hidden": 128,
             **AUTHORS_ARCHITECTURE},
}
# Small sizes for smoke runs (``--tiny``): same code paths, negligible compile and run time.
TINY_SIZES: dict[str, dict[str, Any]] = {
    "vrnn": {"hidden": 16, "latent": 4, "prior_hidden": 16, "posterior_hidden": 16, "decoder_hidden": 16,
             **AUTHORS_ARCHITECTURE},
}

# The authors' PyTorch VRNN on the 2-core CPU of docs/design.md's reference measurements: context only,
# since it was timed on another machine; the headline ratios are against --torch_reference.
REFERENCE = {
    "what": "authors' PyTorch VRNN, Python loop over samples",
    "ms": 128.0,
    "samples": 100,
    "num_observed": 12,
    "horizon": 12,
    "device": "2-core CPU",
    "source": "docs/design.md, 'Reference measurements'",
}

# The same-run references of the headline: result key -> what it is.
TORCH_PROCEDURES = {
    "authors_procedure": "the authors' procedure in eager PyTorch",
    "closed_loop_batched": "the same closed loop batched in eager PyTorch",
}


def parse_assignment(text: str) -> tuple[str, Any]:
    """``"hidden=16"`` -> ("hidden", 16); values are Python literals, else strings."""
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"--set expects KEY=VALUE, got {text!r}")
    key, value = text.split("=", 1)
    try:
        return key.strip(), ast.literal_eval(value)
    except (ValueError, SyntaxError):
        return key.strip(), value


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="vrnn", help="registry name (kpflow.forecast.REGISTRY); default vrnn")
    p.add_argument("--horizon", default="12-12", help="observed-predicted frames N-M (default 12-12)")
    p.add_argument("--samples", type=int, default=100, help="samples per window S (default 100)")
    p.add_argument("--repeats", type=int, default=20, help="timed calls per variant; the median is reported")
    p.add_argument("--tiny", action="store_true", help="small model sizes, for smoke tests")
    p.add_argument(
        "--set", dest="overrides", action="append", default=[], type=parse_assignment, metavar="KEY=VALUE",
        help="override a model hyper-parameter (repeatable), e.g. --set hidden=64",
    )
    p.add_argument("--dim", type=int, default=60, help="numbers per frame, 6K (default 60)")
    p.add_argument("--forecaster", default="",
                   help="a forecaster workdir (train.forecaster): time that trained model, at its own horizon "
                        "and sizes, instead of a randomly initialised --model")
    p.add_argument("--torch_reference", action="store_true",
                   help="also time the authors' VRNN in eager PyTorch, in a child process right after kpflow's "
                        "calls (eval/bench/torch_reference.py): their sampling procedure, and the same closed-loop "
                        "computation as kpflow batched over samples (needs the torch extra)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--skip_loop", action="store_true", help="skip the Python loop over samples")
    p.add_argument("--skip_eager", action="store_true", help="skip the un-jitted (op-by-op) call")
    p.add_argument("--dtypes", default="float32",
                   help="comma-separated matmul dtypes timed side by side, float32 first, e.g. float32,bfloat16 "
                        "(bfloat16 products with float32 accumulation; models with a matmul_dtype field)")


def model_hparams(model: str, tiny: bool, overrides: list[tuple[str, Any]]) -> dict[str, Any]:
    """The authors' sizes for ``model`` (or the tiny ones), then ``--set`` overrides."""
    hparams = dict((TINY_SIZES if tiny else AUTHORS_SIZES).get(model, {}))
    hparams.update(dict(overrides))
    return hparams


def load_trained(workdir: str):
    """``kpflow.runs.load_forecaster(workdir)``; a failure is one UsageError line naming ``--forecaster``."""
    try:
        return load_forecaster(workdir, flag="--forecaster")
    except UsageError as e:
        detail = str(e)  # without the folder's name, which the message names once
        for prefix in (f"--forecaster {workdir!r}", f"cannot load the forecaster in {workdir!r}"):
            detail = detail.removeprefix(prefix)
        raise UsageError(f"cannot load --forecaster {workdir!r}: {detail.lstrip(': ')}") from None


def spread_zero_kernels(variables, rng):
    """Give every all-zero weight matrix of ``variables`` random values (scaled by 1/sqrt(fan-in)).

    Output layers that start at zero (the VRNN decoder's mean, so that an untrained model forecasts
    hold-last) make an untrained model with a deterministic decoder draw identical samples. Timing
    does not depend on the values, but the bfloat16 comparison needs samples that spread.
    """
    leaves, treedef = jax.tree_util.tree_flatten_with_path(variables)
    keys = jax.random.split(rng, max(len(leaves), 1))

    def spread(key, path, x):
        kernel = jax.tree_util.keystr(path[-1:]).endswith("'kernel']") and getattr(x, "ndim", 0) == 2
        return jax.random.normal(key, x.shape, x.dtype) / jnp.sqrt(x.shape[0]) if kernel and not jnp.any(x) else x

    return jax.tree_util.tree_unflatten(treedef, [spread(k, p, x) for k, (p, x) in zip(keys, leaves)])


@dataclasses.dataclass(frozen=True)
class Subject:
    """What is timed, resolved from the arguments: the forecaster and its window's shape."""

    model: str  # as reported: the registry name, or "name (workdir)" for a trained model
    forecaster: forecast.Forecaster
    num_observed: int
    horizon: int
    dim: int
    dtypes: tuple[str, ...]  # matmul dtypes, float32 first
    trained: Any = None  # kpflow.checkpoint.Trained for --forecaster, else None


def resolve(args: argparse.Namespace) -> Subject:
    """Validate the arguments and build (or load) the forecaster; UsageError on a bad argument."""
    if args.samples < 1 or args.repeats < 1:
        raise UsageError("--samples and --repeats must be >= 1")
    try:
        n, m = parse_horizon(args.horizon)
    except ValueError as e:
        raise UsageError(str(e)) from None
    dtypes = tuple(d.strip() for d in args.dtypes.split(",") if d.strip())
    if not dtypes or dtypes[0] != "float32" or set(dtypes) - {"float32", "bfloat16"}:
        raise UsageError(f"--dtypes must start with float32 and name float32 / bfloat16; got {args.dtypes!r}")
    if args.forecaster:
        if args.overrides or args.tiny:
            raise UsageError("--forecaster times the trained model as it is; drop --set / --tiny")
        trained = load_trained(args.forecaster)
        subject = Subject(f"{trained.config.model.name} ({args.forecaster})", trained.forecaster,
                          trained.config.num_observed, trained.config.num_predicted, trained.train_clips.dim,
                          dtypes, trained)
    else:
        hparams = model_hparams(args.model, args.tiny, args.overrides)
        try:
            f = forecast.create(args.model, dim=args.dim, num_observed=n, horizon=m, **hparams)
        except (ValueError, ImportError) as e:
            raise UsageError(f"cannot build {args.model!r}: {e}") from None
        subject = Subject(args.model, f, n, m, args.dim, dtypes)
    module = subject.forecaster.module
    if args.torch_reference and (args.forecaster or getattr(module, "embed_inputs", True)
                                 or getattr(module, "position_features", True)):
        raise UsageError("--torch_reference re-times the authors' VRNN architecture; use the default --model vrnn "
                         "(no --forecaster, no --set embed_inputs / position_features)")
    if len(dtypes) > 1 and "matmul_dtype" not in {f.name for f in dataclasses.fields(module)}:
        raise UsageError(f"{subject.model} has no matmul_dtype field; use --dtypes float32")
    return subject


def window_and_variables(subject: Subject, seed: int):
    """A realistic window's context ``[1, N, D]`` (synthetic head motion) and the variables to time:
    the trained ones, or a random init with a scaler fitted on other synthetic clips."""
    n, m = subject.num_observed, subject.horizon
    clips = synthetic_clips(num_clips=4, num_speakers=2, min_frames=4 * (n + m), max_frames=4 * (n + m),
                            num_keypoints=subject.dim // FEATURES_PER_KEYPOINT, seed=seed)
    series = list(clips.values())
    window = np.asarray(series[0][None, : n + m])  # [1, N+M, D]
    context = jax.device_put(window[:, :n])  # [1, N, D]
    init_rng, sample_rng = jax.random.split(jax.random.PRNGKey(seed))
    if subject.trained is not None:
        return context, subject.trained.variables, sample_rng  # its own scaler: scaled as in training
    scaler = CausalScaler.fit(series[1:])
    # Jitted: an eager init of a scanned recurrent module dispatches op by op and takes seconds.
    variables = spread_zero_kernels(jax.jit(subject.forecaster.init)(init_rng, window, scaler), init_rng)
    return context, variables, sample_rng


def time_vmapped(subject: Subject, variables, context, rng, samples: int, repeats: int) -> dict[str, Any]:
    """Every matmul dtype's vmap-ed call, compiled and checked first, then timed in turn (round-robin).

    Returns ``{"times": {dtype: [ms]}, "outputs": {dtype: samples [S, 1, M, D]}}``."""
    f, m = subject.forecaster, subject.horizon
    calls, outputs = {}, {}
    for name in subject.dtypes:
        low = f if name == "float32" else dataclasses.replace(f, module=f.module.clone(matmul_dtype=name))
        calls[name] = jax.jit(lambda v, c, k, low=low: low.sample(v, c, m, k, samples))
        outputs[name] = np.asarray(calls[name](variables, context, rng))
    expected = (samples, 1, m, subject.dim)
    if outputs["float32"].shape != expected:
        raise UsageError(f"{subject.model}.sample returned {outputs['float32'].shape}, expected {expected}")
    fns = {name: (lambda c=c: c(variables, context, rng).block_until_ready()) for name, c in calls.items()}
    return {"times": timing.time_interleaved(fns, repeats), "outputs": outputs}


def dtype_entries(vmapped: dict[str, Any], float32: dict[str, Any]) -> dict[str, Any]:
    """Each lower precision: its times beside float32's (same parameters and keys, same machine
    state), and how far its samples move from float32's, relative to the samples' own spread."""
    entries = {"float32": float32}
    ref = vmapped["outputs"]["float32"]
    spread = float(np.mean(np.abs(ref - ref.mean(axis=0))))
    for name, times in vmapped["times"].items():
        if name == "float32":
            continue
        stats = timing.ms_stats(times)
        stats["speedup_vs_float32"] = float32["median_ms"] / stats["median_ms"]
        stats["sample_mae_vs_float32"] = float(np.mean(np.abs(vmapped["outputs"][name] - ref)))
        stats["relative_to_sample_spread"] = stats["sample_mae_vs_float32"] / spread if spread > 0 else None
        entries[name] = stats
    return entries


def time_loop_and_eager(subject: Subject, variables, context, rng, args: argparse.Namespace) -> dict[str, Any]:
    """The Python loop over samples and the un-jitted call (unless skipped), each against the vmap-ed call."""
    f, m, s = subject.forecaster, subject.horizon, args.samples
    out: dict[str, Any] = {}
    if not args.skip_loop:
        sample_one = jax.jit(lambda v, c, k: f.sample(v, c, m, k, 1))
        keys = list(jax.random.split(rng, s))  # made outside the timed region

        def loop():
            jax.block_until_ready([sample_one(variables, context, k) for k in keys])

        out["python_loop"] = timing.ms_stats(timing.time_calls(loop, args.repeats))
    if not args.skip_eager:
        # The same vmap-ed sampling without jit: every operation dispatched on its own (lax.scan
        # runs as a Python loop under disable_jit). Few repeats: it is slow by design.
        def eager():
            with jax.disable_jit():
                jax.block_until_ready(f.sample(variables, context, m, rng, s))

        out["vmap_eager"] = timing.ms_stats(timing.time_calls(eager, min(args.repeats, 3)))
    return out


def torch_reference_times(module, subject: Subject, args: argparse.Namespace) -> dict[str, Any]:
    """``--torch_reference``: eval/bench/torch_reference.py in a child process, right after kpflow's timing.

    A child process, because the two cores cannot host both thread pools: called in turn in one
    process, PyTorch's OpenMP workers and XLA's threads slowed each other by up to 2x."""
    fields = ("hidden", "latent", "prior_hidden", "posterior_hidden", "decoder_hidden")
    params = {k: getattr(module, k) for k in fields}
    params.update(num_observed=subject.num_observed, horizon=subject.horizon, samples=args.samples,
                  repeats=args.repeats, seed=args.seed, dim=subject.dim)
    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    proc = subprocess.run([sys.executable, "-m", "eval.bench.torch_reference", json.dumps(params)],
                          capture_output=True, text=True, check=False, cwd=repo)
    if proc.returncode != 0:
        last = (proc.stderr.strip() or proc.stdout.strip() or "no output").splitlines()[-1]
        raise UsageError(f"the PyTorch reference failed: {last}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def forecast_headline(result: dict[str, Any]) -> dict[str, Any]:
    """kpflow's vmap-ed call against every reference timed in this run; the authors' 128 ms, timed on
    another machine, only as context."""
    same_run = {f"torch_{name}": (what, result["torch_reference"][name]["median_ms"])
                for name, what in TORCH_PROCEDURES.items() if name in result.get("torch_reference", {})}
    if "python_loop" in result:
        same_run["python_loop"] = ("a Python loop over samples", result["python_loop"]["median_ms"])
    ref = result["reference"]
    context = (f"the authors' PyTorch code on a {ref['device']} (another machine; docs/design.md)", ref["ms"])
    return timing.headline("kpflow's vmap-ed jitted call", result["vmap_jit"]["median_ms"], same_run,
                           context if ref["comparable"] else None)


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Time S closed-loop samples of one N-M window: vmap-ed jitted call vs Python loop over samples."""
    subject = resolve(args)
    context, variables, rng = window_and_variables(subject, args.seed)
    vmapped = time_vmapped(subject, variables, context, rng, args.samples, args.repeats)
    fields = {f.name: getattr(subject.forecaster.module, f.name)
              for f in dataclasses.fields(subject.forecaster.module) if f.name not in ("parent", "name")}
    if "io" in fields:  # the input/output layer's fields, as the config's model.io block holds them
        fields["io"] = dataclasses.asdict(fields["io"])
    result: dict[str, Any] = {
        "benchmark": "forecast",
        "model": subject.model,
        "weights": args.forecaster or "random",
        "hparams": fields,
        "num_params": timing.count_params(variables),
        "num_observed": subject.num_observed,
        "horizon": subject.horizon,
        "batch": 1,
        "samples": args.samples,
        "repeats": args.repeats,
        "vmap_jit": timing.ms_stats(vmapped["times"]["float32"]),
    }
    vmap_ms = result["vmap_jit"]["median_ms"]
    if len(subject.dtypes) > 1:
        result["dtypes"] = dtype_entries(vmapped, result["vmap_jit"])
        result["timing"] = "interleaved"
    others = time_loop_and_eager(subject, variables, context, rng, args)
    if "python_loop" in others:
        result["python_loop"] = others["python_loop"]
        result["loop_over_vmap"] = others["python_loop"]["median_ms"] / vmap_ms
    if "vmap_eager" in others:
        result["vmap_eager"] = others["vmap_eager"]
        result["eager_over_jit"] = others["vmap_eager"]["median_ms"] / vmap_ms
    add_reference_context(result)
    if args.torch_reference:
        result["torch_reference"] = torch_reference_times(subject.forecaster.module, subject, args)
        for name in TORCH_PROCEDURES:
            d = result["torch_reference"][name]
            d["kpflow_speedup"] = d["median_ms"] / vmap_ms
    result["headline"] = forecast_headline(result)
    result["environment"] = timing.environment()
    return result


def add_reference_context(result: dict[str, Any]) -> None:
    """The authors' 128 ms (another machine) and the ratios against it, where the settings match."""
    ref = REFERENCE
    comparable = (result["samples"], result["num_observed"], result["horizon"]) == (
        ref["samples"], ref["num_observed"], ref["horizon"])
    ratio = (lambda ms: ref["ms"] / ms) if comparable else (lambda ms: None)
    result["reference"] = dict(ref, comparable=comparable)
    result["speedup_vs_reference"] = ratio(result["vmap_jit"]["median_ms"])
    for stats in result.get("dtypes", {}).values():
        stats["speedup_vs_reference"] = ratio(stats["median_ms"])
    if "python_loop" in result:
        result["loop_speedup_vs_reference"] = ratio(result["python_loop"]["median_ms"])


def format(r: dict[str, Any]) -> str:
    """The result as the table ``python -m eval.bench forecast`` prints, led by the same-run headline."""
    env = r["environment"]
    size = ", ".join(f"{k}={v}" for k, v in r["hparams"].items() if k not in ("dim", "num_observed", "horizon"))
    lines = [
        (f"forecast: {r['model']} ({size + '; ' if size else ''}{r['num_params']:,} params), "
         f"{r['num_observed']}-{r['horizon']} window, batch 1, {r['samples']} samples, median of {r['repeats']}"),
        (f"  backend {env['backend']} ({env['device_kind']}), {env['usable_cpus']}/{env['cpu_count']} CPUs, "
         f"jax {env['jax']}, flax {env['flax']}, python {env['python']}"),
        timing.format_headline(r["headline"]),
        f"  vmap + jit (one call):      {r['vmap_jit']['median_ms']:9.3f} ms",
    ]
    for name, d in r.get("dtypes", {}).items():
        if name == "float32":
            continue
        rel = d["relative_to_sample_spread"]
        spread = f" = {rel:.1e} of their spread" if rel is not None else " (the samples do not spread)"
        lines.append(f"  vmap + jit, {name} matmuls: {d['median_ms']:8.3f} ms   ({d['speedup_vs_float32']:.2f}x "
                     f"float32; samples move {d['sample_mae_vs_float32']:.2e} from float32's{spread})")
    if "python_loop" in r:
        lines.append(f"  Python loop over samples:  {r['python_loop']['median_ms']:9.3f} ms"
                     f"   ({r['loop_over_vmap']:.1f}x the vmap-ed call)")
    if "vmap_eager" in r:
        lines.append(f"  vmap, not jitted (eager):  {r['vmap_eager']['median_ms']:9.3f} ms"
                     f"   ({r['eager_over_jit']:.1f}x the jitted call)")
    for name, what in (("authors_procedure", "the authors' procedure"), ("closed_loop_batched", "closed loop, batched")):
        d = r.get("torch_reference", {}).get(name)
        if d:
            lines.append(f"  eager PyTorch, {what + ':':23s}{d['median_ms']:8.3f} ms   (kpflow's vmap-ed call "
                         f"{d['kpflow_speedup']:.1f}x faster)")
    ref = r["reference"]
    context = timing.format_context(r["headline"])
    if context:
        lines.append(context)
    else:
        lines.append(f"  authors' reference ({ref['samples']} samples, {ref['num_observed']}-{ref['horizon']}) "
                     "not comparable with these settings")
    return "\n".join(lines)
