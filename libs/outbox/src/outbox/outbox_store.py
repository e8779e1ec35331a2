"""The outbox table's statements, shared by the relay and the operator tools: one place, one SQL style.

Identity order is insert order, not commit order: a transaction that inserted row 10 may commit after the
one that inserted row 11. The relay therefore never remembers a "last id seen": it claims whatever is
pending, oldest id first, and orders per aggregate, which holds whatever order commits land in.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy import text
from sqlalchemy.engine import Row
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

# One statement claims a batch and says, for each claimed row, whether a pending row of its aggregate lies
# between it and its previous claimed row (or before it, for the first): a gap. A row after a gap must wait:
# its predecessor is held by another relay. Rows behind a predecessor that waits out a backoff are not
# claimed at all (`blocked`, read through a partial index holding only failed rows): otherwise an aggregate
# with a batch's worth of rows behind one failing row fills every claim and starves all other aggregates.
# The header values are rendered by PostgreSQL (another core) rather than per row in Python.
_CLAIM = text(
    """
    WITH blocked AS MATERIALIZED (
        SELECT topic, aggregate_id, min(id) AS from_id
        FROM outbox
        WHERE published_at IS NULL AND dead_at IS NULL AND attempts > 0 AND available_at > now()
        GROUP BY topic, aggregate_id
    ), claimed AS (
        SELECT id, event_id, topic, event_type, source, aggregate_id, aggregate_version, payload,
               trace_context, occurred_at, attempts
        FROM outbox o
        WHERE published_at IS NULL AND dead_at IS NULL AND available_at <= now()
          AND NOT EXISTS (
              SELECT 1 FROM blocked b
              WHERE b.topic = o.topic AND b.aggregate_id = o.aggregate_id AND b.from_id < o.id
          )
        ORDER BY id
        LIMIT :limit
        FOR UPDATE SKIP LOCKED
    ), sequenced AS (
        SELECT c.*, lag(c.id, 1, 0::bigint) OVER (PARTITION BY c.topic, c.aggregate_id ORDER BY c.id) AS prev_id
        FROM claimed c
    )
    SELECT s.id, s.event_id::text AS event_id, s.topic, s.event_type, s.source, s.aggregate_id, s.aggregate_version,
           s.payload::text AS payload_json, s.trace_context->>'traceparent' AS traceparent,
           s.trace_context->>'tracestate' AS tracestate, to_json(s.occurred_at)#>>'{}' AS occurred_at, s.attempts,
           EXISTS (
               SELECT 1 FROM outbox p
               WHERE p.aggregate_id = s.aggregate_id AND p.topic = s.topic
                 AND p.published_at IS NULL AND p.dead_at IS NULL
                 AND p.id < s.id AND p.id > s.prev_id
           ) AS gap
    FROM sequenced s
    ORDER BY s.id
    """
)

_MARK_PUBLISHED = text("UPDATE outbox SET published_at = now(), last_error = NULL WHERE id = ANY(:ids)")

_MARK_FAILED = text(
    """
    UPDATE outbox
    SET attempts = attempts + 1,
        last_error = :error,
        available_at = now() + make_interval(secs => :backoff_s),
        dead_at = CASE WHEN attempts + 1 >= :max_attempts THEN now() END
    WHERE id = :id
    RETURNING dead_at IS NOT NULL AS dead
    """
)

# SKIP LOCKED: several relays run the same cleanup; each takes rows no other one is deleting.
_DELETE_PUBLISHED = text(
    """
    DELETE FROM outbox WHERE id IN (
        SELECT id FROM outbox
        WHERE published_at IS NOT NULL AND published_at < now() - make_interval(secs => :retention_s)
        ORDER BY published_at
        LIMIT :limit
        FOR UPDATE SKIP LOCKED
    )
    """
)

_DELETE_DEAD = text(
    """
    DELETE FROM outbox WHERE id IN (
        SELECT id FROM outbox
        WHERE dead_at IS NOT NULL AND dead_at < now() - make_interval(secs => :retention_s)
        ORDER BY id
        LIMIT :limit
        FOR UPDATE SKIP LOCKED
    )
    """
)


@dataclass(frozen=True, slots=True)
class Retention:
    published: timedelta
    dead: timedelta
    batch: int


class OutboxStore:
    """Claim, mark and prune outbox rows. Claims and marks run in the caller's transaction."""

    @staticmethod
    async def claim(conn: AsyncConnection, limit: int) -> Sequence[Row[Any]]:
        return (await conn.execute(_CLAIM, {"limit": limit})).all()

    @staticmethod
    async def mark_published(conn: AsyncConnection, ids: list[int]) -> None:
        if ids:
            await conn.execute(_MARK_PUBLISHED, {"ids": ids})

    @staticmethod
    async def mark_failed(
        conn: AsyncConnection, row_id: int, error: str, *, backoff_s: float, max_attempts: int
    ) -> bool:
        """Count a record-level failure against the row; True when that dead-lettered it."""
        result = await conn.execute(
            _MARK_FAILED,
            {"id": row_id, "error": error[:2000], "backoff_s": backoff_s, "max_attempts": max_attempts},
        )
        return bool(result.scalar_one())

    @staticmethod
    async def prune(engine: AsyncEngine, retention: Retention, *, stop: Any = None) -> int:
        """Delete published rows past their retention, then dead rows past theirs, in bounded batches."""
        total = 0
        for statement, window in ((_DELETE_PUBLISHED, retention.published), (_DELETE_DEAD, retention.dead)):
            while True:
                async with engine.begin() as conn:
                    result = await conn.execute(
                        statement, {"retention_s": window.total_seconds(), "limit": retention.batch}
                    )
                deleted = result.rowcount or 0
                total += deleted
                if deleted < retention.batch or (stop is not None and stop()):
                    break
        return total
