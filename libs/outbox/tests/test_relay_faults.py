"""The relay under crashes and faults, with real relay processes, the real broker and PostgreSQL."""

from __future__ import annotations

import asyncio
import re
import sys
import uuid
from collections import defaultdict
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from outbox import (
    ConsumerSettings,
    Event,
    IdempotentConsumer,
    OutboxWriter,
    Relay,
    RelaySettings,
)
from outbox.testing import headers_of, read_topic, record_effect, wire
from testsupport import ServiceProcess, wait_until
from testsupport.broker import BrokerBehindProxy

pytestmark = pytest.mark.usefixtures("clean")


def relay_process(name: str, database_url: str, bootstrap: str, log_dir: Path) -> ServiceProcess:
    argv = [sys.executable, "-m", "outbox.ops.cli", "relay", "--database-url", database_url, "--name", name]
    return ServiceProcess(name, argv, env={"KAFKA_BOOTSTRAP": bootstrap}, log_dir=log_dir)


async def scalar(engine: AsyncEngine, sql: str, **params: object) -> object:
    async with engine.connect() as conn:
        return (await conn.execute(text(sql), params)).scalar_one()


async def test_relay_killed_after_publish_before_marking_republishes_and_consumer_applies_once(
    engine: AsyncEngine,
    database_url: str,
    sessions: async_sessionmaker[AsyncSession],
    writer: OutboxWriter,
    topic: str,
    bootstrap: str,
    log_dir: Path,
) -> None:
    # Stall the relay between the broker's ack and its UPDATE ... published_at: the crash window.
    async with engine.begin() as conn:
        await conn.execute(
            text(
                "CREATE OR REPLACE FUNCTION outbox_stall() RETURNS trigger AS $$ "
                "BEGIN PERFORM pg_sleep(120); RETURN NULL; END $$ LANGUAGE plpgsql"
            )
        )
        await conn.execute(
            text(
                "CREATE TRIGGER outbox_stall BEFORE UPDATE ON outbox FOR EACH STATEMENT EXECUTE FUNCTION outbox_stall()"
            )
        )
    event = Event(
        topic=topic, type=f"{topic}.enabled", aggregate_id="doc-1", data={"enabled": True}, version=1
    )
    try:
        async with sessions() as session, session.begin():
            await writer.add(session, event)
        first = relay_process("relay-1", database_url, bootstrap, log_dir).start()
        assert (
            len(await read_topic(bootstrap, wire(topic), expect=1, timeout=30)) == 1
        )  # published and acked...
        assert (
            await scalar(engine, "SELECT count(*) FROM outbox WHERE published_at IS NULL") == 1
        )  # ...not marked
        first.kill()
        # The crashed relay's database session goes away with it (PostgreSQL notices the dead client).
        await scalar(
            engine,
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid() "
            "AND query LIKE '%UPDATE outbox SET published_at%'",
        )
    finally:
        async with engine.begin() as conn:
            await conn.execute(text("DROP TRIGGER IF EXISTS outbox_stall ON outbox"))

    second = relay_process("relay-2", database_url, bootstrap, log_dir).start()
    try:
        records = await read_topic(bootstrap, wire(topic), expect=2, timeout=30)
        await wait_until(
            lambda: _is_zero(engine, "SELECT count(*) FROM outbox WHERE published_at IS NULL"),
            what="row marked",
        )
    finally:
        assert second.terminate() == 0, second.tail()
    assert [headers_of(r)["ce_id"] for r in records] == [str(event.id)] * 2  # at least once: twice here

    consumer = IdempotentConsumer(
        f"g-{uuid.uuid4().hex[:8]}",
        [topic],
        sessions,
        ConsumerSettings(session_timeout_ms=6000, request_timeout_ms=10000),
    )

    consumer.handler(f"{topic}.*")(record_effect)

    task = asyncio.create_task(consumer.run())
    try:
        await wait_until(lambda: _stat(consumer, 2), timeout=30, what="both copies consumed")
    finally:
        consumer.stop()
        await asyncio.wait_for(task, 30)
    assert await scalar(engine, "SELECT count(*) FROM effects WHERE consumer = :c", c=consumer.name) == 1
    assert (consumer.stats.applied, consumer.stats.duplicates) == (1, 1)


async def _stat(consumer: IdempotentConsumer, n: int) -> bool:
    return consumer.stats.applied + consumer.stats.duplicates >= n


async def _is_zero(engine: AsyncEngine, sql: str) -> bool:
    return await scalar(engine, sql) == 0


async def test_two_relays_keep_every_aggregate_in_version_order(
    engine: AsyncEngine,
    database_url: str,
    sessions: async_sessionmaker[AsyncSession],
    writer: OutboxWriter,
    topic: str,
    bootstrap: str,
    log_dir: Path,
) -> None:
    aggregates, versions = 100, 50
    relays = [relay_process(f"relay-{i}", database_url, bootstrap, log_dir).start() for i in range(2)]

    async def write_aggregates(ids: range) -> None:
        # Each aggregate's versions are committed in order (as a row lock would force); aggregates interleave.
        for version in range(1, versions + 1):
            for agg in ids:
                async with sessions() as session, session.begin():
                    await writer.add(
                        session,
                        Event(
                            topic=topic,
                            type=f"{topic}.changed",
                            aggregate_id=f"agg-{agg}",
                            data={},
                            version=version,
                        ),
                    )

    try:
        await asyncio.gather(*(write_aggregates(range(i, i + 10)) for i in range(0, aggregates, 10)))
        records = await read_topic(bootstrap, wire(topic), expect=aggregates * versions, timeout=120)
    finally:
        codes = [r.terminate() for r in relays]
    assert codes == [0, 0], [r.tail() for r in relays]
    seen: dict[str, list[int]] = defaultdict(list)
    for r in sorted(records, key=lambda r: (r.partition, r.offset)):
        seen[r.key.decode()].append(int(headers_of(r)["ce_aggregateversion"]))
    assert len(records) == aggregates * versions
    out_of_order = {k: v for k, v in seen.items() if v != list(range(1, versions + 1))}
    assert not out_of_order, (
        f"{len(out_of_order)} aggregates out of order, e.g. {next(iter(out_of_order.items()))}"
    )
    published = [int(m.group(1)) for r in relays for m in [re.search(r"published=(\d+)", r.tail(5))] if m]
    assert len(published) == 2 and sum(published) == aggregates * versions
    assert all(p > 0 for p in published), f"one relay did all the work: {published}"


async def test_unpublishable_row_is_dead_lettered_and_nothing_else_waits(
    engine: AsyncEngine,
    sessions: async_sessionmaker[AsyncSession],
    writer: OutboxWriter,
    topic: str,
    bootstrap: str,
) -> None:
    huge = Event(
        topic=topic, type=f"{topic}.changed", aggregate_id="big", data={"blob": "x" * 300_000}, version=1
    )
    after_huge = Event(topic=topic, type=f"{topic}.changed", aggregate_id="big", data={}, version=2)
    others = [
        Event(topic=topic, type=f"{topic}.changed", aggregate_id=f"ok-{i}", data={}, version=1)
        for i in range(5)
    ]
    async with sessions() as session, session.begin():
        await writer.add(session, huge, after_huge, *others)
    relay = Relay(
        engine,
        RelaySettings(
            bootstrap=bootstrap,
            max_message_bytes=100_000,
            max_attempts=3,
            row_backoff_initial_s=0.05,
            idle_poll_max_s=0.05,
        ),
    )
    task = asyncio.create_task(relay.run())
    try:
        records = await read_topic(bootstrap, wire(topic), expect=6, timeout=30)
    finally:
        relay.stop()
        await asyncio.wait_for(task, 30)
    # The other aggregates went straight through; the huge row's successor went once it was dead-lettered.
    assert sorted(r.key.decode() for r in records) == sorted(["big", *(f"ok-{i}" for i in range(5))])
    assert [headers_of(r)["ce_id"] for r in records if r.key == b"big"] == [str(after_huge.id)]
    async with engine.connect() as conn:
        dead = (
            await conn.execute(
                text("SELECT event_id, attempts, last_error FROM outbox WHERE dead_at IS NOT NULL")
            )
        ).all()
    assert [(d.event_id, d.attempts) for d in dead] == [(huge.id, 3)]
    assert "MessageSizeTooLarge" in dead[0].last_error
    assert relay.stats.dead_lettered == 1


@pytest.mark.slow
async def test_broker_unreachable_relay_retries_then_drains_without_loss(
    sessions: async_sessionmaker[AsyncSession],
    engine: AsyncEngine,
    writer: OutboxWriter,
    topic: str,
) -> None:
    # A dedicated broker whose advertised address is a TCP proxy: every client connection goes through it.
    broker = BrokerBehindProxy().start()
    proxy, bootstrap = broker.proxy, broker.bootstrap
    relay = Relay(engine, RelaySettings(bootstrap=bootstrap, idle_poll_max_s=0.05, outage_backoff_max_s=1.0))
    task = asyncio.create_task(relay.run())
    written = 0

    async def write_some(n: int) -> None:
        nonlocal written
        for _ in range(n):
            async with sessions() as session, session.begin():
                await writer.add(
                    session,
                    Event(
                        topic=topic,
                        type=f"{topic}.changed",
                        aggregate_id=f"a{written % 7}",
                        data={"n": written},
                    ),
                )
            written += 1

    try:
        await write_some(50)
        await wait_until(lambda: _published_at_least(relay, 50), timeout=30, what="first 50 published")
        proxy.cut()
        await write_some(100)  # committed while the broker is unreachable
        await wait_until(lambda: _outages_at_least(relay, 2), timeout=60, what="relay retrying")
        assert relay.stats.published < written
        pending = await scalar(engine, "SELECT count(*) FROM outbox WHERE published_at IS NULL")
        assert pending == 100
        proxy.restore()
        await wait_until(
            lambda: _is_zero(engine, "SELECT count(*) FROM outbox WHERE published_at IS NULL"),
            timeout=90,
            what="backlog drained",
        )
        records = await read_topic(bootstrap, wire(topic), expect=written, timeout=30)
    finally:
        relay.stop()
        await asyncio.wait_for(task, 60)
        broker.stop()
    assert {orjson_n(r.value) for r in records} == set(range(written)), "an event was lost"
    assert relay.stats.outages >= 2


def orjson_n(value: bytes) -> int:
    import orjson

    return int(orjson.loads(value)["n"])


async def _published_at_least(relay: Relay, n: int) -> bool:
    return relay.stats.published >= n


async def _outages_at_least(relay: Relay, n: int) -> bool:
    return relay.stats.outages >= n
