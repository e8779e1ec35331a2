"""The inbox and the version guard's statements: one place for every path of the consumer."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import timedelta
from typing import Any, cast

from sqlalchemy import CursorResult, text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from outbox.envelope import ReceivedEvent
from outbox.handlers import Outcome

_COLUMNS = (
    "consumer",
    "event_id",
    "event_type",
    "topic",
    "partition",
    "offset",
    "aggregate_id",
    "aggregate_version",
    "outcome",
)

# One constant statement over arrays: a multi-VALUES insert would be compiled and parsed anew for every
# batch size (measured at several ms per batch).
_INSERT = text(
    """
    INSERT INTO inbox (consumer, event_id, event_type, topic, partition, "offset", aggregate_id, aggregate_version, outcome)
    SELECT * FROM unnest(
        CAST(:consumer AS text[]), CAST(:event_id AS uuid[]), CAST(:event_type AS text[]), CAST(:topic AS text[]),
        CAST(:partition AS integer[]), CAST(:offset AS bigint[]), CAST(:aggregate_id AS text[]),
        CAST(:aggregate_version AS bigint[]), CAST(:outcome AS text[])
    )
    ON CONFLICT (consumer, event_id) DO NOTHING
    RETURNING event_id
    """
)

_MARK = text("UPDATE inbox SET outcome = :outcome WHERE consumer = :consumer AND event_id = ANY(:ids)")

_FORGET_DEAD = text(
    "DELETE FROM inbox WHERE consumer = :consumer AND event_id = ANY(:ids) AND outcome = 'dead'"
)

_ADVANCE = text(
    "INSERT INTO consumer_versions (consumer, topic, aggregate_id, version) VALUES (:c, :t, :a, :v) "
    "ON CONFLICT (consumer, topic, aggregate_id) DO UPDATE SET version = EXCLUDED.version "
    "WHERE consumer_versions.version <= EXCLUDED.version RETURNING version"
)

_PRUNE = text(
    """
    DELETE FROM inbox WHERE (consumer, event_id) IN (
        SELECT consumer, event_id FROM inbox
        WHERE consumer = :consumer AND processed_at < now() - make_interval(secs => :retention_s)
        LIMIT :limit
        FOR UPDATE SKIP LOCKED
    )
    """
)


class InboxStore:
    """Inbox rows and aggregate versions of one consumer, in the caller's transaction."""

    def __init__(self, consumer: str) -> None:
        self.consumer = consumer

    def row(self, event: ReceivedEvent, outcome: Outcome) -> dict[str, Any]:
        return {
            "consumer": self.consumer,
            "event_id": event.id,
            "event_type": event.type,
            "topic": event.topic,
            "partition": event.partition,
            "offset": event.offset,
            "aggregate_id": event.subject,
            "aggregate_version": event.version,
            "outcome": outcome.value,
        }

    async def insert(self, session: AsyncSession, rows: Sequence[dict[str, Any]]) -> set[uuid.UUID]:
        """Insert inbox rows; returns the event ids that were new (the rest were already there).

        Inserting first also serialises two members that got the same partition during a rebalance: the
        second blocks on the primary key, then sees the conflict and skips."""
        if not rows:
            return set()
        inserted = await session.execute(_INSERT, {c: [row[c] for row in rows] for c in _COLUMNS})
        return set(inserted.scalars())

    async def mark(self, session: AsyncSession, ids: Sequence[uuid.UUID], outcome: Outcome) -> None:
        if ids:
            await session.execute(
                _MARK, {"outcome": outcome.value, "consumer": self.consumer, "ids": list(ids)}
            )

    async def forget_dead(self, session: AsyncSession, ids: Sequence[uuid.UUID]) -> None:
        """Drop the `dead` rows of redriven events, so the redrive is applied rather than a duplicate."""
        if ids:
            await session.execute(_FORGET_DEAD, {"consumer": self.consumer, "ids": list(ids)})

    async def advance_version(self, session: AsyncSession, event: ReceivedEvent) -> bool:
        """Record the event's version as its aggregate's highest; False when a higher one was applied.

        An event without a subject names no aggregate: it is not guarded (all of them sharing one key
        would make unrelated events stale)."""
        if event.version is None or not event.subject:
            return True
        row = await session.execute(
            _ADVANCE, {"c": self.consumer, "t": event.topic, "a": event.subject, "v": event.version}
        )
        return row.first() is not None

    async def prune(
        self, sessions: async_sessionmaker[AsyncSession], retention: timedelta, *, batch: int = 5000
    ) -> int:
        """Delete inbox rows older than `retention`, in batches. Keep it longer than the topics' retention:
        an event redelivered after its inbox row is gone is applied again (unless the version guard
        stops it)."""
        total = 0
        while True:
            async with sessions() as session, session.begin():
                result = await session.execute(
                    _PRUNE,
                    {"consumer": self.consumer, "retention_s": retention.total_seconds(), "limit": batch},
                )
            deleted = cast(CursorResult[Any], result).rowcount or 0
            total += deleted
            if deleted < batch:
                return total
