"""kpflow.progress: tqdm's redrawn bar on a terminal, plain periodic lines in a log."""

from __future__ import annotations

import io

import pytest

from kpflow import progress as progress_module
from kpflow.progress import is_terminal, progress


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_log_gets_whole_lines_and_no_carriage_returns():
    log = io.StringIO()
    for _ in progress(range(1000), file=log, desc="counting", unit="step"):
        pass
    text = log.getvalue()
    assert "\r" not in text and "\x1b[" not in text
    lines = text.splitlines()
    assert text.endswith("\n") and all(line.startswith("counting") for line in lines)
    # One line when the bar opens, one when it closes: 1000 quick steps are not 1000 lines.
    assert len(lines) == 2 and "1000/1000" in lines[-1], lines


def test_a_log_gets_a_line_per_interval(monkeypatch):
    monkeypatch.setattr(progress_module, "LOG_INTERVAL_S", 0.0)
    log = io.StringIO()
    with progress(total=5, file=log, desc="steps", mininterval=0, miniters=1) as bar:
        for _ in range(5):
            bar.update(1)
    lines = log.getvalue().splitlines()
    assert len(lines) >= 6 and "\r" not in log.getvalue()
    assert [f"{i}/5" in line for i, line in enumerate(lines[:6])] == [True] * 6


def test_a_log_keeps_messages_written_through_the_bar():
    log = io.StringIO()
    with progress(total=2, file=log, desc="videos") as bar:
        bar.write("skipping unreadable video bad.mp4", file=log)
        bar.update(2)
    assert "skipping unreadable video bad.mp4\n" in log.getvalue()
    assert "\r" not in log.getvalue()


def test_a_terminal_gets_tqdms_own_redrawn_bar():
    terminal = FakeTerminal()
    for _ in progress(range(3), file=terminal, desc="counting", mininterval=0, miniters=1):
        pass
    text = terminal.getvalue()
    assert "\r" in text and "counting" in text and "3/3" in text


@pytest.mark.parametrize("stream, expected", [(FakeTerminal(), True), (io.StringIO(), False), (object(), False)])
def test_is_terminal(stream, expected):
    assert is_terminal(stream) is expected


def test_a_closed_stream_is_not_a_terminal():
    stream = io.StringIO()
    stream.close()
    assert is_terminal(stream) is False
