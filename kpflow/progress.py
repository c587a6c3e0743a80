"""Progress bars that suit both a terminal and a log file.

On a terminal, :func:`progress` is a plain ``tqdm`` bar redrawn in place. When the stream is not a
terminal (a CI log, ``nohup``, a cluster job's stderr file), redrawing with carriage returns would
fill the log with one long line of overwritten states; the bar then prints a plain line every
:data:`LOG_INTERVAL_S` seconds (and when it closes) instead.
"""

from __future__ import annotations

import sys
from typing import Any

from tqdm import tqdm

# Seconds between two progress lines when the stream is not a terminal.
LOG_INTERVAL_S = 30.0
LOG_COLUMNS = 100


class _Lines:
    """A text stream that turns tqdm's carriage-return redraws into whole lines."""

    def __init__(self, stream):
        self._stream = stream

    def write(self, text: str) -> int:
        line = text.replace("\r", "").replace("\x1b[A", "").rstrip()
        if line:
            self._stream.write(line + "\n")
        return len(text)

    def flush(self) -> None:
        self._stream.flush()


def is_terminal(stream) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # closed or not a real file
        return False


def progress(iterable=None, *, file=None, **kwargs: Any) -> tqdm:
    """``tqdm(iterable, **kwargs)`` writing to ``file`` (default stderr): redrawn in place on a
    terminal, plain lines at most every :data:`LOG_INTERVAL_S` seconds otherwise."""
    stream = sys.stderr if file is None else file
    if is_terminal(stream):
        kwargs.setdefault("dynamic_ncols", True)
        return tqdm(iterable, file=stream, **kwargs)
    kwargs.pop("dynamic_ncols", None)
    kwargs["mininterval"] = max(float(kwargs.get("mininterval", 0.1)), LOG_INTERVAL_S)
    kwargs.setdefault("ncols", LOG_COLUMNS)
    kwargs.setdefault("ascii", True)
    return tqdm(iterable, file=_Lines(stream), **kwargs)
