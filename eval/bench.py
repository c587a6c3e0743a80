"""Speed benchmarks. ``python -m eval.bench <benchmark> [options]``; each prints a table and can write JSON.

Benchmarks (argparse subcommands; add one with a ``_add_<name>`` parser and a ``bench_<name>`` function):

- ``forecast``: median time to draw S closed-loop samples of one N-M window (batch of one window)
  with a randomly initialised forecaster (the VRNN: the authors' architecture and sizes) or a
  trained one (``--forecaster``), as one jitted ``vmap``-ed call (``Forecaster.sample``) and as a
  Python loop calling a jitted single-sample function once per sample (how the authors' PyTorch
  code draws them); ``--torch_reference`` adds eager-PyTorch timings of the authors' VRNN. Compilation is excluded from both. The reference is the authors'
  VRNN: 100 samples x 24 steps (12-12) in 128 ms on a 2-core CPU (DESIGN.md).
- ``fomm``: median (and IQR) milliseconds per frame of the FOMM keypoint detector and of the
  generator (dense motion included), each one jitted call on a batch of ``--batch`` frames,
  compiled beforehand, with randomly initialised weights (timing does not depend on values) at the
  official vox-256 config (``--config_variant tiny`` for a quick run). The reference is PyTorch
  FOMM on a 2-core CPU: generator 1.02 s/frame, detector 33 ms/frame (DESIGN.md).
- ``pipeline``: the whole system on one clip, end to end: S sampled futures of one N-M block
  forecast and rendered with ``kpflow.pipeline`` (default 100 samples x 24 frames at 256x256, the
  issue's GPU target), with the compiled memory of one rendering chunk and the device's peak.

Timings are measured here, never asserted in tests.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

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

# The authors' PyTorch VRNN on the 2-core CPU where DESIGN.md's facts were measured.
REFERENCE = {
    "what": "authors' PyTorch VRNN, Python loop over samples",
    "ms": 128.0,
    "samples": 100,
    "num_observed": 12,
    "horizon": 12,
    "device": "2-core CPU",
    "source": "DESIGN.md, 'Facts measured here'",
}

# PyTorch FOMM (vox-256 config) on the 2-core CPU where DESIGN.md's facts were measured.
FOMM_REFERENCE = {
    "what": "PyTorch FOMM, vox-256 config, one 256x256 frame",
    "cpu_ms": {"generator": 1020.0, "detector": 33.0},
    "params_m": {"generator": 45.6, "detector": 14.2},
    "gflop": {"generator": 107.0, "detector": 2.6},
    "frame_size": 256,
    "device": "2-core CPU",
    "source": "DESIGN.md, 'Facts measured here'",
}


# -- helpers --------------------------------------------------------------------------------------
def parse_assignment(text: str) -> tuple[str, Any]:
    """``"hidden=16"`` -> ("hidden", 16); values are Python literals, else strings."""
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"--set expects KEY=VALUE, got {text!r}")
    key, value = text.split("=", 1)
    try:
        return key.strip(), ast.literal_eval(value)
    except (ValueError, SyntaxError):
        return key.strip(), value


def time_calls(fn: Callable[[], Any], repeats: int) -> list[float]:
    """Milliseconds of ``repeats`` calls of ``fn`` after one warm-up call; ``fn`` must block on its result."""
    fn()  # compile / warm caches
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return times


def time_interleaved(fns: dict[str, Callable[[], Any]], repeats: int) -> dict[str, list[float]]:
    """Milliseconds of ``repeats`` calls of each of ``fns``, called in turn (round-robin) after one
    warm-up call each: a burst of load on a shared machine then slows every variant alike, so their
    ratio holds even when the absolute times move. Each ``fn`` must block on its result."""
    for fn in fns.values():
        fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append((time.perf_counter() - start) * 1e3)
    return times


def environment() -> dict[str, Any]:
    """Backend, devices, CPU count and versions: what a reader needs to compare two timings."""
    import flax
    import jax
    import jaxlib
    import numpy as np

    devices = jax.devices()
    try:
        usable_cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        usable_cpus = os.cpu_count()
    return {
        "backend": jax.default_backend(),
        "devices": [str(d) for d in devices],
        "device_kind": devices[0].device_kind,
        "cpu_count": os.cpu_count(),
        "usable_cpus": usable_cpus,
        "machine": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "python": platform.python_version(),
        "jax": jax.__version__,
        "jaxlib": jaxlib.__version__,
        "flax": flax.__version__,
        "numpy": np.__version__,
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
    }


def _ms_stats(times: list[float]) -> dict[str, Any]:
    q1, _, q3 = statistics.quantiles(times, n=4, method="inclusive") if len(times) > 1 else times * 3
    return {
        "median_ms": statistics.median(times),
        "iqr_ms": q3 - q1,
        "min_ms": min(times),
        "max_ms": max(times),
        "times_ms": [round(t, 4) for t in times],
    }


# -- forecast -------------------------------------------------------------------------------------
def _add_forecast(sub) -> None:
    p = sub.add_parser(
        "forecast",
        help="closed-loop sampling: one vmap-ed jitted call vs a Python loop over samples",
        description=bench_forecast.__doc__,
    )
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
                        "calls (eval/torch_reference.py): their sampling procedure, and the same closed-loop "
                        "computation as kpflow batched over samples (needs the torch extra)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--skip_loop", action="store_true", help="skip the Python loop over samples")
    p.add_argument("--skip_eager", action="store_true", help="skip the un-jitted (op-by-op) call")
    p.add_argument("--dtypes", default="float32",
                   help="comma-separated matmul dtypes timed side by side, float32 first, e.g. float32,bfloat16 "
                        "(bfloat16 products with float32 accumulation; models with a matmul_dtype field)")
    p.set_defaults(run=bench_forecast)


def model_hparams(model: str, tiny: bool, overrides: list[tuple[str, Any]]) -> dict[str, Any]:
    """The authors' sizes for ``model`` (or the tiny ones), then ``--set`` overrides."""
    hparams = dict((TINY_SIZES if tiny else AUTHORS_SIZES).get(model, {}))
    hparams.update(dict(overrides))
    return hparams


def load_forecaster(workdir: str, benchmark: str):
    """``kpflow.checkpoint.load_trained(workdir)``, any failure a one-line error naming ``--forecaster``."""
    from kpflow.checkpoint import load_trained

    try:
        return load_trained(workdir)
    except (FileNotFoundError, ValueError, KeyError, OSError) as e:
        raise SystemExit(f"eval.bench {benchmark}: cannot load --forecaster {workdir!r}: {e}") from None


def spread_zero_kernels(variables, rng):
    """Give every all-zero weight matrix of ``variables`` random values (scaled by 1/sqrt(fan-in)).

    Output layers that start at zero (the VRNN decoder's mean, so that an untrained model forecasts
    hold-last) make an untrained model with a deterministic decoder draw identical samples. Timing
    does not depend on the values, but the bfloat16 comparison needs samples that spread.
    """
    import jax
    import jax.numpy as jnp

    leaves, treedef = jax.tree_util.tree_flatten_with_path(variables)
    keys = jax.random.split(rng, max(len(leaves), 1))

    def spread(key, path, x):
        kernel = jax.tree_util.keystr(path[-1:]).endswith("'kernel']") and getattr(x, "ndim", 0) == 2
        return jax.random.normal(key, x.shape, x.dtype) / jnp.sqrt(x.shape[0]) if kernel and not jnp.any(x) else x

    return jax.tree_util.tree_unflatten(treedef, [spread(k, p, x) for k, (p, x) in zip(keys, leaves)])


def bench_forecast(args: argparse.Namespace) -> dict[str, Any]:
    """Time S closed-loop samples of one N-M window: vmap-ed jitted call vs Python loop over samples."""
    import jax
    import numpy as np

    from kpflow import forecast
    from kpflow.data import parse_horizon, synthetic_clips
    from kpflow.keypoints import CausalScaler

    if args.samples < 1 or args.repeats < 1:
        raise SystemExit("--samples and --repeats must be >= 1")
    try:
        n, m = parse_horizon(args.horizon)
    except ValueError as e:
        raise SystemExit(f"eval.bench forecast: {e}") from None
    dtypes = [d.strip() for d in args.dtypes.split(",") if d.strip()]
    if not dtypes or dtypes[0] != "float32" or set(dtypes) - {"float32", "bfloat16"}:
        raise SystemExit(f"eval.bench forecast: --dtypes must start with float32 and name float32 / bfloat16; "
                         f"got {args.dtypes!r}")
    trained = None
    if args.forecaster:
        if args.overrides or args.tiny:
            raise SystemExit("eval.bench forecast: --forecaster times the trained model as it is; "
                             "drop --set / --tiny")
        trained = load_forecaster(args.forecaster, "forecast")
        forecaster = trained.forecaster
        args.model = f"{trained.config.model.name} ({args.forecaster})"
        n, m, args.dim = trained.config.num_observed, trained.config.num_predicted, trained.train_clips.dim
    else:
        hparams = model_hparams(args.model, args.tiny, args.overrides)
        try:
            forecaster = forecast.create(args.model, dim=args.dim, num_observed=n, horizon=m, **hparams)
        except (ValueError, ImportError) as e:
            raise SystemExit(f"eval.bench forecast: cannot build {args.model!r}: {e}") from None
    module = forecaster.module
    if args.torch_reference and (args.forecaster or getattr(module, "embed_inputs", True)
                                 or getattr(module, "position_features", True)):
        raise SystemExit("eval.bench forecast: --torch_reference re-times the authors' VRNN architecture; use the "
                         "default --model vrnn (no --forecaster, no --set embed_inputs / position_features)")
    if len(dtypes) > 1 and "matmul_dtype" not in {f.name for f in dataclasses.fields(forecaster.module)}:
        raise SystemExit(f"eval.bench forecast: {args.model} has no matmul_dtype field; use --dtypes float32")

    # A realistic window (synthetic head motion) and a scaler fitted on other synthetic clips.
    clips = synthetic_clips(num_clips=4, num_speakers=2, min_frames=4 * (n + m), max_frames=4 * (n + m),
                            num_keypoints=args.dim // 6, seed=args.seed)
    series = list(clips.values())
    scaler = CausalScaler.fit(series[1:])
    window = np.asarray(series[0][None, : n + m])  # [1, N+M, D]
    context = jax.device_put(window[:, :n])  # [1, N, D]

    rng = jax.random.PRNGKey(args.seed)
    init_rng, sample_rng = jax.random.split(rng)
    if trained is not None:
        variables = trained.variables  # its own scaler: the window is scaled as in training
    else:
        # Jitted: an eager init of a scanned recurrent module dispatches op by op and takes seconds.
        variables = spread_zero_kernels(jax.jit(forecaster.init)(init_rng, window, scaler), init_rng)
    num_params = int(sum(np.size(x) for x in jax.tree_util.tree_leaves(variables.get("params", {}))))

    s = args.samples
    sample_all = jax.jit(lambda v, c, k: forecaster.sample(v, c, m, k, s))
    sample_one = jax.jit(lambda v, c, k: forecaster.sample(v, c, m, k, 1))

    out = sample_all(variables, context, sample_rng)
    if out.shape != (s, 1, m, args.dim):
        raise SystemExit(f"{args.model}.sample returned {out.shape}, expected {(s, 1, m, args.dim)}")

    # Every matmul dtype's vmap-ed call, compiled and checked first, then timed in turn (round-robin).
    calls = {"float32": sample_all}
    low_outs = {}
    for name in dtypes[1:]:
        low = dataclasses.replace(forecaster, module=forecaster.module.clone(matmul_dtype=name))
        calls[name] = jax.jit(lambda v, c, k, f=low: f.sample(v, c, m, k, s))
        low_outs[name] = np.asarray(calls[name](variables, context, sample_rng))
    fns = {name: (lambda f=f: f(variables, context, sample_rng).block_until_ready()) for name, f in calls.items()}
    timed = time_interleaved(fns, args.repeats)
    vmapped = timed["float32"]

    result: dict[str, Any] = {
        "benchmark": "forecast",
        "model": args.model,
        "weights": args.forecaster or "random",
        "hparams": _module_fields(forecaster.module),
        "num_params": num_params,
        "num_observed": n,
        "horizon": m,
        "batch": 1,
        "samples": s,
        "repeats": args.repeats,
        "vmap_jit": _ms_stats(vmapped),
    }
    if len(dtypes) > 1:
        # Each lower precision: the same parameters and keys, timed in turn with float32 (same machine
        # state), and how far its samples move from float32's, relative to the samples' own spread.
        result["dtypes"] = {"float32": result["vmap_jit"]}
        result["timing"] = "interleaved"
        ref = np.asarray(out)
        spread = float(np.mean(np.abs(ref - ref.mean(axis=0))))
        for name in dtypes[1:]:
            low_out = low_outs[name]
            stats = _ms_stats(timed[name])
            stats["speedup_vs_float32"] = result["vmap_jit"]["median_ms"] / stats["median_ms"]
            stats["sample_mae_vs_float32"] = float(np.mean(np.abs(low_out - ref)))
            stats["relative_to_sample_spread"] = stats["sample_mae_vs_float32"] / spread if spread > 0 else None
            result["dtypes"][name] = stats
    if not args.skip_loop:
        keys = list(jax.random.split(sample_rng, s))  # made outside the timed region

        def loop():
            outs = [sample_one(variables, context, k) for k in keys]
            jax.block_until_ready(outs)

        result["python_loop"] = _ms_stats(time_calls(loop, args.repeats))
        result["loop_over_vmap"] = result["python_loop"]["median_ms"] / result["vmap_jit"]["median_ms"]
    if not args.skip_eager:
        # The same vmap-ed sampling without jit: every operation dispatched on its own (lax.scan
        # runs as a Python loop under disable_jit). Few repeats: it is slow by design.
        def eager():
            with jax.disable_jit():
                jax.block_until_ready(forecaster.sample(variables, context, m, sample_rng, s))

        result["vmap_eager"] = _ms_stats(time_calls(eager, min(args.repeats, 3)))
        result["eager_over_jit"] = result["vmap_eager"]["median_ms"] / result["vmap_jit"]["median_ms"]

    comparable = (s, n, m) == (REFERENCE["samples"], REFERENCE["num_observed"], REFERENCE["horizon"])
    result["reference"] = dict(REFERENCE, comparable=comparable)
    result["speedup_vs_reference"] = REFERENCE["ms"] / result["vmap_jit"]["median_ms"] if comparable else None
    for stats in result.get("dtypes", {}).values():
        stats["speedup_vs_reference"] = REFERENCE["ms"] / stats["median_ms"] if comparable else None
    if "python_loop" in result:
        result["loop_speedup_vs_reference"] = (
            REFERENCE["ms"] / result["python_loop"]["median_ms"] if comparable else None
        )
    if args.torch_reference:
        result["torch_reference"] = torch_reference_times(forecaster.module, n, m, s, args)
        for name in ("authors_procedure", "closed_loop_batched"):
            d = result["torch_reference"][name]
            d["kpflow_speedup"] = d["median_ms"] / result["vmap_jit"]["median_ms"]
    result["environment"] = environment()
    return result


def torch_reference_times(module, n: int, m: int, s: int, args) -> dict[str, Any]:
    """``--torch_reference``: eval/torch_reference.py in a child process, right after kpflow's timing.

    A child process, because the two cores cannot host both thread pools: called in turn in one
    process, PyTorch's OpenMP workers and XLA's threads slowed each other by up to 2x."""
    fields = ("hidden", "latent", "prior_hidden", "posterior_hidden", "decoder_hidden")
    params = {k: getattr(module, k) for k in fields}
    params.update(num_observed=n, horizon=m, samples=s, repeats=args.repeats, seed=args.seed, dim=args.dim)
    proc = subprocess.run([sys.executable, "-m", "eval.torch_reference", json.dumps(params)],
                          capture_output=True, text=True, check=False,
                          cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    if proc.returncode != 0:
        last = (proc.stderr.strip() or proc.stdout.strip() or "no output").splitlines()[-1]
        raise SystemExit(f"eval.bench forecast: the PyTorch reference failed: {last}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _module_fields(module) -> dict[str, Any]:
    return {f.name: getattr(module, f.name) for f in dataclasses.fields(module) if f.name not in ("parent", "name")}


def format_forecast(r: dict[str, Any]) -> str:
    env = r["environment"]
    size = ", ".join(f"{k}={v}" for k, v in r["hparams"].items() if k not in ("dim", "num_observed", "horizon"))
    lines = [
        (
            f"forecast: {r['model']} ({size + '; ' if size else ''}{r['num_params']:,} params), "
            f"{r['num_observed']}-{r['horizon']} window, batch 1, {r['samples']} samples, median of {r['repeats']}"
        ),
        (
            f"  backend {env['backend']} ({env['device_kind']}), {env['usable_cpus']}/{env['cpu_count']} CPUs, "
            f"jax {env['jax']}, flax {env['flax']}, python {env['python']}"
        ),
        f"  vmap + jit (one call):      {r['vmap_jit']['median_ms']:9.3f} ms",
    ]
    for name, d in r.get("dtypes", {}).items():
        if name == "float32":
            continue
        ref = f", {d['speedup_vs_reference']:.1f}x the authors'" if d.get("speedup_vs_reference") else ""
        rel = d["relative_to_sample_spread"]
        spread = f" = {rel:.1e} of their spread" if rel is not None else " (the samples do not spread)"
        lines.append(f"  vmap + jit, {name} matmuls: {d['median_ms']:8.3f} ms   ({d['speedup_vs_float32']:.2f}x "
                     f"float32{ref}; samples move {d['sample_mae_vs_float32']:.2e} from float32's{spread})")
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
    if ref["comparable"]:
        lines.append(f"  authors' PyTorch (loop):   {ref['ms']:9.3f} ms on a {ref['device']}"
                     f"   -> vmap speed-up {r['speedup_vs_reference']:.1f}x")
    else:
        lines.append(f"  authors' reference ({ref['samples']} samples, {ref['num_observed']}-{ref['horizon']}) "
                     "not comparable with these settings")
    return "\n".join(lines)


# -- fomm -----------------------------------------------------------------------------------------
def _add_fomm(sub) -> None:
    p = sub.add_parser(
        "fomm",
        help="FOMM keypoint detector and generator: ms per frame, jitted, compilation excluded",
        description=bench_fomm.__doc__,
    )
    p.add_argument("--dataset", default="vox", help="FOMM config dataset (default vox)")
    p.add_argument("--config_variant", default="", choices=("", "tiny"),
                   help="'' for the official config (default), 'tiny' for a quick run")
    p.add_argument("--frame_size", type=int, default=256,
                   help="frame height and width (default 256)")
    p.add_argument("--batch", type=int, default=1, help="frames per call (default 1)")
    p.add_argument("--repeats", type=int, default=10, help="timed calls per network (default 10)")
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"),
                   help="compute dtype of the networks (parameters stay float32)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(run=bench_fomm)


def _num_params(variables) -> int:
    import jax
    import numpy as np

    return int(sum(np.size(x) for x in jax.tree_util.tree_leaves(variables.get("params", {}))))


def bench_fomm(args: argparse.Namespace) -> dict[str, Any]:
    """Time FOMM's keypoint detector and generator (with dense motion) per frame, jitted.

    Each network is one jitted call on ``[batch, S, S, 3]`` frames (the generator also gets source
    and driving keypoints, detected beforehand), compiled and run once before the timed calls;
    every call blocks on its result. Per-frame times are call times divided by the batch.
    """
    import jax
    import jax.numpy as jnp

    from configs.fomm_common import fomm_config
    from kpflow.fomm.model import build_networks, init_variables

    if args.batch < 1 or args.repeats < 1 or args.frame_size < 8:
        raise SystemExit("eval.bench fomm: --batch and --repeats must be >= 1, --frame_size >= 8")
    try:
        config = fomm_config(args.dataset, args.config_variant)
    except ValueError as e:
        raise SystemExit(f"eval.bench fomm: {e}") from None
    dtype = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}[args.dtype]
    nets = build_networks(config.model, dtype=dtype)
    shape = (args.frame_size, args.frame_size)
    # Jitted, and the "unsafe_rbg" generator: XLA compiles a threefry draw per parameter slowly on
    # CPUs (tens of seconds even for the tiny config); the values do not matter for timing.
    init = jax.jit(lambda k: init_variables(nets, k, shape, with_discriminator=False))
    variables = init(jax.random.key(args.seed, impl="unsafe_rbg"))
    det_vars, gen_vars = variables["kp_detector"], variables["generator"]

    rng = jax.random.key(args.seed + 1)
    frames = jax.random.uniform(rng, (2, args.batch, *shape, 3), jnp.float32)
    source, driving = frames[0], frames[1]
    detect = jax.jit(lambda v, x: nets.kp_detector.apply(v, x))
    # Only the prediction is returned, as an inference user needs; dense motion runs regardless.
    generate = jax.jit(lambda v, s, ks, kd: nets.generator.apply(v, s, ks, kd)["prediction"])
    kp_source = jax.block_until_ready(detect(det_vars, source))
    kp_driving = jax.block_until_ready(detect(det_vars, driving))
    prediction = jax.block_until_ready(generate(gen_vars, source, kp_source, kp_driving))
    if prediction.shape != source.shape:
        raise SystemExit(f"the generator returned {prediction.shape}, expected {source.shape}")

    def per_frame(times: list[float]) -> dict[str, Any]:
        return _ms_stats([t / args.batch for t in times])

    def run_detector():
        jax.block_until_ready(detect(det_vars, driving))

    def run_generator():
        jax.block_until_ready(generate(gen_vars, source, kp_source, kp_driving))

    load_before = _load_average()
    detector = per_frame(time_calls(run_detector, args.repeats))
    generator = per_frame(time_calls(run_generator, args.repeats))
    load_after = _load_average()

    ref = FOMM_REFERENCE["cpu_ms"]
    ours = {"generator": generator["median_ms"], "detector": detector["median_ms"]}
    env = environment()
    return {
        "benchmark": "fomm",
        "dataset": args.dataset,
        "config_variant": args.config_variant or "official",
        "frame_size": args.frame_size,
        "batch": args.batch,
        "repeats": args.repeats,
        "dtype": args.dtype,
        "params_m": {
            "generator": _num_params(gen_vars) / 1e6,
            "detector": _num_params(det_vars) / 1e6,
        },
        "device_kind": env["device_kind"],
        "detector": detector,
        "generator": generator,
        "reference": FOMM_REFERENCE,
        "reference_cpu_ms": dict(ref),
        "comparable": args.config_variant == "" and args.frame_size == FOMM_REFERENCE["frame_size"],
        # reference / ours: > 1 means faster than the PyTorch reference on its 2-core CPU.
        "ratio_reference_over_ours": {k: ref[k] / ours[k] for k in ref},
        # Other processes on the machine slow CPU timings down: the 1-minute load average
        # before and after the timed calls (above the number of CPUs means contention).
        "load_average_1m": {"before": load_before, "after": load_after},
        "environment": env,
    }


def _load_average() -> float | None:
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):  # not on Unix
        return None


def format_fomm(r: dict[str, Any]) -> str:
    env, ref = r["environment"], r["reference"]
    lines = [
        (
            f"fomm: {r['dataset']} {r['config_variant']} config, "
            f"{r['frame_size']}x{r['frame_size']} frames, batch {r['batch']}, {r['dtype']}, "
            f"median of {r['repeats']}"
        ),
        (
            f"  backend {env['backend']} ({env['device_kind']}), "
            f"{env['usable_cpus']}/{env['cpu_count']} CPUs, jax {env['jax']}, flax {env['flax']}"
        ),
        (
            f"  {'network':<10} {'params':>8} {'ms/frame':>10} {'IQR':>8} {'reference CPU':>14} "
            f"{'ref/ours':>9}"
        ),
    ]
    for name in ("detector", "generator"):
        t = r[name]
        lines.append(
            f"  {name:<10} {r['params_m'][name]:7.2f}M {t['median_ms']:10.3f} {t['iqr_ms']:8.3f} "
            f"{ref['cpu_ms'][name]:11.0f} ms {r['ratio_reference_over_ours'][name]:8.2f}x"
        )
    load, cpus = r["load_average_1m"]["after"], env["usable_cpus"]
    if env["backend"] == "cpu" and load is not None and cpus and load > cpus:
        lines.append(f"  (load average {load:.1f} on {cpus} CPUs: other processes were running; "
                     "these CPU timings are inflated)")
    if not r["comparable"]:
        size = f"{ref['frame_size']}x{ref['frame_size']}"
        lines.append(f"  (the reference is the official config at {size}; "
                     "these settings are not comparable)")
    return "\n".join(lines)


# -- the whole system ------------------------------------------------------------------------------
def _add_system_args(p) -> None:
    """The FOMM and forecaster options of the whole-system benchmarks."""
    p.add_argument("--dataset", default="vox", help="FOMM config dataset (default vox)")
    p.add_argument("--config_variant", default="", choices=("", "tiny"),
                   help="'' for the official FOMM config (default), 'tiny' for a quick run")
    p.add_argument("--frame_size", type=int, default=256, help="frame height and width (default 256)")
    p.add_argument("--model", default="vrnn", help="forecaster (default vrnn, the authors' sizes)")
    p.add_argument("--tiny", action="store_true", help="tiny forecaster sizes")


def _add_pipeline(sub) -> None:
    p = sub.add_parser(
        "pipeline",
        help="end to end: S sampled futures of one N-M block forecast and rendered (kpflow.pipeline)",
        description=bench_pipeline.__doc__,
    )
    _add_system_args(p)
    p.add_argument("--samples", type=int, default=100, help="sampled futures (default 100)")
    p.add_argument("--horizon", default="12-12", help="N-M (default 12-12: 24 frames, 12 forecast)")
    p.add_argument("--chunk_size", type=int, default=16, help="frames per compiled rendering call (default 16)")
    p.add_argument("--repeats", type=int, default=1, help="timed end-to-end runs (default 1)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(run=bench_pipeline)


def _device_peak_bytes() -> int | None:
    import jax

    stats = jax.devices()[0].memory_stats() or {}
    return stats.get("peak_bytes_in_use")


def bench_pipeline(args: argparse.Namespace) -> dict[str, Any]:
    """Time the whole system on one clip: ``--samples`` futures of an N-M block, rendered.

    A randomly initialised FOMM (timing does not depend on weights) and forecaster; the clip is one
    N+M block of random frames. One end-to-end run: detect the source keypoints, forecast S futures
    of the M frames with one vmapped call, normalise, and render the N transmitted frames once plus
    S x M forecast frames in chunks of ``--chunk_size`` (``kpflow.pipeline.MotionTransfer.run``,
    transfer mode). Compilation is excluded (a first run warms up). Reports the seconds per run,
    frames per second, and memory: XLA's compiled size of one rendering chunk and, on GPUs, the
    device's peak bytes in use.
    """
    import jax
    import jax.numpy as jnp
    import numpy as np

    from configs.fomm_common import fomm_config
    from kpflow import forecast, pipeline
    from kpflow.fomm.model import random_fomm

    schedule = pipeline.Schedule.parse(args.horizon)
    if args.samples < 1 or args.repeats < 1 or args.chunk_size < 1 or args.frame_size < 8 or schedule.horizon < 1:
        raise SystemExit("eval.bench pipeline: --samples, --repeats, --chunk_size >= 1, --frame_size >= 8, M >= 1")
    config = fomm_config(args.dataset, args.config_variant)
    config.data.frame_shape = (args.frame_size, args.frame_size, 3)
    shape = (args.frame_size, args.frame_size)
    fomm = random_fomm(config, args.seed)
    dim = 6 * fomm.num_kp

    sizes = (TINY_SIZES if args.tiny else AUTHORS_SIZES).get(args.model, {})
    f = forecast.create(args.model, dim=dim, num_observed=schedule.num_observed, horizon=schedule.horizon, **sizes)
    rng = np.random.default_rng(args.seed)
    frames = rng.uniform(0, 1, (schedule.period, *shape, 3)).astype(np.float32)
    series = np.asarray(fomm.detect(frames).to_vector())
    variables = f.init(jax.random.key(args.seed), jnp.asarray(series[None]))
    system = pipeline.MotionTransfer(fomm, pipeline.forecaster_predictor(f, variables), schedule, "transfer",
                                     chunk_size=args.chunk_size)
    source = rng.uniform(0, 1, (*shape, 3)).astype(np.float32)

    def run_once(i: int):
        return system.run(source, series, jax.random.key(i), args.samples)

    out = run_once(0)  # compile (time_calls warms up once more: cheap next to compilation)
    times = [t / 1e3 for t in time_calls(lambda: run_once(1), args.repeats)]  # ms -> s
    rendered = pipeline.frames_needed(schedule, schedule.period, args.samples)
    chunk = system.renderer._render_chunk.lower(
        fomm.variables["generator"], jnp.asarray(source), out.kp_source,
        jax.tree.map(lambda x: jnp.zeros((args.chunk_size,) + x.shape[1:], x.dtype),
                     jax.tree.map(lambda x: x[0], pipeline.Keypoints.from_vector(jnp.asarray(out.keypoints)))),
    ).compile()
    mem = chunk.memory_analysis()
    chunk_bytes = None
    if mem is not None:
        chunk_bytes = int(sum(getattr(mem, k, 0) or 0 for k in (
            "temp_size_in_bytes", "argument_size_in_bytes", "output_size_in_bytes")))
    median = statistics.median(times)
    env = environment()
    return {
        "benchmark": "pipeline",
        "dataset": args.dataset,
        "config_variant": args.config_variant or "official",
        "frame_size": args.frame_size,
        "model": args.model,
        "forecaster_sizes": "tiny" if args.tiny else ("authors" if args.model in AUTHORS_SIZES else "defaults"),
        "schedule": str(schedule),
        "samples": args.samples,
        "chunk_size": args.chunk_size,
        "frames_rendered": rendered,
        "output_shape": list(out.frames.shape),
        "seconds": {"median": median, "times": times},
        "frames_per_second": rendered / median,
        "chunk_compiled_bytes": chunk_bytes,
        "device_peak_bytes": _device_peak_bytes(),
        "device_kind": env["device_kind"],
        "environment": env,
    }


def format_pipeline(r: dict[str, Any]) -> str:
    env = r["environment"]
    gib = lambda b: "n/a" if b is None else f"{b / 2**30:.2f} GiB"
    return "\n".join([
        (f"pipeline: FOMM {r['dataset']} {r['config_variant']} at {r['frame_size']}x{r['frame_size']}, "
         f"{r['model']} ({r['forecaster_sizes']} sizes), {r['schedule']}, {r['samples']} samples, chunks of {r['chunk_size']}"),
        f"  backend {env['backend']} ({env['device_kind']}), jax {env['jax']}",
        (f"  end to end {r['seconds']['median']:.2f} s (median of {len(r['seconds']['times'])}) for "
         f"{r['frames_rendered']} rendered frames -> output {tuple(r['output_shape'])}: {r['frames_per_second']:.1f} frames/s"),
        f"  memory: one rendering chunk compiles to {gib(r['chunk_compiled_bytes'])}; device peak {gib(r['device_peak_bytes'])}",
    ])

# -- the paper's real-time protocol ----------------------------------------------------------------
# What the paper's streaming numbers assume (DESIGN.md): FP32 keypoints, D x 32 bits per sent frame,
# 30 fps, savings quoted against 500 kbps for 256x256 video; FOMM+VRNN 36.69 fps on an RTX 3090.
REALTIME_REFERENCE = {
    "what": "paper: FOMM+VRNN end to end, 256x256, batch 1, FP32",
    "fps": 36.69,
    "device": "RTX 3090",
    "reference_kbps": 500.0,
    "fps_target_factor": 10.0,
    "utilisation": 0.6,
}


RENDER_MODES = ("frame", "forecast_block", "block")


def _add_realtime(sub) -> None:
    p = sub.add_parser(
        "realtime",
        help="the paper's streaming protocol: per-stage wall clock, fps, FLOPs, TOPS, bitrate; fp32 vs bf16",
        description=bench_realtime.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_system_args(p)
    p.add_argument("--horizon", default="6-6", help="N-M block (default 6-6, the paper's)")
    p.add_argument("--frames", type=int, default=36, help="clip length (default 36, the paper's)")
    p.add_argument("--render", default="frame", choices=RENDER_MODES,
                   help="generator calls: 'frame' (default, the paper's: one frame per call), "
                        "'forecast_block' (transmitted frames one by one as they arrive, each block's M "
                        "forecast frames in one call once forecast), 'block' (also the N transmitted "
                        "frames in one call, a block's latency later)")
    p.add_argument("--fomm", default="", help="a FOMM directory (trained or converted) instead of random weights; "
                   "its config and frame size replace --dataset, --config_variant and --frame_size")
    p.add_argument("--forecaster", default="", help="a forecaster workdir (train.forecaster) instead of a random "
                   "--model; its horizon must be --horizon")
    p.add_argument("--video", default="", help="a video to stream (its first --frames frames, resized to the "
                   "FOMM's size) instead of a generated clip")
    p.add_argument("--source_cache", action=argparse.BooleanOptionalAction, default=True,
                   help="encode the source image once per stream (default) rather than in every generator call")
    p.add_argument("--dtypes", default="",
                   help="comma-separated compute dtypes of FOMM, e.g. float32,bfloat16 (default: float32 "
                        "on CPU, float32,bfloat16 on GPU/TPU)")
    p.add_argument("--repeats", type=int, default=5, help="timed runs of the whole clip; medians reported")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(run=bench_realtime)


def _flops(computation) -> float | None:
    """XLA's FLOP count of a lowered or compiled computation (None where the backend gives none)."""
    try:
        cost = computation.cost_analysis()
    except Exception:  # noqa: BLE001 - some backends do not implement it
        return None
    if isinstance(cost, (list, tuple)):  # older jax: one dict per computation
        cost = cost[0] if cost else None
    if not cost or "flops" not in cost:
        return None
    return float(cost["flops"])


def hlo_flops(jitted, *args) -> float | None:
    """FLOPs of ``jitted(*args)`` counted by XLA on the unoptimised HLO, lowered for the CPU.

    The count does not depend on the platform, but only the CPU's cost analysis counts every
    operation: on GPUs, convolutions become library calls that the analysis leaves out. Arrays
    are replaced by their shapes first, so that arrays placed on an accelerator lower for the CPU.
    """
    import jax

    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype) if isinstance(x, jax.Array) else x, args)
    try:
        lowered = jitted.trace(*abstract).lower(lowering_platforms=("cpu",))
    except Exception:  # noqa: BLE001 - fall back to the default platform
        lowered = jitted.lower(*args)
    return _flops(lowered)


def realtime_budget(flops: dict[str, float | None], schedule, fps: float = 30.0,
                    utilisation: float = REALTIME_REFERENCE["utilisation"]) -> dict[str, Any]:
    """FLOPs per second of video and the accelerator TOPS it needs (the paper's formula).

    Per second of video at ``fps``: the sender's detector runs on the transmitted frames only (a duty
    cycle of N / (N + M), 1/2 for 6-6: every second frame on average), the forecaster once per block,
    the generator on every frame. Required TOPS = operations per second / utilisation / 1e12 with
    the paper's 60 % utilisation; XLA counts a multiply-add as 2 operations.
    """
    n, period = schedule.num_observed, schedule.period
    calls = {"extraction": fps * n / period, "forecasting": fps / period, "generation": fps}
    per_second = {k: (flops[k] or 0.0) * calls[k] for k in calls}
    total = sum(per_second.values())
    return {
        "calls_per_second": calls,
        "duty_cycle_extraction": n / period,
        "gflop_per_call": {k: None if flops[k] is None else flops[k] / 1e9 for k in flops},
        "gflop_per_second": {k: v / 1e9 for k, v in per_second.items()},
        "total_gflop_per_second": total / 1e9,
        "utilisation": utilisation,
        "required_tops": total / utilisation / 1e12,
    }


def paper_bitrate(dim: int, schedule, fps: float = 30.0, bits: int = 32) -> dict[str, float]:
    """The paper's rate: D numbers x ``bits`` per transmitted frame, N of every N + M frames sent."""
    full = dim * bits * fps / 1e3
    sent = full * schedule.num_observed / schedule.period
    return {"kbps_every_frame": full, "kbps": sent,
            "saving_vs_reference": REALTIME_REFERENCE["reference_kbps"] / sent}


def bench_realtime(args: argparse.Namespace) -> dict[str, Any]:
    """The paper's real-time protocol: one clip streamed in N + M blocks, batch 1, stage by stage.

    A 36-frame clip (synthetic talking-blob video, on the device) is streamed in blocks of 6
    transmitted + 6 forecast frames (reconstruction mode: the source is the first frame). Per block
    the sender's detector runs on each transmitted frame as it arrives (batch 1), the receiver
    renders it, then draws one future of the M frames from those N (one call) and renders them:
    ``--render frame`` one frame per generator call (the paper's batch 1), ``forecast_block`` the M
    forecast frames in one call (they are all known at once), ``block`` also the N transmitted
    frames in one call (a block's latency later). The receiver encodes its source image once per
    stream (the generator's encoder depends on the source alone; counted in generation) and every
    generator call starts from those features; ``--no-source_cache`` encodes it in every call. Every step is one jitted call, compiled
    beforehand (a full warm-up run), blocking on its result before the clock is read; each stage's
    wall clock is summed over the clip, medians of ``--repeats`` runs, scaled to 30 frames. Frames
    per second = clip frames / total wall clock of a run (stages plus the little Python between).

    Also: XLA's FLOP count of each step (unoptimised HLO) and the paper's TOPS formula (see
    ``realtime_budget``), the paper's bitrate (FP32 keypoints) with its saving against 500 kbps,
    and for each extra dtype (bfloat16 on GPU/TPU) the same timings plus its quality cost: mean
    absolute difference from the float32 run of the keypoints and of the frames (pixels in [0, 1]).
    Weights are random (timing does not depend on them); the FOMM is the official config.
    """
    import jax
    import jax.numpy as jnp
    import numpy as np

    from configs.fomm_common import fomm_config
    from kpflow import forecast, pipeline
    from kpflow.data.synthetic_video import _identity_style, render_clip
    from kpflow.data.videos import VideoReadError, read_video
    from kpflow.fomm.model import FOMM, frame_shape_of, random_fomm
    from kpflow.fomm.model import load as load_fomm
    from kpflow.keypoints import Keypoints

    try:
        schedule = pipeline.Schedule.parse(args.horizon)
    except ValueError as e:
        raise SystemExit(f"eval.bench realtime: {e}") from None
    if args.repeats < 1 or args.frame_size < 8 or args.frames < schedule.period:
        raise SystemExit(f"eval.bench realtime: --repeats >= 1, --frame_size >= 8 and "
                         f"--frames >= N + M = {schedule.period}")
    backend = jax.default_backend()
    dtypes = [d for d in (args.dtypes or ("float32" if backend == "cpu" else "float32,bfloat16")).split(",") if d]
    unknown = sorted(set(dtypes) - {"float32", "bfloat16"})
    if unknown or not dtypes or dtypes[0] != "float32":
        raise SystemExit(f"eval.bench realtime: --dtypes must start with float32 and name float32 / bfloat16; got {args.dtypes!r}")

    if args.fomm:
        try:
            base = load_fomm(args.fomm)
        except (FileNotFoundError, ValueError, OSError) as e:
            raise SystemExit(f"eval.bench realtime: cannot load --fomm {args.fomm!r}: {e}") from None
        config = base.config
        args.frame_size = frame_shape_of(config)[0]
    else:
        config = fomm_config(args.dataset, args.config_variant)
        config.data.frame_shape = (args.frame_size, args.frame_size, 3)
        base = random_fomm(config, args.seed)
    dim = 6 * base.num_kp
    if args.forecaster:
        trained = load_forecaster(args.forecaster, "realtime")
        f, variables = trained.forecaster, trained.variables
        trained_horizon = f"{trained.config.num_observed}-{trained.config.num_predicted}"
        if trained_horizon != str(schedule) or trained.train_clips.dim != dim:
            raise SystemExit(f"eval.bench realtime: the forecaster was trained for {trained_horizon} on "
                             f"{trained.train_clips.dim} numbers per frame; this run needs {schedule} on {dim} "
                             f"(pass --horizon {trained_horizon}, or a forecaster of this FOMM's keypoints)")
        args.model = f"{trained.config.model.name} ({args.forecaster})"
    else:
        sizes = (TINY_SIZES if args.tiny else AUTHORS_SIZES).get(args.model, {})
        f = forecast.create(args.model, dim=dim, num_observed=schedule.num_observed, horizon=schedule.horizon, **sizes)
        variables = jax.jit(f.init)(jax.random.key(args.seed), jnp.zeros((1, schedule.period, dim)))
    if args.video:
        try:
            video = read_video(args.video, (args.frame_size, args.frame_size))
        except VideoReadError as e:
            raise SystemExit(f"eval.bench realtime: {e}") from None
        if len(video) < args.frames:
            raise SystemExit(f"eval.bench realtime: {args.video} has {len(video)} frames; --frames is {args.frames}")
        video = jnp.asarray(video[: args.frames])
    else:
        style = _identity_style(args.seed, 0, args.frame_size)
        video = render_clip(style, np.random.default_rng(args.seed), args.frames, args.frame_size)
        video = jnp.asarray(video.astype(np.float32) / 255.0)  # [T, S, S, 3], on the device
    blocks = schedule.blocks(args.frames)
    render = args.render

    def stages(fomm: FOMM):
        """One jitted call per step of the stream, so that timings hold no eager glue."""
        nets = fomm.networks

        @jax.jit
        def detect(v, video, t):  # the frame at index t -> its keypoint vector [D]
            frame = jax.lax.dynamic_slice_in_dim(video, t, 1)
            return nets.kp_detector.apply(v, frame).to_vector()[0]

        @jax.jit
        def forecast_block(sent, rng, block):  # N vectors [D] -> M forecast vectors [M, D]
            key = jax.random.fold_in(rng, block)
            return f.sample(variables, jnp.stack(sent)[None], schedule.horizon, key, 1)[0, 0]

        @jax.jit
        def encode(v, source):  # the generator's encoder depends on the source alone
            return nets.generator.apply(v, source, encode_only=True)["source_features"]

        @jax.jit
        def generate(v, source, features, kp_source, vectors):  # [n, D] driving vectors -> [n, S, S, 3]
            n = vectors.shape[0]
            kp_d = Keypoints.from_vector(vectors.astype(jnp.float32))
            batch = lambda x: jnp.broadcast_to(x, (n, *x.shape[1:]))
            kp_s = jax.tree.map(batch, kp_source)
            cached = None if features is None else batch(features)
            return nets.generator.apply(v, batch(source), kp_s, kp_d, source_features=cached)["prediction"]

        return detect, forecast_block, encode, generate

    def stream(fomm: FOMM, fns, timed: dict[str, float] | None):
        """One pass over the clip; adds each stage's seconds to ``timed``; returns frames and keypoints."""
        det_vars, gen_vars = fomm.variables["kp_detector"], fomm.variables["generator"]
        detect, forecast_fn, encode, generate_fn = fns

        def clock(stage, fn, *args):
            start = time.perf_counter()
            out = jax.block_until_ready(fn(*args))
            if timed is not None:
                timed[stage] += time.perf_counter() - start
            return out

        source = video[:1]
        kp_source = clock("extraction", fomm._detect, det_vars, source)
        # Once per stream: the receiver keeps its source's encoding (``--no-source_cache``: per call).
        features = clock("generation", encode, gen_vars, source) if args.source_cache else None
        generate = lambda v, src, kp_s, vectors: generate_fn(v, src, features, kp_s, vectors)
        frames, kps = [], []
        rng = jax.random.key(args.seed + 1)
        for i, block in enumerate(blocks):
            sent = []
            for t in block.observed:  # frames arrive one by one: detect, send, render on arrival
                sent.append(clock("extraction", detect, det_vars, video, t))
                if render != "block":
                    frames.append(clock("generation", generate, gen_vars, source, kp_source, sent[-1][None]))
            if render == "block":
                frames.append(clock("generation", generate, gen_vars, source, kp_source, jnp.stack(sent)))
            kps.extend(sent)
            if len(block.forecast):
                future = clock("forecasting", forecast_fn, tuple(sent), rng, i)[: len(block.forecast)]
                kps.extend(future)
                if render == "frame":
                    for j in range(len(block.forecast)):
                        frames.append(clock("generation", generate, gen_vars, source, kp_source, future[j : j + 1]))
                else:  # the forecast frames are all known now: one call renders them
                    frames.append(clock("generation", generate, gen_vars, source, kp_source, future))
        return jnp.concatenate(frames), jnp.stack(kps)

    def lowered_flops(fomm: FOMM, fns) -> dict[str, float | None]:
        # The unoptimised HLO's count: on GPUs the compiled module's convolutions are library calls
        # that XLA's cost analysis does not count.
        detect, forecast_fn, encode, generate = fns
        det_vars, gen_vars = fomm.variables["kp_detector"], fomm.variables["generator"]
        vec = detect(det_vars, video, 0)
        kp = fomm._detect(det_vars, video[:1])
        features = encode(gen_vars, video[:1]) if args.source_cache else None
        return {
            "extraction": hlo_flops(detect, det_vars, video, 0),
            "forecasting": hlo_flops(forecast_fn, (vec,) * schedule.num_observed, jax.random.key(0), 0),
            "generation": hlo_flops(generate, gen_vars, video[:1], features, kp, vec[None]),
        }

    per_dtype: dict[str, Any] = {}
    reference_out = None
    for name in dtypes:
        fomm = base if name == "float32" else FOMM(config, base.variables, dtype=getattr(jnp, name))
        fns = stages(fomm)
        out = stream(fomm, fns, None)  # compile every shape, warm caches
        runs = []
        for _ in range(args.repeats):
            timed = {"extraction": 0.0, "forecasting": 0.0, "generation": 0.0}
            start = time.perf_counter()
            out = stream(fomm, fns, timed)
            timed["total"] = time.perf_counter() - start
            runs.append(timed)
        median = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
        scale = 30.0 / args.frames
        entry: dict[str, Any] = {
            "seconds_per_clip": median,
            "ms_per_30_frames": {k: v * scale * 1e3 for k, v in median.items()},
            "fps": args.frames / median["total"],
            "fps_stages_only": args.frames / sum(median[k] for k in ("extraction", "forecasting", "generation")),
            "runs": runs,
        }
        flops = lowered_flops(fomm, fns)
        entry["flops_per_call"] = flops
        entry["budget"] = realtime_budget(flops, schedule)
        entry["fps_over_reference"] = entry["fps"] / REALTIME_REFERENCE["fps"]
        if reference_out is None:
            reference_out = out
        else:
            entry["quality_vs_float32"] = {
                "frame_mae": float(jnp.mean(jnp.abs(out[0].astype(jnp.float32) - reference_out[0]))),
                "keypoint_mae": float(jnp.mean(jnp.abs(out[1].astype(jnp.float32) - reference_out[1]))),
            }
        per_dtype[name] = entry

    fp32 = per_dtype["float32"]["fps"]
    env = environment()
    return {
        "benchmark": "realtime",
        "dataset": args.dataset,
        "config_variant": "from --fomm" if args.fomm else (args.config_variant or "official"),
        "frame_size": args.frame_size,
        "model": args.model,
        "forecaster_sizes": ("trained" if args.forecaster else
                             "tiny" if args.tiny else ("authors" if args.model in AUTHORS_SIZES else "defaults")),
        "weights": {"fomm": args.fomm or "random", "forecaster": args.forecaster or "random"},
        "video": args.video or "generated",
        "schedule": str(schedule),
        "frames": args.frames,
        "render": render,
        "source_cache": args.source_cache,
        "repeats": args.repeats,
        "dtypes": per_dtype,
        "bitrate": paper_bitrate(dim, schedule),
        "reference": REALTIME_REFERENCE,
        "comparable": (args.config_variant == "" and not args.fomm and args.frame_size == 256 and render == "frame"
                       and not args.tiny and not args.forecaster),
        "fps_over_reference": fp32 / REALTIME_REFERENCE["fps"],
        "device_kind": env["device_kind"],
        "environment": env,
    }


def format_realtime(r: dict[str, Any]) -> str:
    env, ref, bit = r["environment"], r["reference"], r["bitrate"]
    w = r["weights"]["fomm"]
    fomm = f"{r['dataset']} {r['config_variant']} (random weights)" if w == "random" else w
    lines = [
        (f"realtime: FOMM {fomm} at {r['frame_size']}x{r['frame_size']} + "
         f"{r['model']} ({r['forecaster_sizes']} sizes), {r['frames']} {r['video']} frames in {r['schedule']} blocks, "
         f"batch 1, rendering per {r['render'].replace('_', ' ')}"
         f"{', source encoded once' if r.get('source_cache') else ', source encoded per call'}, median of {r['repeats']}"),
        f"  backend {env['backend']} ({env['device_kind']}), jax {env['jax']}",
        (f"  {'dtype':<9} {'extract':>9} {'forecast':>9} {'generate':>9} {'total':>9}  (ms per 30 frames) {'fps':>8}"
         f"  {'TOPS@30fps':>10}  quality cost vs float32"),
    ]
    for name, e in r["dtypes"].items():
        ms = e["ms_per_30_frames"]
        q = e.get("quality_vs_float32")
        cost = "-" if q is None else f"frame MAE {q['frame_mae']:.2e}, keypoint MAE {q['keypoint_mae']:.2e}"
        lines.append(f"  {name:<9} {ms['extraction']:9.1f} {ms['forecasting']:9.1f} {ms['generation']:9.1f} "
                     f"{ms['total']:9.1f}  {'':18} {e['fps']:8.2f}  {e['budget']['required_tops']:10.2f}  {cost}")
    b = r["dtypes"]["float32"]["budget"]
    g = b["gflop_per_call"]
    fmt = lambda v: "n/a" if v is None else f"{v:.3g}"
    lines.append(f"  GFLOP per call (XLA): detector {fmt(g['extraction'])}, forecaster {fmt(g['forecasting'])} per block, "
                 f"generator {fmt(g['generation'])} per frame (XLA, unoptimised HLO); detector duty cycle {b['duty_cycle_extraction']:.2f}, "
                 f"{b['utilisation']:.0%} utilisation")
    lines.append(f"  bitrate (FP32 keypoints, paper's scheme): {bit['kbps']:.1f} kbps "
                 f"({bit['saving_vs_reference']:.1f}x below {ref['reference_kbps']:.0f} kbps; every frame sent: {bit['kbps_every_frame']:.1f})")
    lines.append(f"  paper: {ref['fps']} fps on an {ref['device']}; float32 here: {r['fps_over_reference']:.2f}x that"
                 + ("" if r["comparable"] else " (settings not comparable: the paper is the official config, 256x256, frame by frame)"))
    return "\n".join(lines)


FORMATTERS = {"forecast": format_forecast, "fomm": format_fomm, "pipeline": format_pipeline,
              "realtime": format_realtime}


# -- entry point ----------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m eval.bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="benchmark", required=True, metavar="BENCHMARK")
    _add_forecast(sub)
    _add_fomm(sub)
    _add_pipeline(sub)
    _add_realtime(sub)
    # Every benchmark writes its result the same way.
    for p in sub.choices.values():
        p.add_argument("--out", default="", help="also write the result as JSON to this file")
    return parser


def main(argv=None) -> dict[str, Any]:
    args = build_parser().parse_args(argv)
    result = args.run(args)
    print(FORMATTERS.get(args.benchmark, lambda r: json.dumps(r, indent=1, default=str))(result))
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1, default=str)
        print(f"wrote {args.out}")
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
