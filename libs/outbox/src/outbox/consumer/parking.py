"""Parked events (gap-aware handlers): kept when they arrive before the version they follow, applied once
that version is.

Release is a loop, never a recursion: rounds of up to `round_size` due events (each aggregate's whole due
chain, so a chain of 10,000 takes a few rounds), each round one batch through the apply pipeline inside one
savepoint, at most `savepoints` rounds per transaction (past 64 subtransactions PostgreSQL's subtransaction
cache overflows, the reason the careful path is chunked too); what is left goes on in the consumer's next
transaction. A round whose handler fails rolls back alone: its events stay parked, and the sweep applies
them one by one through the careful path (retries, then the dead-letter topic).
"""

from __future__ import annotations

import base64
import logging
import time
from collections.abc import Sequence
from typing import Any, Protocol

from aiokafka import ConsumerRecord
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from outbox.consumer.apply_types import ConsumerStats, HandlerFailed, Parsed
from outbox.consumer.handlers import Outcome, guard_session
from outbox.consumer.ports import Inbox

log = logging.getLogger("outbox.consumer")

Aggregate = tuple[str, str]  # (topic, aggregate id)


class Applier(Protocol):
    """What the release loops need of the apply pipeline."""

    consumer: str
    inbox: Inbox

    def parse(self, record: ConsumerRecord[bytes, bytes]) -> Parsed: ...

    async def apply_batch(
        self, session: AsyncSession, items: Sequence[Parsed], attempt: int
    ) -> tuple[ConsumerStats, set[Aggregate]]: ...

    async def apply_isolated(
        self, session: AsyncSession, item: Parsed, deadline: float, *, release: bool = True
    ) -> ConsumerStats: ...


class ParkedRelease:
    def __init__(self, pipeline: Applier, *, round_size: int, savepoints: int) -> None:
        self.pipeline = pipeline
        self.round_size = max(1, round_size)
        self.savepoints = max(1, savepoints)
        # Aggregates with parked events (kept fresh by the sweep): applying one of their events looks for
        # parked successors.
        self.keys: set[Aggregate] = set()
        # Aggregates whose due successors were left for `release_pending`: applied on the careful path
        # (its savepoints are spent on the events themselves), or past a transaction's savepoint budget.
        self.pending: set[Aggregate] = set()

    async def park(self, session: AsyncSession, items: Sequence[Parsed]) -> None:
        for item in items:
            assert item.event is not None and item.event.subject is not None
            log.warning(
                "consumer %s: parked %s v%s of %s: waits for v%s",
                self.pipeline.consumer,
                item.event.type,
                item.event.version,
                item.event.subject,
                item.event.prev_version,
            )
            self.keys.add((item.event.topic, item.event.subject))
        events = [(i.event, stored_record(i.record)) for i in items if i.event is not None]
        await self.pipeline.inbox.park(session, events)
        await self.pipeline.inbox.mark(session, [e.id for e, _ in events], Outcome.PARKED)

    async def release(
        self, session: AsyncSession, aggregates: set[Aggregate], *, attempt: int = 1
    ) -> ConsumerStats:
        """Apply the parked events of `aggregates` whose gap this transaction closed, in version order,
        within the savepoint budget; the rest are left pending. A failing handler is not blamed on the
        event that closed the gap: the events of that round stay parked for the sweep."""
        counts, more, _ = await self._rounds(session, sorted(aggregates), attempt)
        if more:
            self.pending |= aggregates
        return counts

    async def release_pending(self, sessions: async_sessionmaker[AsyncSession]) -> ConsumerStats:
        """Release what `release` left pending, one bounded transaction after another."""
        counts = ConsumerStats()
        while self.pending:
            aggregates, self.pending = self.pending, set()
            async with sessions() as session, session.begin():
                counts.merge(await self.release(guard_session(session), aggregates))
        return counts

    async def sweep(
        self, sessions: async_sessionmaker[AsyncSession], *, budget_s: float = 60.0
    ) -> ConsumerStats:
        """Every parked event whose gap closed (by another member, or behind a failure): in rounds like
        `release`; after a handler failure, one event per savepoint through the careful path, `savepoints`
        per transaction, until `budget_s` is spent. Refreshes which aggregates have parked events."""
        counts = ConsumerStats()
        deadline = time.monotonic() + budget_s
        more = True
        failed = False
        while more and not failed and time.monotonic() < deadline:
            async with sessions() as session, session.begin():
                released, more, failed = await self._rounds(guard_session(session), None, 1)
            counts.merge(released)
        careful = failed  # a round's handler failed: one event per savepoint from here on
        while careful and time.monotonic() < deadline:
            async with sessions() as session, session.begin():
                guard_session(session)
                records = await self.pipeline.inbox.unpark(session, None, limit=self.savepoints)
                for stored in records:
                    item = self.pipeline.parse(record_from(stored))
                    released = await self.pipeline.apply_isolated(session, item, deadline, release=False)
                    released.released += 1
                    counts.merge(released)
            careful = bool(records)
        async with sessions() as session, session.begin():
            self.keys = {(r.topic, r.aggregate_id) for r in await self.pipeline.inbox.parked(session)}
        return counts

    async def _rounds(
        self, session: AsyncSession, aggregates: list[Aggregate] | None, attempt: int
    ) -> tuple[ConsumerStats, bool, bool]:
        """Up to `savepoints` rounds; returns the counts, whether more may be due, whether a handler
        failed."""
        counts = ConsumerStats()
        for _ in range(self.savepoints):
            try:
                async with session.begin_nested():
                    records = await self.pipeline.inbox.unpark(session, aggregates, limit=self.round_size)
                    if not records:
                        return counts, False, False
                    items = [self.pipeline.parse(record_from(r)) for r in records]
                    released, _ = await self.pipeline.apply_batch(session, items, attempt)
            except HandlerFailed as failed:
                log.warning(
                    "consumer %s: a released event's handler failed (%s); it stays parked for the sweep",
                    self.pipeline.consumer,
                    failed,
                )
                return counts, False, True
            released.released += len(records)
            counts.merge(released)
            if len(records) < self.round_size:  # every due chain was taken whole
                return counts, False, False
        return counts, True, False


def stored_record(record: ConsumerRecord[bytes, bytes]) -> dict[str, Any]:
    """A Kafka record as JSON, to park it in the database."""
    return {
        "topic": record.topic,
        "partition": record.partition,
        "offset": record.offset,
        "timestamp": record.timestamp,
        "key": base64.b64encode(record.key).decode() if record.key is not None else None,
        "value": base64.b64encode(record.value).decode() if record.value is not None else None,
        "headers": [[k, base64.b64encode(v).decode()] for k, v in record.headers or ()],
    }


def record_from(stored: dict[str, Any]) -> ConsumerRecord[bytes, bytes]:
    key = base64.b64decode(stored["key"]) if stored["key"] is not None else None
    value = base64.b64decode(stored["value"]) if stored["value"] is not None else None
    return ConsumerRecord(
        topic=stored["topic"],
        partition=stored["partition"],
        offset=stored["offset"],
        timestamp=stored["timestamp"],
        timestamp_type=0,
        key=key,
        value=value,
        checksum=None,
        serialized_key_size=len(key or b""),
        serialized_value_size=len(value or b""),
        headers=tuple((k, base64.b64decode(v)) for k, v in stored["headers"]),
    )
