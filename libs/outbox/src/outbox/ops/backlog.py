"""An outbox's backlog by state: the statement and its figures, shared by the metrics scrape (SQLAlchemy,
`admin_store`) and `outbox status` (psycopg alone, `status.py`), so this module imports neither."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

# Every figure comes from the pending and dead partial indexes (or the planner's row estimate): none scans
# the retained history, which is most of the table. `ahead_ready_at`: the latest ready time of the pending
# rows before each one in its aggregate. A due row ready earlier than that waits for a row that comes after
# it in ready order (a redrive or replay); the relay's claim that reaches it moves it behind (`outbox_store`).
# Only `outbox status` asks for it: the window sorts every pending row (measured 3x the query's time on a
# 50k backlog), too much for each metrics scrape.
AHEAD_READY_AT = """max(available_at) OVER (
                   PARTITION BY topic, aggregate_id ORDER BY id ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING
               )"""
BACKLOG = """
    WITH pending AS (
        SELECT id, topic, aggregate_id, available_at, attempts, {ahead_ready_at} AS ahead_ready_at
        FROM outbox
        WHERE published_at IS NULL AND dead_at IS NULL
    ), held AS (
        SELECT topic, aggregate_id, min(id) AS from_id, bool_or(dead) AS dead FROM (
            SELECT topic, aggregate_id, id, false AS dead FROM pending WHERE attempts > 0
            UNION ALL
            SELECT topic, aggregate_id, id, true FROM outbox WHERE dead_at IS NOT NULL AND published_at IS NULL
        ) h GROUP BY topic, aggregate_id
    )
    SELECT
        count(*) FILTER (WHERE p.available_at > now()) AS backoff,
        count(*) FILTER (WHERE p.available_at <= now() AND h.from_id < p.id AND NOT h.dead) AS behind_backoff,
        count(*) FILTER (WHERE p.available_at <= now() AND h.from_id < p.id AND h.dead) AS behind_dead,
        count(*) FILTER (
            WHERE p.available_at <= now() AND p.ahead_ready_at > p.available_at AND NOT coalesce(h.from_id < p.id, false)
        ) AS held_behind_pending,
        count(*) FILTER (WHERE p.available_at <= now()) AS due,
        min(p.available_at) FILTER (WHERE p.available_at <= now()) AS oldest_due,
        (SELECT count(*) FROM outbox WHERE dead_at IS NOT NULL) AS dead,
        (SELECT max(published_at) FROM outbox WHERE published_at IS NOT NULL) AS last_published_at,
        now() AS now
    FROM pending p LEFT JOIN held h ON h.topic = p.topic AND h.aggregate_id = p.aggregate_id
    """


def backlog_sql(*, held: bool) -> str:
    return BACKLOG.format(ahead_ready_at=AHEAD_READY_AT if held else "NULL::timestamptz")


@dataclass(frozen=True, slots=True)
class Backlog:
    """An outbox's pending rows by state. `due`: ready by time, of which `behind_backoff`/`behind_dead`
    wait for a predecessor (one that failed, in backoff or due for its retry; or dead-lettered) and
    `held_behind_pending` for a pending one of their aggregate that is ready later than they are (a
    redriven or replayed row: the relay moves them behind it when its claims reach them; None: not
    counted);
    `backoff`: waiting out a retry delay; `oldest_due_age_s`: how long the longest-waiting due row has
    been ready (from `available_at`, so a replayed row counts from its replay, not from when it first
    happened)."""

    due: int
    behind_backoff: int
    behind_dead: int
    held_behind_pending: int | None
    backoff: int
    dead: int
    oldest_due_age_s: float
    last_published_at: Any

    @property
    def pending(self) -> int:
        return self.due + self.backoff

    @property
    def ready(self) -> int:
        return self.due - self.behind_backoff - self.behind_dead - (self.held_behind_pending or 0)

    @classmethod
    def from_row(cls, row: Any, *, held: bool) -> Backlog:
        """From the statement's row (attributes or a mapping)."""

        def get(name: str) -> Any:
            return row[name] if isinstance(row, dict) else getattr(row, name)

        now: datetime = get("now")
        oldest: datetime | None = get("oldest_due")
        age = (now - oldest).total_seconds() if oldest is not None else 0.0
        return cls(
            due=get("due"),
            behind_backoff=get("behind_backoff"),
            behind_dead=get("behind_dead"),
            held_behind_pending=get("held_behind_pending") if held else None,
            backoff=get("backoff"),
            dead=get("dead"),
            oldest_due_age_s=max(age, 0.0),
            last_published_at=get("last_published_at"),
        )
