"""Releasing parked events against real PostgreSQL: long chains, bounded savepoints per transaction, and the
sweep's lock order. The pipeline runs in-process (no broker): the records are built here, the inbox,
versions and parked events are the real tables."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from aiokafka import ConsumerRecord
from sqlalchemy import event, text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from libs.outbox.tests.test_pipeline_unit import MemoryDeadLetters, record
from outbox.consumer.apply import ApplyPipeline, RetryPolicy
from outbox.consumer.apply_types import Parsed
from outbox.consumer.handlers import EventContext, Route
from outbox.consumer.inbox import InboxStore
from outbox.envelope import decode_record

pytestmark = pytest.mark.usefixtures("clean")

SAVEPOINTS = 8  # the per-transaction savepoint budget these tests give the pipeline (careful_chunk)


def gap_aware(applied: list[tuple[str, int]]) -> ApplyPipeline:
    async def handler(ctx: EventContext) -> None:
        applied.append((ctx.event.subject or "", ctx.event.version or 0))

    route = Route("t.*", handler, version_guard=True, gap_aware=True)

    def parse(r: ConsumerRecord[bytes, bytes]) -> Parsed:
        event = decode_record(
            topic=r.topic, partition=r.partition, offset=r.offset, headers=r.headers, value=r.value
        )
        return Parsed(r, event, route, None)

    pipeline = ApplyPipeline(
        "chain",
        InboxStore("chain"),
        MemoryDeadLetters(),
        RetryPolicy(1, 0.0, 0.0),
        None,
        parse,
        savepoints=SAVEPOINTS,
    )
    pipeline.tracks_gaps = True
    return pipeline


@contextmanager
def savepoints_per_transaction(engine: AsyncEngine) -> Iterator[list[int]]:
    """Counts the savepoints of each transaction on `engine` while the block runs."""
    counts: list[int] = []

    def begin(conn: Any) -> None:
        counts.append(0)

    def savepoint(conn: Any, name: str) -> None:
        counts[-1] += 1

    event.listen(engine.sync_engine, "begin", begin)
    event.listen(engine.sync_engine, "savepoint", savepoint)
    try:
        yield counts
    finally:
        event.remove(engine.sync_engine, "begin", begin)
        event.remove(engine.sync_engine, "savepoint", savepoint)


async def fetch(
    sessions: async_sessionmaker[AsyncSession], pipeline: ApplyPipeline, aggregate: str, versions: range
) -> None:
    """Apply `versions` of `aggregate` (each naming the one before as its predecessor) in fetches of 500."""
    for start in range(versions.start, versions.stop, 500):
        batch = range(start, min(start + 500, versions.stop))
        async with sessions() as session, session.begin():
            await pipeline.apply(
                session, [pipeline.parse(record(v, aggregate, v, v - 1 if v > 1 else None)) for v in batch]
            )


async def scalar(engine: AsyncEngine, sql: str) -> Any:
    async with engine.connect() as conn:
        return (await conn.execute(text(sql))).scalar_one()


async def test_a_chain_of_10000_parked_events_is_released_in_order_in_bounded_transactions(
    engine: AsyncEngine, sessions: async_sessionmaker[AsyncSession]
) -> None:
    # Review finding 2: each released event released the next from inside its own apply (apply -> _release
    # -> apply ...), one Python frame and one nested savepoint per parked event: 600 of them raised
    # RecursionError, which is no handler failure, so the partition retried the batch forever.
    applied: list[tuple[str, int]] = []
    pipeline = gap_aware(applied)
    await fetch(sessions, pipeline, "a", range(1, 2))
    await fetch(sessions, pipeline, "a", range(3, 10_003))  # v2 is missing: all 10,000 park
    assert await scalar(engine, "SELECT count(*) FROM inbox_parked") == 10_000
    applied.clear()
    started = time.monotonic()
    with savepoints_per_transaction(engine) as savepoints:
        async with sessions() as session, session.begin():
            counts = await pipeline.apply(session, [pipeline.parse(record(2, "a", 2, 1))])
        counts.merge(await pipeline.release_pending(sessions))
    elapsed = time.monotonic() - started
    print(f"10,000 parked events released in {elapsed:.2f}s, savepoints per transaction {savepoints}")
    assert applied == [("a", v) for v in range(2, 10_003)]
    assert (counts.applied, counts.released, counts.parked, counts.stale) == (10_001, 10_000, 0, 0)
    assert max(savepoints) <= SAVEPOINTS
    assert await scalar(engine, "SELECT count(*) FROM inbox_parked") == 0
    assert await scalar(engine, "SELECT count(*) FROM inbox WHERE outcome <> 'applied'") == 0
    assert await scalar(engine, "SELECT version FROM consumer_versions") == 10_002


async def test_the_sweep_releases_every_due_chain_by_aggregate_in_bounded_transactions(
    engine: AsyncEngine, sessions: async_sessionmaker[AsyncSession]
) -> None:
    # The sweep took at most 500 events, applied each in its own savepoint in one transaction (past
    # PostgreSQL's 64 cached subtransactions) and locked the aggregates in version order, not in the
    # (topic, aggregate) order the main loop's guard locks them in.
    applied: list[tuple[str, int]] = []
    pipeline = gap_aware(applied)
    await fetch(sessions, pipeline, "b", range(1, 2))
    await fetch(sessions, pipeline, "b", range(3, 1_003))
    await fetch(sessions, pipeline, "a", range(500, 501))
    await fetch(sessions, pipeline, "a", range(502, 1_502))
    # Another member closes both gaps: this member's pipeline does not see it, its sweep does.
    other = gap_aware([])
    await fetch(sessions, other, "b", range(2, 3))
    await fetch(sessions, other, "a", range(501, 502))
    applied.clear()
    with savepoints_per_transaction(engine) as savepoints:
        counts = await pipeline.release_parked(sessions)
    assert applied == [("a", v) for v in range(502, 1_502)] + [("b", v) for v in range(3, 1_003)]
    assert (counts.applied, counts.released) == (2_000, 2_000)
    assert max(savepoints) <= SAVEPOINTS
    assert await scalar(engine, "SELECT count(*) FROM inbox_parked") == 0
    assert not pipeline.parked_keys
