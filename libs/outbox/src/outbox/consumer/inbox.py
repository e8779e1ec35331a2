"""The inbox and the version guard's statements: one place for every path of the consumer."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import timedelta
from typing import Any, cast

import orjson
from sqlalchemy import CursorResult, text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from outbox.consumer.handlers import Outcome
from outbox.envelope import ReceivedEvent

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

# The version guard for a batch: lock the aggregates' rows, decide in delivery order in Python, then write
# each aggregate's new highest version. Two statements per batch instead of one per event. Rows are locked
# and new ones inserted in (topic, aggregate) order, the one order every path of the consumer locks them in
# (two transactions locking in opposite orders can deadlock).
_READ_VERSIONS = text(
    "SELECT topic, aggregate_id, version FROM consumer_versions WHERE consumer = :c "
    "AND (topic, aggregate_id) IN (SELECT * FROM unnest(CAST(:t AS text[]), CAST(:a AS text[]))) "
    "ORDER BY topic, aggregate_id FOR UPDATE"
)
_WRITE_VERSIONS = text(
    "INSERT INTO consumer_versions (consumer, topic, aggregate_id, version) "
    "SELECT :c, t, a, v FROM unnest(CAST(:t AS text[]), CAST(:a AS text[]), CAST(:v AS bigint[])) AS x(t, a, v) "
    "ON CONFLICT (consumer, topic, aggregate_id) DO UPDATE "
    "SET version = greatest(consumer_versions.version, EXCLUDED.version), advanced_at = now()"
)

_APPLIED = text(
    "SELECT version FROM consumer_versions WHERE consumer = :c AND topic = :t AND aggregate_id = :a"
)

_PARK = text(
    "INSERT INTO inbox_parked (consumer, event_id, topic, aggregate_id, version, prev_version, record) "
    "SELECT :consumer, * FROM unnest(CAST(:event_id AS uuid[]), CAST(:topic AS text[]), "
    "CAST(:aggregate_id AS text[]), CAST(:version AS bigint[]), CAST(:prev_version AS bigint[]), "
    "CAST(:record AS jsonb[])) "
    "ON CONFLICT (consumer, event_id) DO NOTHING"
)
# Parked events whose gap has closed, taken (deleted, with their `parked` inbox rows) by whichever
# transaction gets them first. Per aggregate, the whole chain that follows the applied version: an event is
# due when its previous version is the applied one or an earlier parked event's, and every parked event
# before it is due (so a chain of 10,000 is taken in a few rounds, not one statement per event). In
# (topic, aggregate) order: the order the version guard locks aggregates in.
_UNPARK = text(
    """
    WITH candidates AS (
        SELECT p.event_id, p.topic, p.aggregate_id, p.version, p.parked_at,
               p.prev_version <= greatest(v.version, max(p.version) OVER (
                   PARTITION BY p.topic, p.aggregate_id ORDER BY p.version, p.parked_at, p.event_id
                   ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING)) AS follows
        FROM inbox_parked p
        JOIN consumer_versions v ON v.consumer = p.consumer AND v.topic = p.topic AND v.aggregate_id = p.aggregate_id
        WHERE p.consumer = :consumer
          AND (CAST(:topics AS text[]) IS NULL OR (p.topic, p.aggregate_id) IN (
              SELECT * FROM unnest(CAST(:topics AS text[]), CAST(:aggregates AS text[]))))
    ), due AS (
        SELECT event_id FROM (
            SELECT event_id, topic, aggregate_id, version, parked_at, bool_and(follows) OVER (
                PARTITION BY topic, aggregate_id ORDER BY version, parked_at, event_id) AS chained
            FROM candidates
        ) c
        WHERE chained
        ORDER BY topic, aggregate_id, version, parked_at, event_id
        LIMIT :limit
    ), taken AS (
        SELECT p.consumer, p.event_id FROM inbox_parked p JOIN due ON due.event_id = p.event_id
        WHERE p.consumer = :consumer
        FOR UPDATE OF p SKIP LOCKED
    ), gone AS (
        DELETE FROM inbox i USING taken WHERE i.consumer = taken.consumer AND i.event_id = taken.event_id
          AND i.outcome = 'parked'
    )
    DELETE FROM inbox_parked p USING taken WHERE p.consumer = taken.consumer AND p.event_id = taken.event_id
    RETURNING p.record, p.topic, p.aggregate_id, p.version, p.parked_at
    """
)
_PARKED = text(
    "SELECT topic, aggregate_id, count(*) AS events, min(parked_at) AS since, min(prev_version) AS waiting_for "
    "FROM inbox_parked WHERE consumer = :consumer GROUP BY topic, aggregate_id"
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


def decide(
    applied: dict[tuple[str, str], int], events: Sequence[ReceivedEvent], gap_aware: Sequence[bool]
) -> tuple[list[Outcome], dict[tuple[str, str], int]]:
    """The version guard's verdicts for `events` in delivery order, given each aggregate's applied
    version; and the aggregates' new highest versions. Pure: the stores read and write around it."""
    current = dict(applied)
    changed: dict[tuple[str, str], int] = {}
    verdicts: list[Outcome] = []
    for event, park in zip(events, gap_aware, strict=True):
        if event.version is None or not event.subject:
            verdicts.append(Outcome.APPLIED)
            continue
        key = (event.topic, event.subject)
        seen = current.get(key)
        if seen is not None and event.version < seen:
            verdicts.append(Outcome.STALE)
        elif seen is not None and park and event.prev_version is not None and seen < event.prev_version:
            verdicts.append(Outcome.PARKED)
        else:
            verdicts.append(Outcome.APPLIED)
            if seen is None or event.version > seen:
                current[key] = changed[key] = event.version
    return verdicts, changed


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

    async def advance_version(
        self, session: AsyncSession, event: ReceivedEvent, *, gap_aware: bool = False
    ) -> Outcome:
        """The version guard for one event: APPLIED (its version recorded as the aggregate's highest),
        STALE when a higher one was applied, with `gap_aware` PARKED when its previous version was not.

        An event without a subject names no aggregate: it is not guarded (all of them sharing one key
        would make unrelated events stale)."""
        [verdict] = await self.guard(session, [event], [gap_aware])
        return verdict

    async def guard(
        self, session: AsyncSession, events: Sequence[ReceivedEvent], gap_aware: Sequence[bool]
    ) -> list[Outcome]:
        """`advance_version` for a batch, in delivery order: APPLIED, STALE or PARKED per event.

        Another member holding the same partition during a rebalance is serialised by the inbox insert that
        precedes this (it blocks on the same events' primary keys), so the read here sees its commit."""
        keyed = [(e.topic, e.subject) for e in events if e.version is not None and e.subject]
        if not keyed:
            return [Outcome.APPLIED] * len(events)
        topics, aggregates = zip(*sorted(set(keyed)), strict=True)
        read = await session.execute(
            _READ_VERSIONS, {"c": self.consumer, "t": list(topics), "a": list(aggregates)}
        )
        current: dict[tuple[str, str], int] = {(r.topic, r.aggregate_id): r.version for r in read}
        verdicts, changed = decide(current, events, gap_aware)
        if changed:
            t, a, v = zip(*((k[0], k[1], v) for k, v in sorted(changed.items())), strict=True)
            await session.execute(
                _WRITE_VERSIONS, {"c": self.consumer, "t": list(t), "a": list(a), "v": list(v)}
            )
        return verdicts

    async def applied_version(self, session: AsyncSession, topic: str, aggregate_id: str) -> int | None:
        return cast(
            "int | None",
            (await session.execute(_APPLIED, {"c": self.consumer, "t": topic, "a": aggregate_id})).scalar(),
        )

    async def lock_versions(self, session: AsyncSession, aggregates: Sequence[tuple[str, str]]) -> None:
        """Lock these aggregates' versions up front, in the guard's (topic, aggregate) order: for a
        transaction that would otherwise take them one event at a time, in delivery order."""
        if aggregates:
            topics, ids = zip(*sorted(set(aggregates)), strict=True)
            await session.execute(_READ_VERSIONS, {"c": self.consumer, "t": list(topics), "a": list(ids)})

    async def park(
        self, session: AsyncSession, parked: Sequence[tuple[ReceivedEvent, dict[str, Any]]]
    ) -> None:
        """Keep events that arrived before their predecessor, with their records, to apply when it comes."""
        if not parked:
            return
        events = [e for e, _ in parked]
        await session.execute(
            _PARK,
            {
                "consumer": self.consumer,
                "event_id": [e.id for e in events],
                "topic": [e.topic for e in events],
                "aggregate_id": [e.subject for e in events],
                "version": [e.version for e in events],
                "prev_version": [e.prev_version for e in events],
                "record": [orjson.dumps(r).decode() for _, r in parked],
            },
        )

    async def unpark(
        self, session: AsyncSession, aggregates: Sequence[tuple[str, str]] | None, *, limit: int = 500
    ) -> list[dict[str, Any]]:
        """Take up to `limit` parked events (of `aggregates`, or all) whose gap closed, each aggregate's
        whole due chain first: their stored records, by (topic, aggregate) then version, equal versions in
        delivery order. Their `parked` inbox rows go too, so applying them records them afresh."""
        params: dict[str, Any] = {
            "consumer": self.consumer,
            "limit": limit,
            "topics": None,
            "aggregates": None,
        }
        if aggregates is not None:
            params |= {"topics": [t for t, _ in aggregates], "aggregates": [a for _, a in aggregates]}
        rows = (await session.execute(_UNPARK, params)).all()
        order = sorted(
            rows, key=lambda r: (r.topic, r.aggregate_id, r.version, r.parked_at, r.record["offset"])
        )
        return [r.record for r in order]

    async def parked(self, session: AsyncSession) -> list[Any]:
        """Per parked aggregate: how many events, since when, which version they wait for."""
        return list((await session.execute(_PARKED, {"consumer": self.consumer})).all())

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
