"""Points in time as operators type them: `15m`, `2h`, `1d`, `1h30m` (that long ago) or an ISO timestamp.

Used by `--since/--until` (replay). An ISO timestamp without an offset is local time. Anything else
(`yesterday`, `2 hours`) is refused with the accepted forms named, rather than a parser's traceback.
"""

from __future__ import annotations

import argparse
import re
from datetime import UTC, datetime, timedelta

_PART = r"(\d+(?:\.\d+)?)([smhdw])"
_DURATION = re.compile(rf"(?:{_PART})+")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}
ACCEPTED = (
    "a duration ago (30s, 15m, 2h, 1d, 1w, 1h30m) or an ISO timestamp (2026-01-31, 2026-01-31T14:00+01:00)"
)


def parse_duration(text: str) -> timedelta | None:
    """`1h30m` -> 90 minutes; None when `text` is not a duration."""
    compact = text.strip().lower().replace(" ", "")
    if not _DURATION.fullmatch(compact):
        return None
    total = timedelta()
    for amount, unit in re.findall(_PART, compact):
        total += timedelta(**{_UNITS[unit]: float(amount)})
    return total


def parse_when(text: str, *, now: datetime | None = None) -> datetime:
    """A timezone-aware point in time; `argparse.ArgumentTypeError` (a one-line usage error) otherwise."""
    duration = parse_duration(text)
    if duration is not None:
        return (now or datetime.now(UTC)) - duration
    try:
        when = datetime.fromisoformat(text.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not {ACCEPTED}") from None
    return when if when.tzinfo else when.astimezone()
