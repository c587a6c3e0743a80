"""What every command line of kpflow shares: the usage error, one-line messages, absl flag parsing.

Conventions (see ``docs/contributing.md``): the trainers (``train/``) take an ml_collections config
through absl flags (``--config configs/x.py:arg --config.train.seed=1``); the evaluation and
benchmark CLIs (``eval/``) use argparse. Either way a mistake a user can fix is one line on stderr
and exit status 2, never a traceback.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


class UsageError(Exception):
    """A bad argument or input that the user can fix: printed as one line, exit status 2."""


def one_line(error: BaseException | str) -> str:
    """An exception (or message) as one line: lines joined, a trailing ``Type: message`` unwrapped.

    ml_collections embeds a config file's whole traceback in its error; only its last line is kept.
    """
    lines = [ln.strip() for ln in str(error).strip().splitlines() if ln.strip()]
    if not lines:
        return type(error).__name__ if isinstance(error, BaseException) else ""
    if any(ln.startswith("Traceback") for ln in lines):
        return lines[-1].split(": ", 1)[-1]
    return " ".join(lines)


def fail(message: BaseException | str) -> SystemExit:
    """``raise fail(e)``: exit with ``error: <one line>`` on stderr and status 1 (SystemExit's rule)."""
    return SystemExit("error: " + one_line(message))


def run_cli(main: Callable[[], int | None], prog: str = "") -> int:
    """``main()``'s exit status (None counts as EXIT_OK); a :class:`UsageError` it raises is printed
    as one line ``[prog: ]error: <message>`` on stderr and gives EXIT_USAGE.

    argparse's own errors (a SystemExit) pass through unchanged: parse the arguments inside or
    outside ``main`` as the command needs.
    """
    try:
        status = main()
    except UsageError as e:
        print(f"{prog + ': ' if prog else ''}error: {one_line(e)}", file=sys.stderr)
        return EXIT_USAGE
    return EXIT_OK if status is None else status


def parse_absl_flags(argv: list[str]) -> list[str]:
    """absl's flag parsing whose errors are one line: the ``flags_parser`` of ``app.run``."""
    from absl import flags

    try:
        return flags.FLAGS(argv)
    except (AttributeError, KeyError) as e:  # --config.train.nosuch=1
        field = str(e).strip("\"'")
        raise SystemExit(f"error: unknown config field {field!r} in a --config.* override") from None
    except (flags.Error, ValueError, TypeError, OSError) as e:
        raise SystemExit(f"error: {one_line(e)}") from None


def define_run_flags(config_help: str, workdir_help: str, lock_config: bool = False) -> None:
    """A trainer's two flags, ``--config`` (an ml_collections config file, fields overridable as
    ``--config.train.seed=1``) and ``--workdir``. Called when the CLI runs, never at import."""
    from absl import flags
    from ml_collections import config_flags

    # flag_values read now, not at import: tests swap in a fresh FlagValues to run a main twice.
    config_flags.DEFINE_config_file("config", None, config_help, flag_values=flags.FLAGS, lock_config=lock_config)
    flags.DEFINE_string("workdir", None, workdir_help, flag_values=flags.FLAGS)


def run_flags(argv: list[str], config_example: str):
    """``(config, workdir)`` of a trainer's ``main(argv)`` after the checks every trainer makes:
    no stray arguments, ``--config`` given and its file present; orbax's INFO logging quietened
    unless ``--verbosity`` was given. Raises SystemExit with one line otherwise."""
    import os

    from absl import flags, logging
    from ml_collections import config_flags

    values = flags.FLAGS
    if len(argv) > 1:
        raise SystemExit(f"error: unexpected arguments {argv[1:]}; flags look like --workdir=DIR")
    if not values["verbosity"].present:
        logging.set_verbosity(logging.WARNING)  # orbax logs every file it writes at INFO
    if values["config"].value is None:
        raise fail(f"--config is required, e.g. --config {config_example}")
    path = config_flags.get_config_filename(values["config"]).split(":", 1)[0]  # drop ":arg"
    if not os.path.isfile(path):
        raise fail(f"config file {path!r} not found; the configs are in configs/, e.g. configs/demo.py")
    return values.config, values.workdir
