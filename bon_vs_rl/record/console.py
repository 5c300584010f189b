"""Human-facing output: tables, notes and progress go to stderr, so stdout stays machine-readable.

On a terminal, progress is a tqdm bar and tables are as wide as the terminal. Piped to a log file,
a bar's carriage-return frames would turn into a wall of partial lines and rich would cut tables at 80
columns (numbers included), so there progress is a plain line every PROGRESS_EVERY_S seconds (and one at
the end of a phase that wrote any), and tables are as wide as they need to be. `--quiet` silences all of it and, through
`quiet_libraries`, what transformers, TRL and accelerate print on their own (load bars, warnings).
"""

from __future__ import annotations

import sys
import time

PROGRESS_EVERY_S = 30.0  # a log file gets one progress line per this many seconds (and one at the end)


def is_terminal(stream=None) -> bool:
    stream = sys.stderr if stream is None else stream
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())


def print_table(frame, title: str = "", quiet: bool = False, float_format: str = "{:.4g}") -> None:
    """A pandas DataFrame as a rich table on stderr (skipped with --quiet); never cut when piped."""
    if quiet:
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title or None)
    for column in frame.columns:
        table.add_column(str(column), justify="right")
    for row in frame.itertuples(index=False):
        table.add_row(*[_cell(v, float_format) for v in row])
    # Off a terminal rich assumes 80 columns and ellipsizes cells to fit; a log has no width, so give it
    # room (the table is drawn at its natural width, not stretched to this).
    width = None if is_terminal() else 10_000
    Console(file=sys.stderr, width=width).print(table)


def note(message: str, quiet: bool = False) -> None:
    if not quiet:
        print(message, file=sys.stderr, flush=True)


def _cell(value, float_format: str) -> str:
    if isinstance(value, float):
        return "" if value != value else float_format.format(value)
    return "" if value is None else str(value)


class LineProgress:
    """tqdm's interface (update, set_postfix, close, with) as plain lines, for logs where carriage-return
    frames are unreadable: one line whenever `every` seconds have passed since the last, and a last line
    at the end if any was written (a phase shorter than `every` stays silent)."""

    def __init__(self, total: int | None, desc: str, unit: str, stream=None, every: float = PROGRESS_EVERY_S,
                 clock=time.monotonic):
        self.total, self.desc, self.unit, self.every, self.clock = total, desc, unit, every, clock
        self.stream = sys.stderr if stream is None else stream
        self.n, self.postfix, self.lines = 0, "", 0
        self.start = self.last = clock()
        self.closed = False

    def _line(self) -> None:
        done = f"{self.n}/{self.total}" if self.total else str(self.n)
        percent = f" ({100 * self.n / self.total:.0f}%)" if self.total else ""
        postfix = f", {self.postfix}" if self.postfix else ""
        print(f"{self.desc}: {done} {self.unit}{percent} in {self.clock() - self.start:.0f} s{postfix}",
              file=self.stream, flush=True)
        self.lines += 1
        self.last = self.clock()

    def update(self, n: int = 1) -> None:
        self.n += n
        if self.clock() - self.last >= self.every:
            self._line()

    def set_postfix(self, refresh: bool = True, **values) -> None:
        self.postfix = ", ".join(f"{k}={v}" for k, v in values.items())

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            if self.lines:
                self._line()

    def __enter__(self) -> LineProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def progress(total: int | None, desc: str, unit: str = "it", quiet: bool = False):
    """A progress bar on stderr: tqdm on a terminal, plain lines in a log, nothing with --quiet."""
    from tqdm.auto import tqdm

    if quiet:
        return tqdm(total=total, disable=True)
    if is_terminal():
        return tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, leave=False)
    return LineProgress(total, desc, unit)


def quiet_libraries(quiet: bool) -> None:
    """transformers' per-load bars ('Loading weights', 'Writing model shards') always off: they would
    drown our own progress. With --quiet, also the libraries' warnings and log lines: errors still
    reach stderr through the CLI. Warning filters set here are process-wide, as the CLI wants."""
    import logging
    import warnings

    import transformers

    transformers.utils.logging.disable_progress_bar()
    # TRL 1.16 calls a transformers 5 API deprecated in favour of another: nothing a user can act on.
    warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)
    if not quiet:
        return
    transformers.logging.set_verbosity_error()
    for category in (FutureWarning, DeprecationWarning, UserWarning):
        warnings.filterwarnings("ignore", category=category)
    for name in ("accelerate", "trl", "peft", "datasets", "torch", "huggingface_hub"):
        logging.getLogger(name).setLevel(logging.ERROR)
    import datasets

    datasets.disable_progress_bars()
    # transformers' Trainer integrations print "[INFO] Running in WANDB offline mode" to stdout when they are
    # first imported with WANDB_MODE=offline: imported here, silenced, the Trainer finds them already loaded.
    import contextlib
    import io

    with contextlib.redirect_stdout(io.StringIO()):
        import transformers.integrations.integration_utils  # noqa: F401
