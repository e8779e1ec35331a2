"""Claim-ahead (`relay.pipeline`): the next batch is claimed while the previous one is on its way, with the
previous batch's rows `in_flight` (not gaps). Each test makes the pipeline engage (tiny batches, a backlog)
and checks it did (`stats.claimed_ahead`), so none passes by running one batch at a time.

Record rejections are injected at the publisher's seam, as in test_relay_partial_failures."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest
from aiokafka.errors import MessageSizeTooLargeError
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession, async_sessionmaker

from libs.outbox.tests.relay_support import (
    FaultyRelay,
    keys_in_two_partitions,
    run_until_published,
    running,
    scalar,
    stopped,
    versions_by_key,
    wait_for,
    write,
)
from outbox import OutboxWriter, Relay, RelaySettings
from outbox.relay.batch import Settlement
from outbox.testing import read_topic, wire

pytestmark = pytest.mark.usefixtures("clean")


async def test_a_batch_claimed_ahead_holds_back_the_successors_of_a_row_the_previous_batch_failed(
    sessions: async_sessionmaker[AsyncSession],
    engine: AsyncEngine,
    writer: OutboxWriter,
    topic: str,
    bootstrap: str,
) -> None:
    # Batches of 2 in id order: [x1, y1] is sent while [x2, y2] is claimed with x1 and y1 in flight, so x2
    # is no gap for the claim. x1 is rejected once: x2 must wait (the relay holds x back), y2 goes on.
    # Without the hold, x2 reaches the topic before x1's retry.
    x, y = keys_in_two_partitions()
    events = [(agg, v, agg == x and v == 1) for v in range(1, 6) for agg in (x, y)]
    await write(sessions, writer, topic, *events)
    relay = FaultyRelay(
        engine,
        RelaySettings(bootstrap=bootstrap, batch_size=2, row_backoff_initial_s=0.05, max_attempts=5),
        fault=lambda: MessageSizeTooLargeError("rejected by the broker"),
        remaining=1,
    )
    await run_until_published(relay, engine, 10)
    assert relay.faulty.faulted == 1
    assert relay.stats.claimed_ahead > 0
    found = versions_by_key(await read_topic(bootstrap, wire(topic), expect=10, timeout=10))
    assert found[x.encode()] == [1, 2, 3, 4, 5]
    assert found[y.encode()] == [1, 2, 3, 4, 5]


class CommitFailsOnce(Relay):
    """The database fails while the first batch is being marked (after it was sent): as if the connection
    dropped before the commit. The batch claimed ahead must not commit its marks either."""

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.failed = False
        self.marked_after_failure: list[int] = []

    async def apply(self, conn: AsyncConnection, settlement: Settlement) -> None:
        if not self.failed and settlement.published:
            self.failed = True
            await asyncio.sleep(0.2)  # the next batch is sent meanwhile
            raise OSError("connection to the database lost")
        await super().apply(conn, settlement)


async def test_a_batch_whose_predecessor_failed_to_commit_rolls_back_so_marks_never_skip_ahead(
    sessions: async_sessionmaker[AsyncSession],
    engine: AsyncEngine,
    writer: OutboxWriter,
    topic: str,
    bootstrap: str,
) -> None:
    x = f"x-{uuid.uuid4().hex[:8]}"
    await write(sessions, writer, topic, *[(x, v, False) for v in range(1, 7)])
    relay = CommitFailsOnce(engine, RelaySettings(bootstrap=bootstrap, batch_size=2, outage_backoff_max_s=2))
    task = await running(relay)
    try:
        await wait_for(lambda: asyncio.sleep(0, relay.stats.outages >= 1))  # backing off: nothing moves
        published = await scalar(
            engine,
            "SELECT coalesce(array_agg(aggregate_version ORDER BY id), '{}') FROM outbox "
            "WHERE published_at IS NOT NULL",
        )
        # The first batch's marks were lost; the batch sent behind it must not have committed its own.
        assert published == list(range(1, len(published) + 1)), published
        await wait_for(
            lambda: scalar(engine, "SELECT count(*) = 6 FROM outbox WHERE published_at IS NOT NULL")
        )
    finally:
        await stopped(relay, task)
    assert relay.failed and relay.stats.claimed_ahead > 0
    records = await read_topic(bootstrap, wire(topic), expect=6, timeout=10)
    versions = versions_by_key(records)[x.encode()]
    # At least once: the failed batch (and the one claimed behind it) went out again. Every version's
    # first copy is in order, and nothing is missing.
    first_copies = list(dict.fromkeys(versions))
    assert first_copies == [1, 2, 3, 4, 5, 6]
    assert len(versions) > 6


async def test_a_stopped_pipeline_leaves_no_transaction_open_and_a_new_relay_finishes_the_backlog(
    sessions: async_sessionmaker[AsyncSession],
    engine: AsyncEngine,
    writer: OutboxWriter,
    topic: str,
    bootstrap: str,
) -> None:
    x, y = keys_in_two_partitions()
    await write(sessions, writer, topic, *[(agg, v, False) for v in range(1, 301) for agg in (x, y)])
    first = Relay(engine, RelaySettings(bootstrap=bootstrap, batch_size=2))  # ~300 batches
    task = await running(first)
    await wait_for(lambda: asyncio.sleep(0, first.stats.claimed_ahead >= 2))
    await stopped(first, task)
    assert await scalar(engine, "SELECT count(*) FROM outbox WHERE published_at IS NULL") > 0
    open_transactions = await scalar(
        engine,
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
        "AND state LIKE 'idle in transaction%' AND pid <> pg_backend_pid()",
    )
    assert open_transactions == 0
    second = Relay(engine, RelaySettings(bootstrap=bootstrap, batch_size=7))
    task = await running(second)
    try:
        await wait_for(lambda: scalar(engine, "SELECT count(*) = 0 FROM outbox WHERE published_at IS NULL"))
    finally:
        await stopped(second, task)
    found = versions_by_key(await read_topic(bootstrap, wire(topic), expect=600, timeout=10))
    for key in (x, y):
        assert list(dict.fromkeys(found[key.encode()])) == list(range(1, 301))


async def test_rows_in_flight_are_not_gaps_for_the_claim_but_other_pending_rows_are(
    sessions: async_sessionmaker[AsyncSession], engine: AsyncEngine, writer: OutboxWriter, topic: str
) -> None:
    from outbox.relay.store import OutboxStore

    x = f"x-{uuid.uuid4().hex[:8]}"
    await write(sessions, writer, topic, *[(x, v, False) for v in range(1, 5)])
    async with engine.connect() as holder, engine.connect() as other:
        await holder.begin()
        held = await OutboxStore.claim(holder, 1)  # x v1, locked by "the batch in flight"
        await other.begin()
        as_another_relay = await OutboxStore.claim(other, 2)
        await other.rollback()
        await other.begin()
        as_this_relay = await OutboxStore.claim(other, 2, in_flight=[held[0].id])
        await other.rollback()
        await holder.rollback()
    assert [r.aggregate_version for r in as_another_relay] == [2, 3]
    assert [r.gap for r in as_another_relay] == [True, False]  # x v1 pending, not ours: v2 waits
    assert not any(r.behind_later for r in as_another_relay)  # ready after x v1: nothing to move
    assert [r.gap for r in as_this_relay] == [False, False]  # x v1 in our flight: the relay decides


async def test_two_relays_claiming_ahead_on_one_backlog_both_make_progress_and_keep_order(
    engine: AsyncEngine, topic: str, bootstrap: str
) -> None:
    """Each relay's claims fill with rows the other's locked rows hold back. Claiming ahead on such a claim
    locked yet more rows the other needed: the pair drained ~10 rows/s. A mostly-held claim now ends the
    run (send what may go, commit, back off)."""
    aggregates, versions = 40, 25
    async with engine.begin() as conn:
        await conn.execute(
            text(
                "INSERT INTO outbox (event_id, topic, event_type, source, aggregate_id, aggregate_version, payload) "
                "SELECT gen_random_uuid(), :topic, 't.changed', 'test', 'agg-' || a, v, '{}'::jsonb "
                "FROM generate_series(1, :versions) v, generate_series(1, :aggregates) a ORDER BY v, a"
            ),
            {"topic": topic, "versions": versions, "aggregates": aggregates},
        )
    relays = [Relay(engine, RelaySettings(bootstrap=bootstrap, batch_size=20), name=f"r{n}") for n in (1, 2)]
    tasks = [await running(r) for r in relays]
    try:
        await wait_for(
            lambda: scalar(engine, "SELECT count(*) = 0 FROM outbox WHERE published_at IS NULL"), timeout=60
        )
    finally:
        for relay, task in zip(relays, tasks, strict=True):
            await stopped(relay, task)
    assert sum(r.stats.claimed_ahead for r in relays) > 0
    found = versions_by_key(
        await read_topic(bootstrap, wire(topic), expect=aggregates * versions, timeout=10)
    )
    assert len(found) == aggregates
    for key, seen in found.items():
        assert list(dict.fromkeys(seen)) == list(range(1, versions + 1)), key
