"""Speed benchmarks: ``python -m eval.bench <benchmark> [options] [--out FILE.json]``; each prints a
table, led by ratios against references timed in the same run, and can write JSON.

Benchmarks (one module each, loaded by name from :data:`BENCHMARKS`):

- ``forecast``: S closed-loop samples of one N-M window: one jitted ``vmap``-ed call against a Python
  loop over samples and (``--torch_reference``) the authors' VRNN in eager PyTorch.
- ``fomm``: the FOMM keypoint detector and generator, milliseconds per frame.
- ``pipeline``: the whole system on one clip, end to end (forecast and rendered futures).
- ``realtime``: the paper's streaming protocol, stage by stage; float32 beside bfloat16.
- ``call``: live loopback calls over WebRTC: latency, render rate, concurrent calls per process.
- ``data``: FOMM training pairs per second: the folder reader against grain with 0, 1, 2 workers.

A benchmark module defines ``HELP`` (one line), ``add_arguments(parser)``, ``run(args) -> dict``
(the JSON result; ``kpflow.cli.UsageError`` for a bad argument) and ``format(result) -> str``; add
one by writing the module and naming it here. Timings are measured here, never asserted in tests.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from types import ModuleType
from typing import Any

from eval.bench import timing
from kpflow.cli import OneLineArgumentParser, UsageError, one_line
from kpflow.io import check_output_path

# Each name is a module of this package (eval.bench.<name>), imported when a parser or a run needs it.
BENCHMARKS = ("forecast", "fomm", "pipeline", "realtime", "call", "data")
PROG = "python -m eval.bench"


def load(name: str) -> ModuleType:
    """The module of benchmark ``name``; UsageError naming the benchmarks for an unknown one."""
    if name not in BENCHMARKS:
        raise UsageError(f"unknown benchmark {name!r}; expected one of {', '.join(BENCHMARKS)}")
    return importlib.import_module(f"{__name__}.{name}")


def build_parser() -> argparse.ArgumentParser:
    """``python -m eval.bench``'s parser: one subcommand per benchmark, each with ``--out``."""
    parser = OneLineArgumentParser(prog=PROG, description=__doc__,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="benchmark", required=True, metavar="BENCHMARK")
    for name in BENCHMARKS:
        module = load(name)
        p = sub.add_parser(name, help=module.HELP, description=module.__doc__,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        module.add_arguments(p)
        p.add_argument("--out", default="", help="also write the result as JSON to this file")
    return parser


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Parse ``argv``, run the benchmark, print its table, write ``--out``; returns the result.

    A bad argument exits with one line: ``python -m eval.bench <benchmark>: error: <what to fix>``."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and not argv[0].startswith("-"):
        try:
            load(argv[0])
        except UsageError as e:
            raise SystemExit(f"{PROG}: error: {one_line(e)}") from None
    args = build_parser().parse_args(argv)
    module = load(args.benchmark)
    try:
        if args.out:
            check_output_path(args.out)
        result = module.run(args)
    except UsageError as e:
        raise SystemExit(f"{PROG} {args.benchmark}: error: {one_line(e)}") from None
    print(module.format(result))
    if args.out:
        timing.write_json(result, args.out)
        print(f"wrote {args.out}")
    return result
