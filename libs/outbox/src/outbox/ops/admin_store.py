"""The outbox table's statements for operators: backlog figures by state, dead rows, replay, redrive.
The relay's statements are in `outbox_store`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, cast

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from outbox.ops.backlog import Backlog, backlog_sql

__all__ = ["Backlog", "DeadRow", "OutboxAdmin", "Selection"]

_BACKLOG_WITH_HELD = text(backlog_sql(held=True))
_BACKLOG_WITHOUT_HELD = text(backlog_sql(held=False))

# Optional filters as `(:x IS NULL OR column = :x)`: one statement whatever the operator chose.
_SELECTION = """
    published_at IS NOT NULL
    AND (CAST(:topic AS text) IS NULL OR topic = :topic)
    AND (CAST(:event_type AS text) IS NULL OR event_type = :event_type)
    AND (CAST(:aggregate_id AS text) IS NULL OR aggregate_id = :aggregate_id)
    AND (CAST(:since AS timestamptz) IS NULL OR occurred_at >= :since)
    AND (CAST(:until AS timestamptz) IS NULL OR occurred_at < :until)
"""
_COUNT_REPLAYABLE = text(f"SELECT count(*) FROM outbox WHERE {_SELECTION}")
_SAMPLE_REPLAYABLE = text(
    "SELECT id, topic, event_type, aggregate_id, aggregate_version, occurred_at, event_id::text AS event_id "
    f"FROM outbox WHERE {_SELECTION} ORDER BY id LIMIT :limit"
)
# One bounded chunk per transaction, in id order: a long replay never holds a million row locks, and rows
# written meanwhile queue between its chunks (claims go in ready order).
_REPLAY_CHUNK = text(
    f"""
    UPDATE outbox SET published_at = NULL, attempts = 0, last_error = NULL, available_at = now()
    WHERE id IN (
        SELECT id FROM outbox WHERE {_SELECTION} AND id > :after ORDER BY id LIMIT :limit FOR UPDATE
    )
    RETURNING id
    """
)

# Operator actions wake the relays on the channel they listen on, as a writer's commit does.
_WAKE = text("SELECT pg_notify(:c, '')")

# What went out after a dead row, from state that outlives the retention of published rows: the retained
# published successors; the head's `pruned_published_id` (published successors pruned after it, recorded by
# the prune: `outbox_retention`); and, for successors pruned before that marker existed, the head's version
# when no retained row after the dead one carries it (the row that set it is gone: published, then pruned).
# The head of an aggregate with a dead row is never pruned.
_DEAD_ROWS = text(
    """
    SELECT d.id, d.topic, d.aggregate_id, d.aggregate_version,
           ARRAY(
               SELECT s.id FROM outbox s
               WHERE s.topic = d.topic AND s.aggregate_id = d.aggregate_id AND s.id > d.id
                 AND s.published_at IS NOT NULL
               ORDER BY s.id
           ) AS published_after,
           CASE WHEN h.pruned_published_id > d.id THEN h.pruned_published_id END AS pruned_through,
           coalesce(h.version > d.aggregate_version AND NOT EXISTS (
               SELECT 1 FROM outbox r
               WHERE r.topic = d.topic AND r.aggregate_id = d.aggregate_id AND r.id > d.id
                 AND r.aggregate_version >= h.version
           ), false) AS newer_version_pruned
    FROM outbox d
    LEFT JOIN outbox_heads h ON h.topic = d.topic AND h.aggregate_id = d.aggregate_id
    WHERE d.dead_at IS NOT NULL AND (CAST(:ids AS bigint[]) IS NULL OR d.id = ANY(:ids))
    ORDER BY d.id
    """
)
_REDRIVE = text(
    "UPDATE outbox SET dead_at = NULL, attempts = 0, last_error = NULL, available_at = now() "
    "WHERE id = ANY(:ids) AND dead_at IS NOT NULL"
)
# Order-preserving redrive: the successors already published go out again after the redriven row.
_RESEND = text(
    "UPDATE outbox SET published_at = NULL, attempts = 0, last_error = NULL, available_at = now() "
    "WHERE id = ANY(:ids) AND published_at IS NOT NULL"
)


@dataclass(frozen=True, slots=True)
class Selection:
    topic: str | None = None
    event_type: str | None = None
    aggregate_id: str | None = None
    since: Any = None
    until: Any = None

    def params(self) -> dict[str, Any]:
        return {
            "topic": self.topic,
            "event_type": self.event_type,
            "aggregate_id": self.aggregate_id,
            "since": self.since,
            "until": self.until,
        }


@dataclass(frozen=True, slots=True)
class DeadRow:
    id: int
    topic: str
    aggregate_id: str
    aggregate_version: int | None
    published_after: list[int]  # ids of this aggregate's retained rows published after it
    pruned_through: int | None = None  # published successors up to this id were pruned
    newer_version_pruned: bool = False  # a later version was written, and its row is gone (published, pruned)

    @property
    def late(self) -> bool:
        """Later rows of its aggregate went out: a redrive would reach consumers after them."""
        return bool(self.published_after or self.pruned_through or self.newer_version_pruned)

    @property
    def resendable(self) -> bool:
        """Its newest published successor is retained: re-sending the retained ones after it ends the
        aggregate's log at its latest state again (the pruned ones, older, are superseded by them)."""
        newest = max(self.published_after, default=0)
        return newest > (self.pruned_through or 0) and not self.newer_version_pruned


class OutboxAdmin:
    """The operators' statements: backlog, dead rows, replay, redrive. Each in its own transaction."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    async def backlog(self, *, held: bool = False) -> Backlog:
        """`held`: also count the rows held behind a later-ready row (`held_behind_pending`)."""
        async with self.engine.connect() as conn:
            row = (await conn.execute(_BACKLOG_WITH_HELD if held else _BACKLOG_WITHOUT_HELD)).one()
        return Backlog.from_row(row, held=held)

    async def count_replayable(self, selection: Selection) -> int:
        async with self.engine.connect() as conn:
            return int((await conn.execute(_COUNT_REPLAYABLE, selection.params())).scalar_one())

    async def sample_replayable(self, selection: Selection, limit: int) -> list[dict[str, Any]]:
        """The first `limit` rows a replay would send, in the order it sends them."""
        async with self.engine.connect() as conn:
            result = await conn.execute(_SAMPLE_REPLAYABLE, {**selection.params(), "limit": limit})
            return [dict(r._mapping) for r in result]

    async def replay(self, selection: Selection, *, chunk: int, wake: str | None) -> int:
        total, after = 0, 0
        while True:
            async with self.engine.begin() as conn:
                ids = list(
                    (
                        await conn.execute(
                            _REPLAY_CHUNK, {**selection.params(), "after": after, "limit": chunk}
                        )
                    ).scalars()
                )
                if wake:  # every chunk: the relays start on it while the next is marked
                    await conn.execute(_WAKE, {"c": wake})
            total += len(ids)
            if len(ids) < chunk:
                return total
            after = max(ids)

    async def dead_rows(self, ids: list[int] | None) -> list[DeadRow]:
        async with self.engine.connect() as conn:
            rows = await conn.execute(_DEAD_ROWS, {"ids": ids})
            return [
                DeadRow(
                    r.id,
                    r.topic,
                    r.aggregate_id,
                    r.aggregate_version,
                    list(r.published_after),
                    r.pruned_through,
                    r.newer_version_pruned,
                )
                for r in rows
            ]

    async def redrive(self, ids: list[int], resend: list[int], *, wake: str | None) -> int:
        async with self.engine.begin() as conn:
            result = await conn.execute(_REDRIVE, {"ids": ids})
            if resend:
                await conn.execute(_RESEND, {"ids": resend})
            if wake:
                await conn.execute(_WAKE, {"c": wake})
            return int(cast(Any, result).rowcount or 0)
