"""Issue: a requeued row (redriven or replayed: `available_at = now()`) is ready *later* than its aggregate's
pending successors. Claims go in ready order, so the successors came first, filled every claim, and were all
held back (an earlier pending row of their aggregate exists): with a batch's worth of them the relay claimed
the same rows for ever, published nothing, and unrelated aggregates' rows were stuck behind them, while
`outbox status` said `ready`. Both relay paths (one batch at a time, claim-ahead), real PostgreSQL and broker."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from libs.outbox.tests.relay_support import run_until_published, scalar, versions_by_key, write
from outbox import OutboxWriter, Relay, RelaySettings
from outbox.ops.admin import Selection, redrive, replay, status
from outbox.relay.store import OutboxStore
from outbox.testing import drain_outbox, read_topic, wire

pytestmark = pytest.mark.usefixtures("clean")

SUCCESSORS = 29  # well over a batch (10): the claim can only ever hold the successors
OTHERS = [f"o{n}-{uuid.uuid4().hex[:6]}" for n in range(4)]


async def kill(engine: AsyncEngine, aggregate: str, version: int) -> None:
    """As the relay leaves a row after its last failed attempt."""
    async with engine.begin() as conn:
        await conn.execute(
            text(
                "UPDATE outbox SET dead_at = now(), attempts = 5, last_error = 'RecordTooLargeError: x' "
                "WHERE aggregate_id = :a AND aggregate_version = :v"
            ),
            {"a": aggregate, "v": version},
        )


async def redriven_backlog(
    sessions: async_sessionmaker[AsyncSession], engine: AsyncEngine, writer: OutboxWriter, topic: str
) -> str:
    """x v1 dead with 29 successors, others' rows ready after them, x v1 redriven, more of others' rows."""
    x = f"x-{uuid.uuid4().hex[:8]}"
    await write(sessions, writer, topic, *[(x, v, False) for v in range(1, SUCCESSORS + 2)])
    await kill(engine, x, 1)
    await write(sessions, writer, topic, *[(other, 1, False) for other in OTHERS])
    assert (await redrive(engine, ids=None, dry_run=False))["redriven"] == 1
    await write(sessions, writer, topic, *[(other, 2, False) for other in OTHERS])
    return x


def relay(engine: AsyncEngine, bootstrap: str, claim_ahead: bool, **settings: object) -> Relay:
    return Relay(
        engine,
        RelaySettings(bootstrap=bootstrap, batch_size=10, claim_ahead=claim_ahead, **settings),  # type: ignore[arg-type]
    )


@pytest.mark.parametrize("claim_ahead", [False, True], ids=["serial", "claim_ahead"])
async def test_a_redrive_under_block_on_dead_publishes_everything_in_order_whatever_the_successors(
    sessions: async_sessionmaker[AsyncSession],
    engine: AsyncEngine,
    writer: OutboxWriter,
    topic: str,
    bootstrap: str,
    claim_ahead: bool,
) -> None:
    # Before: 0 published, the relay claiming x v2..v11 (all held back behind x v1) again and again.
    x = await redriven_backlog(sessions, engine, writer, topic)
    total = SUCCESSORS + 1 + 2 * len(OTHERS)
    await run_until_published(relay(engine, bootstrap, claim_ahead, block_on_dead=True), engine, total, 15)
    found = versions_by_key(await read_topic(bootstrap, wire(topic), expect=total, timeout=10))
    assert found[x.encode()] == list(range(1, SUCCESSORS + 2))
    for other in OTHERS:
        assert found[other.encode()] == [1, 2]


@pytest.mark.parametrize("claim_ahead", [False, True], ids=["serial", "claim_ahead"])
async def test_a_replay_behind_a_batch_of_pending_successors_publishes_everything_in_order(
    sessions: async_sessionmaker[AsyncSession],
    engine: AsyncEngine,
    writer: OutboxWriter,
    topic: str,
    bootstrap: str,
    claim_ahead: bool,
) -> None:
    # x v1..v5 published and replayed while x v6..v35, written before the replay, are still pending.
    x = f"x-{uuid.uuid4().hex[:8]}"
    await write(sessions, writer, topic, *[(x, v, False) for v in range(1, 6)])
    await drain_outbox(engine, bootstrap)
    await write(sessions, writer, topic, *[(x, v, False) for v in range(6, 6 + SUCCESSORS + 1)])
    await write(sessions, writer, topic, *[(other, 1, False) for other in OTHERS])
    assert (await replay(engine, Selection(topic=topic, aggregate_id=x), dry_run=False))["replayed"] == 5
    await write(sessions, writer, topic, *[(other, 2, False) for other in OTHERS])
    rows = 5 + SUCCESSORS + 1 + 2 * len(OTHERS)  # all pending now, x v1..v5 again
    await run_until_published(relay(engine, bootstrap, claim_ahead), engine, rows, 15)
    found = versions_by_key(await read_topic(bootstrap, wire(topic), expect=rows + 5, timeout=10))
    assert found[x.encode()] == [1, 2, 3, 4, 5, *range(1, 6 + SUCCESSORS + 1)]
    for other in OTHERS:
        assert found[other.encode()] == [1, 2]


async def test_status_counts_the_rows_held_behind_a_pending_row_of_their_aggregate(
    sessions: async_sessionmaker[AsyncSession], engine: AsyncEngine, writer: OutboxWriter, topic: str
) -> None:
    # Before: `ready=37, behind_dead=0` for a backlog where 29 rows could only wait for x v1.
    await redriven_backlog(sessions, engine, writer, topic)
    report = await status(engine)
    assert report["held_behind_pending"] == SUCCESSORS
    assert report["ready"] == 1 + 2 * len(OTHERS)
    assert (report["behind_dead"], report["behind_backoff"], report["pending"]) == (0, 0, 30 + 8)
    assert await scalar(engine, "SELECT count(*) FROM outbox WHERE published_at IS NULL") == 30 + 8


async def test_held_rows_behind_a_later_ready_row_move_without_waiting_for_rows_another_relay_holds(
    sessions: async_sessionmaker[AsyncSession], engine: AsyncEngine, writer: OutboxWriter, topic: str
) -> None:
    x = await redriven_backlog(sessions, engine, writer, topic)
    async with engine.connect() as first, engine.connect() as second:
        await first.begin()
        by_first = await OutboxStore.claim(first, 10, block_on_dead=True)  # x v2..v11, locked
        await second.begin()
        by_second = await OutboxStore.claim(second, 10, block_on_dead=True)  # x v12..v21
        moved = await asyncio.wait_for(OutboxStore.move_behind_later_rows(second, by_second), 5)
        await second.commit()
        await first.rollback()
    for rows, versions in ((by_first, range(2, 12)), (by_second, range(12, 22))):
        assert [(r.aggregate_id, r.aggregate_version) for r in rows] == [(x, v) for v in versions]
        # The first is held (x v1 pending) behind a row ready after it; the rest follow it without a gap.
        assert [r.wait for r in rows] == [2] + [0] * 9
    assert moved == SUCCESSORS - 10  # v12..v30; v2..v11 are the first claim's to move
    assert (await status(engine))["held_behind_pending"] == 10
