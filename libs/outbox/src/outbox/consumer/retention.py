"""The consumer's retention of per-aggregate state, run by its prune loop beside the inbox pruning.

- Version rows (`consumer_versions`) the guard has not moved for the version retention are deleted, never
  below the inbox retention: until then a redelivered event is a duplicate in the inbox anyway, and after
  it (longer than any topic's retention, as the inbox's) no older event of the aggregate should come back.
  A later event of such an aggregate finds no baseline and is applied, as for an aggregate never seen. A
  row with events parked behind it stays (the parked events are due relative to it).
- Parked events (`inbox_parked`) whose gap has not closed within the park retention go to the dead-letter
  topic (inbox outcome `dead`, so a plain redelivery is a duplicate and `outbox dlq redrive` a new attempt)
  with an error naming `outbox why` and `outbox skip-gap`. The gap itself stays open: the guard's version
  does not move, so later events still park until the missing version arrives or an operator skips it.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import timedelta
from typing import Any, Protocol, cast

from sqlalchemy import CursorResult, text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from outbox.consumer.handlers import Outcome
from outbox.consumer.parking import record_from
from outbox.consumer.ports import DeadLetters, Inbox

log = logging.getLogger("outbox.consumer")

# Version rows are visited a page at a time in key order (the primary key), one short transaction each.
_VERSIONS_PAGE = text(
    "SELECT topic, aggregate_id, advanced_at < now() - make_interval(secs => :retention_s) AS quiet "
    "FROM consumer_versions WHERE consumer = :c AND (topic, aggregate_id) > (:topic, :aggregate) "
    "ORDER BY topic, aggregate_id LIMIT :limit"
)
# Lock first, skipping rows a guard holds; then check for parked events in a statement of its own, so its
# snapshot sees every parking transaction that committed before the lock (one arriving later waits for the
# lock, then finds no row: no baseline, and applies rather than parks).
_LOCK_VERSIONS = text(
    "SELECT topic, aggregate_id FROM consumer_versions WHERE consumer = :c "
    "AND (topic, aggregate_id) IN (SELECT * FROM unnest(CAST(:t AS text[]), CAST(:a AS text[]))) "
    "AND advanced_at < now() - make_interval(secs => :retention_s) "
    "ORDER BY topic, aggregate_id FOR UPDATE SKIP LOCKED"
)
_DELETE_VERSIONS = text(
    """
    DELETE FROM consumer_versions v
    WHERE v.consumer = :c
      AND (v.topic, v.aggregate_id) IN (SELECT * FROM unnest(CAST(:t AS text[]), CAST(:a AS text[])))
      AND NOT EXISTS (
          SELECT 1 FROM inbox_parked p
          WHERE p.consumer = v.consumer AND p.topic = v.topic AND p.aggregate_id = v.aggregate_id
      )
    """
)

# SKIP LOCKED: never the events a release round is taking.
_EXPIRED = text(
    """
    SELECT p.event_id, p.topic, p.aggregate_id, p.version, p.prev_version, p.parked_at, p.record, v.version AS applied
    FROM inbox_parked p
    LEFT JOIN consumer_versions v ON v.consumer = p.consumer AND v.topic = p.topic AND v.aggregate_id = p.aggregate_id
    WHERE p.consumer = :c AND p.parked_at < now() - make_interval(secs => :retention_s)
    ORDER BY p.topic, p.aggregate_id, p.version
    LIMIT :limit
    FOR UPDATE OF p SKIP LOCKED
    """
)
_DROP_PARKED = text("DELETE FROM inbox_parked WHERE consumer = :c AND event_id = ANY(:ids)")


async def prune_versions(
    sessions: async_sessionmaker[AsyncSession], consumer: str, retention: timedelta, *, page: int = 5000
) -> int:
    """One pass over the consumer's version rows; deletes those quiet past `retention` (see the module
    doc). Returns how many."""
    window = retention.total_seconds()
    after, deleted = ("", ""), 0
    while True:
        async with sessions() as session, session.begin():
            rows = (
                await session.execute(
                    _VERSIONS_PAGE,
                    {
                        "c": consumer,
                        "retention_s": window,
                        "topic": after[0],
                        "aggregate": after[1],
                        "limit": page,
                    },
                )
            ).all()
            quiet = [(r.topic, r.aggregate_id) for r in rows if r.quiet]
            if quiet:
                keys = {"c": consumer, "t": [t for t, _ in quiet], "a": [a for _, a in quiet]}
                locked = (await session.execute(_LOCK_VERSIONS, {**keys, "retention_s": window})).all()
                if locked:
                    result = await session.execute(
                        _DELETE_VERSIONS,
                        {
                            "c": consumer,
                            "t": [r.topic for r in locked],
                            "a": [r.aggregate_id for r in locked],
                        },
                    )
                    deleted += cast(CursorResult[Any], result).rowcount or 0
        if len(rows) < page:
            return deleted
        after = (rows[-1].topic, rows[-1].aggregate_id)


class _Pipeline(Protocol):
    inbox: Inbox
    dead_letters: DeadLetters


async def expire_parked(
    sessions: async_sessionmaker[AsyncSession],
    consumer: str,
    pipeline: _Pipeline,
    retention: timedelta,
    *,
    batch: int = 500,
) -> int:
    """Dead-letter the events parked longer than `retention`, a batch per transaction (each acked by the
    broker before it commits: at least once on the dead-letter topic). Returns how many."""
    total = 0
    while True:
        async with sessions() as session, session.begin():
            rows = (
                await session.execute(
                    _EXPIRED, {"c": consumer, "retention_s": retention.total_seconds(), "limit": batch}
                )
            ).all()
            for aggregate in _by_aggregate(rows):
                first = aggregate[0]
                waited_for = min(r.prev_version for r in aggregate)
                reason = (
                    f"gap never closed: waited for v{waited_for} (applied: v{first.applied}) since "
                    f"{first.parked_at.isoformat()}, longer than the park retention ({retention})"
                )
                for row in aggregate:
                    await pipeline.dead_letters.send(record_from(row.record), reason, attempts=0)
                log.error(
                    "consumer %s: %d event(s) of %s %s parked since %s never saw their gap close (waiting for "
                    "v%s, applied v%s) and went to %s. Find the missing version with `outbox why %s`; redrive "
                    "it upstream, or give it up with `outbox skip-gap --consumer %s --topic %s --aggregate %s "
                    "--yes`; then `outbox dlq redrive --group %s`",
                    *(consumer, len(aggregate), first.topic, first.aggregate_id, first.parked_at.isoformat()),
                    *(waited_for, first.applied, pipeline.dead_letters.topic, first.aggregate_id),
                    *(consumer, first.topic, first.aggregate_id, consumer),
                )
            ids = [r.event_id for r in rows]
            if ids:
                await session.execute(_DROP_PARKED, {"c": consumer, "ids": ids})
                await pipeline.inbox.mark(session, ids, Outcome.DEAD)
        total += len(rows)
        if len(rows) < batch:
            return total


def _by_aggregate(rows: Sequence[Any]) -> list[list[Any]]:
    groups: dict[tuple[str, str], list[Any]] = {}
    for row in rows:
        groups.setdefault((row.topic, row.aggregate_id), []).append(row)
    return list(groups.values())
