"""Issue 22, finding 7: per-aggregate state must not grow without bound.

Before: `outbox_heads` and `consumer_versions` were never pruned, and `inbox_parked` only when its gap
closed. Now the relay's cleanup prunes the heads of quiet aggregates (nothing pending or dead, no write for
`OUTBOX_HEADS_RETENTION_HOURS`), never one a writer holds; the consumer's prune loop drops version rows not
advanced for `OUTBOX_CONSUMER_VERSION_RETENTION_HOURS` (never below the inbox retention, never with parked
events) and dead-letters events parked past `OUTBOX_CONSUMER_PARK_RETENTION_HOURS`; `outbox skip-gap` gives
up a missing version knowingly. Real PostgreSQL and broker throughout."""

from __future__ import annotations

import asyncio
import json
import logging
import subprocess
import sys
import uuid
from collections.abc import Callable
from datetime import timedelta

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from libs.outbox.tests.test_ordering_contract import dead_row, ev, rows, write
from outbox import ConsumerSettings, EventContext, IdempotentConsumer, OutboxWriter, Relay, RelaySettings
from outbox.ops.admin import RedriveOrder, redrive
from outbox.testing import drain_outbox, headers_of, read_topic, record_effect, wire
from testsupport import wait_until

pytestmark = pytest.mark.usefixtures("clean")


async def execute(engine: AsyncEngine, sql: str, **params: object) -> None:
    async with engine.begin() as conn:
        await conn.execute(text(sql), params)


async def test_quiet_heads_are_pruned_but_never_one_with_a_pending_or_dead_row_or_a_writer(
    engine: AsyncEngine,
    sessions: async_sessionmaker[AsyncSession],
    writer: OutboxWriter,
    topic: str,
    bootstrap: str,
) -> None:
    await write(sessions, writer, ev(topic, "quiet", 1), ev(topic, "quiet", 2), ev(topic, "dead", 1))
    await write(sessions, writer, ev(topic, "held", 1))
    await dead_row(engine, "dead", 1)
    await drain_outbox(engine, bootstrap)
    await write(sessions, writer, ev(topic, "pending", 1))
    await execute(engine, "UPDATE outbox_heads SET written_at = now() - interval '40 days'")
    # A writer of `held` is inside its transaction: it holds the head's lock (and has just refreshed it).
    async with sessions() as session, session.begin():
        await writer.add(session, ev(topic, "held", 2))
        relay = Relay(engine, RelaySettings(bootstrap=bootstrap, heads_retention=timedelta(days=30)))
        await asyncio.wait_for(relay.cleanup_published(), timeout=10)  # skips the locked head, never waits
    heads = await rows(engine, "SELECT aggregate_id, version FROM outbox_heads ORDER BY aggregate_id")
    assert heads == [("dead", 1), ("held", 2), ("pending", 1)]  # `quiet` went
    # A pruned head: the next write names no predecessor (never a wrong one); a kept one names it.
    await write(sessions, writer, ev(topic, "quiet", 3), ev(topic, "held", 3))
    assert await rows(
        engine,
        "SELECT aggregate_id, prev_version FROM outbox WHERE aggregate_version = 3 ORDER BY aggregate_id",
    ) == [("held", 2), ("quiet", None)]
    # Nothing older than the retention: nothing pruned.
    assert await relay.cleanup_published() == 0
    assert len(await rows(engine, "SELECT 1 FROM outbox_heads")) == 4


async def test_version_rows_past_their_retention_go_unless_events_are_parked_behind_them(
    engine: AsyncEngine, sessions: async_sessionmaker[AsyncSession]
) -> None:
    await execute(
        engine,
        "INSERT INTO consumer_versions (consumer, topic, aggregate_id, version, advanced_at) VALUES "
        "('c', 't', 'old', 3, now() - interval '40 days'), ('c', 't', 'recent', 3, now() - interval '10 days'), "
        "('c', 't', 'parked', 3, now() - interval '40 days'), ('other', 't', 'old', 3, now() - interval '40 days')",
    )
    await execute(
        engine,
        "INSERT INTO inbox_parked (consumer, event_id, topic, aggregate_id, version, prev_version, record) "
        "VALUES ('c', gen_random_uuid(), 't', 'parked', 5, 4, '{}')",
    )
    consumer = IdempotentConsumer(
        "c",
        ["t"],
        sessions,
        # A version retention below the inbox's is raised to it: 30 days, so `recent` (10 days) stays.
        ConsumerSettings(version_retention=timedelta(days=1), inbox_retention=timedelta(days=30)),
    )
    pruned = await consumer.prune()
    assert pruned["versions"] == 1
    assert await rows(engine, "SELECT consumer, aggregate_id FROM consumer_versions ORDER BY 1, 2") == [
        ("c", "parked"),
        ("c", "recent"),
        ("other", "old"),
    ]


async def gap_aware_consumer(
    sessions: async_sessionmaker[AsyncSession], topic: str, **settings: object
) -> IdempotentConsumer:
    consumer = IdempotentConsumer(
        f"g-{uuid.uuid4().hex[:8]}",
        [topic],
        sessions,
        ConsumerSettings(
            session_timeout_ms=6000, request_timeout_ms=10000, park_sweep_interval_s=0.2, **settings
        ),  # type: ignore[arg-type]
    )

    @consumer.handler(f"{topic}.*", gap_aware=True)
    async def apply(ctx: EventContext) -> None:
        await record_effect(ctx)

    return consumer


async def parked_behind_a_dead_v2(
    engine: AsyncEngine,
    sessions: async_sessionmaker[AsyncSession],
    writer: OutboxWriter,
    topic: str,
    bootstrap: str,
) -> int:
    await write(sessions, writer, *(ev(topic, "x", v) for v in (1, 2, 3, 4)))
    dead_id = await dead_row(engine, "x", 2)
    await drain_outbox(engine, bootstrap)
    return dead_id


async def test_events_parked_past_the_gap_retention_are_dead_lettered_with_an_error(
    engine: AsyncEngine,
    sessions: async_sessionmaker[AsyncSession],
    writer: OutboxWriter,
    topic: str,
    bootstrap: str,
    run_consumer: Callable[[IdempotentConsumer], None],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="outbox.consumer")
    await parked_behind_a_dead_v2(engine, sessions, writer, topic, bootstrap)
    consumer = await gap_aware_consumer(
        sessions, topic, park_retention=timedelta(seconds=1), inbox_prune_interval_s=0.3
    )
    run_consumer(consumer)

    async def expired() -> bool:
        return consumer.stats.gap_expired >= 2

    await wait_until(expired, timeout=60, what="v3 and v4 dead-lettered past the gap retention")
    group = consumer.name
    assert await rows(engine, "SELECT count(*) FROM inbox_parked WHERE consumer = :c", c=group) == [(0,)]
    assert await rows(
        engine, "SELECT aggregate_version, outcome FROM inbox WHERE consumer = :c ORDER BY 1", c=group
    ) == [(1, "applied"), (3, "dead"), (4, "dead")]
    letters = await read_topic(bootstrap, wire(f"{group}.dlq"), expect=2)
    reasons = sorted((headers_of(r)["ce_aggregateversion"], headers_of(r)["dlq_reason"]) for r in letters)
    assert [v for v, _ in reasons] == ["3", "4"] and all("waited for v2" in r for _, r in reasons), reasons
    errors = [
        r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR and "gap" in r.getMessage()
    ]
    assert errors and "outbox skip-gap" in errors[0], errors


async def outbox_cli(*args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "outbox.ops.cli", *args, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_skip_gap_needs_yes_then_moves_the_version_past_the_gap_and_the_parked_events_apply(
    engine: AsyncEngine,
    database_url: str,
    sessions: async_sessionmaker[AsyncSession],
    writer: OutboxWriter,
    topic: str,
    bootstrap: str,
    run_consumer: Callable[[IdempotentConsumer], None],
) -> None:
    await parked_behind_a_dead_v2(engine, sessions, writer, topic, bootstrap)
    consumer = await gap_aware_consumer(sessions, topic)
    run_consumer(consumer)

    async def parked() -> bool:
        return consumer.stats.parked >= 2

    await wait_until(parked, timeout=60, what="v3 and v4 parked behind the missing v2")
    group = consumer.name
    args = [
        "skip-gap",
        "--database-url",
        database_url,
        "--consumer",
        group,
        "--topic",
        topic,
        "--aggregate",
        "x",
        "--json",
    ]
    code, out, err = await outbox_cli(*args)
    assert code == 1 and "--yes" in err
    assert json.loads(out)["would_skip"] == {"after": 1, "through": 2, "due": [3, 4], "still_parked": []}
    assert await rows(engine, "SELECT version FROM consumer_versions WHERE consumer = :c", c=group) == [(1,)]

    code, out, err = await outbox_cli(*args, "--yes")
    assert code == 0, err
    done = json.loads(out)
    assert done["skipped"] == {"after": 1, "through": 2, "due": [3, 4], "still_parked": []}

    async def applied() -> bool:
        return len(await rows(engine, "SELECT 1 FROM effects WHERE consumer = :c", c=group)) >= 3

    await wait_until(applied, timeout=60, what="the sweep applies v3 and v4")
    assert await rows(engine, "SELECT version FROM effects WHERE consumer = :c ORDER BY seq", c=group) == [
        (1,),
        (3,),
        (4,),
    ]
    # The skipped version, redriven later, is stale: the consumer gave it up knowingly.
    await redrive(engine, ids=None, dry_run=False, order=RedriveOrder.FORCE)
    await drain_outbox(engine, bootstrap)

    async def stale() -> bool:
        return consumer.stats.stale >= 1

    await wait_until(stale, timeout=60, what="the late v2 dropped as stale")
    code, _, err = await outbox_cli(*args, "--yes")
    assert code == 1 and "nothing parked" in err
