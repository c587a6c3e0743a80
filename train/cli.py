"""Command-line plumbing shared by the training entry points: one-line errors, flag parsing."""

from __future__ import annotations

from absl import flags

FLAGS = flags.FLAGS


def one_line(error: BaseException) -> str:
    """An exception as one line: multi-line messages joined, a trailing "Type: message" unwrapped."""
    lines = [ln.strip() for ln in str(error).strip().splitlines() if ln.strip()]
    if not lines:
        return type(error).__name__
    if any(ln.startswith("Traceback") for ln in lines):  # config_flags embeds the config file's traceback
        return lines[-1].split(": ", 1)[-1]
    return " ".join(lines)


def parse_flags(argv: list[str]) -> list[str]:
    """absl flag parsing whose errors are one line (config-file errors arrive with a traceback inside)."""
    try:
        return FLAGS(argv)
    except (AttributeError, KeyError) as e:  # --config.train.nosuch=1
        field = str(e).strip("\"'")
        raise SystemExit(f"error: unknown config field {field!r} in a --config.* override") from None
    except (flags.Error, ValueError, TypeError, OSError) as e:
        raise SystemExit(f"error: {one_line(e)}") from None
