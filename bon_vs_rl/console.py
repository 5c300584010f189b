"""Human-facing output: tables and notes go to stderr, so stdout stays machine-readable."""

from __future__ import annotations

import sys


def print_table(frame, title: str = "", quiet: bool = False, float_format: str = "{:.4g}") -> None:
    """A pandas DataFrame as a rich table on stderr (skipped with --quiet)."""
    if quiet:
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title or None)
    for column in frame.columns:
        table.add_column(str(column), justify="right")
    for row in frame.itertuples(index=False):
        table.add_row(*[_cell(v, float_format) for v in row])
    Console(file=sys.stderr).print(table)


def note(message: str, quiet: bool = False) -> None:
    if not quiet:
        print(message, file=sys.stderr, flush=True)


def _cell(value, float_format: str) -> str:
    if isinstance(value, float):
        return "" if value != value else float_format.format(value)
    return "" if value is None else str(value)
