"""What every command prints: `--json` (one document, or one object per line for streams) or, for people,
rich tables and short lines. Status and warnings go to stderr; stdout carries only the answer."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from functools import cache
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rich.console import Console


@cache
def _stdout() -> Console:
    # Imported when printing: `outbox health`, a probe run every few seconds, builds the parser only.
    from rich.console import Console

    # Without a terminal rich would wrap tables at 80 columns: a pipe or a file gets them whole.
    return Console(highlight=False, soft_wrap=False, width=None if sys.stdout.isatty() else 200)


def add_json_flag(parser: argparse.ArgumentParser, what: str = "one JSON document") -> None:
    parser.add_argument(
        "--json", action="store_true", help=f"print {what}, for scripts (default: for people)"
    )


def print_json(document: Any) -> None:
    print(json.dumps(document, indent=2, default=str))


def print_json_line(document: Any) -> None:
    print(json.dumps(document, default=str, ensure_ascii=False), flush=True)


TABLE_ROWS = 100  # rows of a table for people unless told otherwise (--json has them all)


def table(
    title: str | None,
    columns: Sequence[str],
    rows: Sequence[Sequence[Any]],
    *,
    limit: int | None = None,
    more: str = "more (--json: all)",
) -> None:
    """A table on stdout; None cells print empty. `limit`: at most that many rows, then a line `… N <more>`
    (rich took 14 s to lay out 20,000 rows)."""
    from rich.table import Table

    grid = Table(title=title, title_justify="left", show_edge=False, header_style="bold")
    for column in columns:
        grid.add_column(column, overflow="fold")
    shown = rows if limit is None else rows[:limit]
    for row in shown:
        grid.add_row(*("" if cell is None else str(cell) for cell in row))
    _stdout().print(grid)
    if len(rows) > len(shown):
        line(f"… {len(rows) - len(shown)} {more}")


def line(text: str = "") -> None:
    _stdout().print(text, markup=False, highlight=False)


def warn(command: str, text: str) -> None:
    print(f"outbox {command}: {text}", file=sys.stderr)


def short(text: Any, limit: int = 80) -> str:
    flat = " ".join(str(text or "").split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def when(value: Any) -> str:
    """A timestamp to the second, without the microseconds people do not read."""
    text = str(value or "")
    return text[:19].replace("T", " ") + (" UTC" if text.endswith(("+00:00", "Z")) else "") if text else ""
