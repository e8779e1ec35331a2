"""Figures read from outside the relay and the consumers: an outbox's backlog, a consumer group's lag
(computed in `lag.py`, cached here for the metrics scrape).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

from sqlalchemy.ext.asyncio import AsyncEngine

from outbox.ops.admin_store import OutboxAdmin
from outbox.ops.lag import Lag, LagUnknown, group_lag

if TYPE_CHECKING:  # OpenTelemetry's metrics SDK only for the scrape, not for `outbox status`
    from outbox.telemetry.metrics import BacklogSnapshot

__all__ = [
    "CachedGroupLag",
    "Lag",
    "LagUnknown",
    "group_lag",
    "read_backlog",
]


async def read_backlog(engine: AsyncEngine) -> BacklogSnapshot:
    from outbox.telemetry.metrics import BacklogSnapshot

    backlog = await OutboxAdmin(engine).backlog()
    return BacklogSnapshot(
        pending=backlog.pending, oldest_pending_age_s=backlog.oldest_due_age_s, dead=backlog.dead
    )


class CachedGroupLag:
    """Group lag computed at most every `interval_s` (a scrape should not cost a broker probe each time)."""

    def __init__(self, bootstrap: str, group: str, topics: Sequence[str], interval_s: float = 5.0) -> None:
        self.bootstrap, self.group, self.topics, self.interval_s = bootstrap, group, list(topics), interval_s
        self._value: Lag | None = None
        self._at = -float("inf")
        self._lock = asyncio.Lock()

    async def get(self) -> Lag | None:
        async with self._lock:
            if time.monotonic() - self._at >= self.interval_s:
                try:  # bounded: an unreachable broker costs a scrape seconds, not minutes
                    self._value = await asyncio.wait_for(
                        group_lag(self.bootstrap, self.group, self.topics), timeout=10
                    )
                except Exception:
                    self._value = None  # absent rather than stale
                self._at = time.monotonic()
            return self._value
