"""Human-facing output: readable in a log file (no carriage-return frames, no tables cut at 80 columns)."""

import io
import sys

import pandas as pd
from tqdm import tqdm

from bon_vs_rl.record import console


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_piped_tables_keep_every_digit(monkeypatch):
    log = io.StringIO()  # not a terminal: rich would assume 80 columns and ellipsize cells
    monkeypatch.setattr(sys, "stderr", log)
    frame = pd.DataFrame({f"column {i}": [-0.0612345 - i] for i in range(14)})
    console.print_table(frame, title="a wide table")
    text = log.getvalue()
    assert "…" not in text
    for i in range(14):
        assert f"column {i}" in text and f"{-0.0612345 - i:.4g}" in text
    assert "\x1b[" not in text  # no colour codes in a log


def test_progress_in_a_log_is_plain_lines_without_carriage_returns():
    log, clock = io.StringIO(), Clock()
    bar = console.LineProgress(100, "sampling", "seq", stream=log, every=30, clock=clock)
    for _ in range(10):
        clock.now += 10
        bar.update(10)
        bar.set_postfix(loss="0.5")
    bar.close()
    lines = log.getvalue().splitlines()
    assert "\r" not in log.getvalue()
    # one line per 30 s (at 30, 60 and 90 s) and one at the end
    assert lines == ["sampling: 30/100 seq (30%) in 30 s, loss=0.5", "sampling: 60/100 seq (60%) in 60 s, loss=0.5",
                     "sampling: 90/100 seq (90%) in 90 s, loss=0.5", "sampling: 100/100 seq (100%) in 100 s, loss=0.5"]


def test_a_short_phase_in_a_log_writes_nothing():
    log, clock = io.StringIO(), Clock()
    with console.LineProgress(16, "ppo rollout 1", "seq", stream=log, clock=clock) as bar:
        clock.now += 2
        bar.update(16)
    assert log.getvalue() == ""


def test_progress_is_a_bar_on_a_terminal_lines_in_a_log_and_nothing_when_quiet(monkeypatch):
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    monkeypatch.setattr(sys, "stderr", io.StringIO())
    assert isinstance(console.progress(10, "x"), console.LineProgress)
    quiet = console.progress(10, "x", quiet=True)
    assert isinstance(quiet, tqdm) and quiet.disable
    monkeypatch.setattr(sys, "stderr", Terminal())
    bar = console.progress(10, "x")
    assert isinstance(bar, tqdm) and not bar.disable
    bar.close()
