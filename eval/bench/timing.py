"""What every benchmark of ``python -m eval.bench`` shares: the timing loops, their statistics, the
headline of ratios measured in the same run, the environment record and the JSON file.

Standard library only at import (JAX is imported inside :func:`environment`), so that
``eval.bench.torch_reference`` can time PyTorch with these loops in a process without JAX.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from typing import Any


# -- timing ---------------------------------------------------------------------------------------
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


def ms_stats(times: list[float]) -> dict[str, Any]:
    """Median, interquartile range, extremes and every time of a list of milliseconds."""
    q1, _, q3 = statistics.quantiles(times, n=4, method="inclusive") if len(times) > 1 else times * 3
    return {
        "median_ms": statistics.median(times),
        "iqr_ms": q3 - q1,
        "min_ms": min(times),
        "max_ms": max(times),
        "times_ms": [round(t, 4) for t in times],
    }


# -- the headline: ratios against references timed in the same run ---------------------------------
def headline(what: str, median_ms: float, same_run: dict[str, tuple[str, float]],
             context: tuple[str, float] | None = None) -> dict[str, Any]:
    """The result's lead: ``what`` took ``median_ms``, and how many times faster that is than each
    reference timed in the same run (``same_run``: key -> (description, its median ms)).

    ``context`` (description, ms) is a number measured elsewhere (another machine, another day): it is
    recorded apart, as context, because a ratio against it mixes two machines' states.
    """
    def versus(description: str, ms: float) -> dict[str, Any]:
        return {"what": description, "median_ms": ms, "speedup": ms / median_ms}

    return {
        "what": what,
        "median_ms": median_ms,
        "same_run": {key: versus(*ref) for key, ref in same_run.items()},
        "context": None if context is None else versus(*context),
    }


def format_headline(h: dict[str, Any]) -> str:
    """``headline(...)`` as lines: what took how long, then one line per same-run ratio."""
    lines = [f"  headline, timed in this run: {h['what']}: {h['median_ms']:.3g} ms"]
    lines += [f"    {d['speedup']:.1f}x faster than {d['what']} ({d['median_ms']:.3g} ms)"
              for d in h["same_run"].values()]
    return "\n".join(lines)


def format_context(h: dict[str, Any]) -> str | None:
    """The headline's context line (a number measured on another machine), or None."""
    c = h["context"]
    if c is None:
        return None
    return (f"  context, not measured in this run: {c['what']}: {c['median_ms']:.4g} ms "
            f"({c['speedup']:.1f}x this run's time)")


# -- what a result records ------------------------------------------------------------------------
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


def load_average() -> float | None:
    """The 1-minute load average (None where the system has none): above the CPU count, other
    processes were competing for the CPUs a CPU timing ran on."""
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):  # not on Unix
        return None


def count_params(variables) -> int:
    """Numbers in the ``params`` collection of a Flax variables dict."""
    import jax
    import numpy as np

    return int(sum(np.size(x) for x in jax.tree_util.tree_leaves(variables.get("params", {}))))


def write_json(result: dict[str, Any], path: str) -> None:
    """``result`` as indented JSON at ``path`` (its folder created); non-JSON values as strings."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(result, f, indent=1, default=str)
