"""What every command line of kpflow shares: the usage error, one-line messages, absl flag parsing.

Conventions (see ``docs/contributing.md``): the trainers (``train/``) take an ml_collections config
through absl flags (``--config configs/x.py:arg --config.train.seed=1``); the evaluation and
benchmark CLIs (``eval/``) use argparse. Either way a mistake a user can fix is one line on stderr
and exit status 2, never a traceback.

- argparse: :class:`OneLineArgumentParser` (its errors are one line), :func:`run_cli` (a
  :class:`UsageError` raised by the command becomes ``[prog: ]error: ...``, status 2);
- absl: :func:`define_run_flags`, :func:`parse_absl_flags` (errors in one line; list and tuple
  config fields overridable as ``--config.data.holdout_speakers=a,b``), :func:`run_flags` (the
  checks of every trainer, :func:`check_config_kind` among them).
"""

from __future__ import annotations

import argparse
import ast
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


class OneLineArgumentParser(argparse.ArgumentParser):
    """argparse whose errors are one line, ``prog: error: message`` on stderr, with argparse's exit
    status 2 (the plain parser prints its whole usage first). ``--help`` is unchanged."""

    def error(self, message: str):
        self.exit(EXIT_USAGE, f"{self.prog}: error: {one_line(message)}\n")


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
    """absl's flag parsing whose errors are one line: the ``flags_parser`` of ``app.run``.

    Overrides of list and tuple config fields (``--config.data.holdout_speakers=id1,id2``) are taken
    out before absl sees them (ml_collections cannot parse a list, nor split ``a,b`` into a tuple)
    and applied to the parsed config afterwards: see :func:`parse_sequence_override`.
    """
    from absl import flags

    argv, sequences = _take_sequence_overrides(list(argv))
    saved = sys.argv
    sys.argv = argv  # config_flags finds the --config.* overrides in sys.argv, not in argv
    try:
        rest = flags.FLAGS(argv)
    except (AttributeError, KeyError) as e:  # --config.train.nosuch=1
        field = str(e).strip("\"'")
        raise SystemExit(f"error: unknown config field {field!r} in a --config.* override") from None
    except (flags.Error, ValueError, TypeError, OSError) as e:
        raise SystemExit(f"error: {one_line(e)}") from None
    finally:
        sys.argv = saved
    if sequences:
        _apply_sequence_overrides(flags.FLAGS["config"].value, sequences)
    return rest


def parse_sequence_override(text: str, current: list | tuple, field: str) -> list | tuple:
    """The value ``--config.<field>=text`` gives a list or tuple field now holding ``current``.

    ``text`` is a Python literal (``['id1', 'id2']``, ``(1, 0.5)``) or comma-separated items
    (``id1,id2``; empty for none). Items stay strings when ``current`` holds only strings, else each
    is read as a Python literal where it is one (``1,0.5`` -> ``1, 0.5``). The result has
    ``current``'s type. Raises :class:`UsageError` (one line naming the flag) for a literal that is
    not a list or tuple.
    """
    text = text.strip()
    if text.startswith(("(", "[")):
        try:
            items = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            raise UsageError(f"--config.{field}={text!r} is not a Python list; write a,b or \"['a', 'b']\"") from None
        if not isinstance(items, list | tuple):
            raise UsageError(f"--config.{field}={text!r} is not a list or tuple")
        return type(current)(items)
    words = [w.strip() for w in text.split(",") if w.strip()]
    if all(isinstance(x, str) for x in current) and current:
        return type(current)(words)
    return type(current)(_literal_or_text(w) for w in words)


def _literal_or_text(word: str):
    try:
        value = ast.literal_eval(word)
    except (ValueError, SyntaxError):
        return word
    return value if isinstance(value, int | float | bool | str) else word


def _config_argument(argv: list[str]) -> str | None:
    """The value of ``--config`` in ``argv`` (``--config=X`` or ``--config X``), if given."""
    for i, arg in enumerate(argv):
        if arg.startswith("--config="):
            return arg.split("=", 1)[1]
        if arg == "--config" and i + 1 < len(argv):
            return argv[i + 1]
    return None


def _field_value(config, field: str):
    """``config.a.b`` for ``field = "a.b"``; KeyError when there is no such field."""
    node = config
    for part in field.split("."):
        if not hasattr(node, "keys") or part not in node:
            raise KeyError(field)
        node = node[part]
    return node


def _take_sequence_overrides(argv: list[str]) -> tuple[list[str], list[tuple[str, str]]]:
    """``argv`` without its ``--config.<field>`` overrides of list and tuple fields, and those
    overrides as ``(field, text)`` in command-line order. The config file is loaded to learn which
    fields are sequences; when it cannot be, everything is left to absl (which reports the error)."""
    from absl import flags

    if "config" not in flags.FLAGS or not any(a.startswith("--config.") for a in argv):
        return argv, []
    source = _config_argument(argv)
    if source is None:
        return argv, []
    try:
        config = flags.FLAGS["config"].parser.parse(source)
        config.keys()  # an unreadable file loads as a placeholder that raises when used
    except Exception:  # noqa: BLE001 -- absl's own parse reports it in one line
        return argv, []
    kept, taken, i = [], [], 0
    while i < len(argv):
        arg = argv[i]
        field, _, text = arg[len("--config."):].partition("=") if arg.startswith("--config.") else ("", "", "")
        try:
            current = _field_value(config, field) if field else None
        except KeyError:
            current = None
        if not isinstance(current, list | tuple):
            kept.append(arg)
            i += 1
            continue
        if "=" not in arg:  # --config.a.b VALUE
            if i + 1 >= len(argv):
                raise SystemExit(f"error: --config.{field} needs a value, e.g. --config.{field}=a,b")
            text = argv[i + 1]
            i += 1
        taken.append((field, text))
        i += 1
    return kept, taken


def _apply_sequence_overrides(config, overrides: list[tuple[str, str]]) -> None:
    """Set each overridden list or tuple field; repeating a flag appends (absl's rule for tuples)."""
    seen: dict[str, list] = {}
    for field, text in overrides:
        parent, _, name = field.rpartition(".")
        node = _field_value(config, parent) if parent else config
        current = node[name]
        try:
            value = parse_sequence_override(text, current, field)
        except UsageError as e:
            raise SystemExit(f"error: {one_line(e)}") from None
        if field in seen:
            value = type(current)([*seen[field], *value])
        seen[field] = list(value)
        node[name] = value


def define_run_flags(config_help: str, workdir_help: str, lock_config: bool = False) -> None:
    """A trainer's two flags, ``--config`` (an ml_collections config file, fields overridable as
    ``--config.train.seed=1``) and ``--workdir``. Called when the CLI runs, never at import."""
    from absl import flags
    from ml_collections import config_flags

    # flag_values read now, not at import: tests swap in a fresh FlagValues to run a main twice.
    config_flags.DEFINE_config_file("config", None, config_help, flag_values=flags.FLAGS, lock_config=lock_config)
    flags.DEFINE_string("workdir", None, workdir_help, flag_values=flags.FLAGS)


# What a config of each kind holds (``configs/<model>_<dataset>.py`` and ``configs/fomm_<dataset>.py``),
# and an example of each for the messages.
CONFIG_KINDS = {
    "forecaster": (("model", "name"), "configs/vrnn_vox.py:cpu or configs/demo.py"),
    "fomm": (("model", "kp_detector"), "configs/fomm_vox.py or configs/fomm_vox.py:tiny"),
}


def config_kind(config) -> str | None:
    """``"forecaster"`` or ``"fomm"``: the kind of run ``config`` describes (None for neither)."""
    for kind, (path, _) in CONFIG_KINDS.items():
        try:
            _field_value(config, ".".join(path))
        except (KeyError, TypeError):
            continue
        return kind
    return None


def check_config_kind(config, kind: str, source: str = "--config") -> None:
    """UsageError (one line) unless ``config`` is a ``kind`` config ("forecaster" or "fomm"):
    a FOMM config given to the forecaster trainer, or the converse, fails here and not deep inside."""
    found = config_kind(config)
    if found != kind:
        what = f"a {found} config" if found else "neither a forecaster nor a FOMM config"
        raise UsageError(f"{source} is {what}; this command needs a {kind} config, e.g. {CONFIG_KINDS[kind][1]}")


def run_flags(argv: list[str], config_example: str, kind: str | None = None):
    """``(config, workdir)`` of a trainer's ``main(argv)`` after the checks every trainer makes:
    no stray arguments, ``--config`` given, its file present and (with ``kind``) a config of that
    kind; orbax's INFO logging quietened unless ``--verbosity`` was given. Raises SystemExit with
    one line otherwise."""
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
    source = config_flags.get_config_filename(values["config"])
    path = source.split(":", 1)[0]  # drop ":arg"
    if not os.path.isfile(path):
        raise fail(f"config file {path!r} not found; the configs are in configs/, e.g. configs/demo.py")
    if kind is not None:
        try:
            check_config_kind(values.config, kind, f"--config {source}")
        except UsageError as e:
            raise fail(e) from None
    return values.config, values["workdir"].value if "workdir" in values else None
