"""The idempotent consumer against the real broker and PostgreSQL: duplicates, stale versions, poison
messages, handler failures, and a SIGKILL in the middle of a batch."""

from __future__ import annotations

import asyncio
import dataclasses
import sys
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import orjson
import pytest
from aiokafka import AIOKafkaProducer
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from outbox import (
    BatchContext,
    ConsumerSettings,
    Event,
    EventContext,
    IdempotentConsumer,
    OutboxWriter,
    Relay,
    RelaySettings,
)
from outbox.envelope import encode_headers
from outbox.testing import drain_outbox, headers_of, read_topic, record_effect, wire
from testsupport import ServiceProcess, wait_until

pytestmark = pytest.mark.usefixtures("clean")

APPS = Path(__file__).parent / "apps"
FAST = ConsumerSettings(
    max_attempts=3, retry_initial_s=0.01, retry_max_s=0.05, session_timeout_ms=6000, request_timeout_ms=10000
)


async def effects(engine: AsyncEngine, consumer: str | None = None) -> list[tuple[str, str, int | None]]:
    sql = "SELECT event_id::text, aggregate_id, version FROM effects"
    params = {}
    if consumer:
        sql += " WHERE consumer = :c"
        params["c"] = consumer
    async with engine.connect() as conn:
        return [tuple(r) for r in await conn.execute(text(sql + " ORDER BY seq"), params)]  # type: ignore[misc]


async def write(sessions: async_sessionmaker[AsyncSession], writer: OutboxWriter, *events: Event) -> None:
    async with sessions() as session, session.begin():
        await writer.add(session, *events)


@pytest.fixture
async def run_consumer(
    sessions: async_sessionmaker[AsyncSession],
) -> AsyncIterator[Callable[[IdempotentConsumer], None]]:
    tasks: list[tuple[IdempotentConsumer, asyncio.Task[None]]] = []

    def start(consumer: IdempotentConsumer) -> None:
        tasks.append((consumer, asyncio.create_task(consumer.run())))

    yield start
    for consumer, _task in tasks:
        consumer.stop()
    for _, task in tasks:
        await asyncio.wait_for(task, 30)


def recording_consumer(
    sessions: async_sessionmaker[AsyncSession], topic: str, **kw: object
) -> IdempotentConsumer:
    consumer = IdempotentConsumer(f"g-{uuid.uuid4().hex[:8]}", [topic], sessions, FAST, **kw)  # type: ignore[arg-type]

    @consumer.handler(f"{topic}.*")
    async def apply(ctx: EventContext) -> None:
        if ctx.event.data.get("poison"):
            raise ValueError("this handler cannot apply a poisoned event")
        await record_effect(ctx)

    return consumer


async def test_redelivered_events_are_applied_once(
    engine: AsyncEngine,
    sessions: async_sessionmaker[AsyncSession],
    writer: OutboxWriter,
    topic: str,
    bootstrap: str,
    run_consumer: Callable[[IdempotentConsumer], None],
) -> None:
    events = [
        Event(topic=topic, type=f"{topic}.changed", aggregate_id=f"a{i % 3}", data={"i": i}, version=i)
        for i in range(1, 10)
    ]
    await write(sessions, writer, *events)
    await drain_outbox(engine, bootstrap)
    # The broker delivers every record a second time (a relay retry, a replay): copy them verbatim.
    records = await read_topic(bootstrap, wire(topic), expect=9)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await producer.start()
    for r in records:
        await producer.send_and_wait(wire(topic), r.value, key=r.key, headers=list(r.headers))
    await producer.stop()

    consumer = recording_consumer(sessions, topic)
    run_consumer(consumer)
    await wait_until(lambda: _at_least(consumer, "duplicates", 9), timeout=30, what="duplicates seen")
    applied = await effects(engine, consumer.name)
    assert sorted(e[0] for e in applied) == sorted(str(e.id) for e in events)
    assert consumer.stats.applied == 9


async def _at_least(consumer: IdempotentConsumer, stat: str, n: int) -> bool:
    return int(getattr(consumer.stats, stat)) >= n


async def test_version_guard_drops_stale_events(
    engine: AsyncEngine,
    sessions: async_sessionmaker[AsyncSession],
    writer: OutboxWriter,
    topic: str,
    bootstrap: str,
    run_consumer: Callable[[IdempotentConsumer], None],
) -> None:
    # Written out of version order on purpose: 1, 3, 2 (as a replay or a reordering broker would deliver).
    for v in (1, 3, 2):
        await write(
            sessions,
            writer,
            Event(topic=topic, type=f"{topic}.changed", aggregate_id="doc", data={}, version=v),
        )
    await drain_outbox(engine, bootstrap)
    consumer = recording_consumer(sessions, topic)
    run_consumer(consumer)
    await wait_until(lambda: _at_least(consumer, "stale", 1), timeout=30, what="stale event")
    assert [e[2] for e in await effects(engine, consumer.name)] == [1, 3]
    async with engine.connect() as conn:
        outcomes = dict(
            (
                await conn.execute(
                    text("SELECT aggregate_version, outcome FROM inbox WHERE consumer = :c"),
                    {"c": consumer.name},
                )
            ).all()
        )
    assert outcomes == {1: "applied", 3: "applied", 2: "stale"}


async def test_poison_messages_are_dead_lettered_and_the_partition_moves_on(
    engine: AsyncEngine,
    sessions: async_sessionmaker[AsyncSession],
    writer: OutboxWriter,
    topic: str,
    bootstrap: str,
    run_consumer: Callable[[IdempotentConsumer], None],
) -> None:
    key = b"same-key"  # everything on one partition: a stuck poison message would block the good ones
    good_before = Event(topic=topic, type=f"{topic}.changed", aggregate_id="same-key", data={}, version=1)
    failing = Event(
        topic=topic, type=f"{topic}.changed", aggregate_id="same-key", data={"poison": True}, version=2
    )
    good_after = Event(topic=topic, type=f"{topic}.changed", aggregate_id="same-key", data={}, version=3)
    await write(sessions, writer, good_before, failing)
    await drain_outbox(engine, bootstrap)
    valid_headers = encode_headers(
        event_id=uuid.uuid4(),
        event_type=f"{topic}.changed",
        source="test",
        subject="same-key",
        time=good_before.time,
        version=None,
        trace_context={},
    )
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await producer.start()
    await producer.send_and_wait(wire(topic), b"{not json", key=key, headers=valid_headers)
    await producer.send_and_wait(wire(topic), orjson.dumps({"x": 1}), key=key, headers=[("ce_type", b"x")])
    unknown = encode_headers(
        event_id=uuid.uuid4(),
        event_type="somebody.else.event",
        source="test",
        subject="same-key",
        time=good_before.time,
        version=None,
        trace_context={},
    )
    await producer.send_and_wait(wire(topic), b"{}", key=key, headers=unknown)
    await producer.stop()
    await write(sessions, writer, good_after)
    await drain_outbox(engine, bootstrap)

    consumer = recording_consumer(sessions, topic)
    run_consumer(consumer)
    await wait_until(lambda: _at_least(consumer, "applied", 2), timeout=30, what="good events applied")
    assert [e[2] for e in await effects(engine, consumer.name)] == [1, 3]

    dead = await read_topic(bootstrap, consumer.dead_letter_topic, expect=4, timeout=15)
    reasons = sorted(headers_of(r)["dlq_reason"].split(":")[0] for r in dead)
    assert len(dead) == 4, reasons
    assert reasons == [
        "handler failed after 3 attempts",
        "malformed",
        "malformed",
        "no handler for event type 'somebody.else.event'",
    ]
    by_reason = {headers_of(r)["dlq_reason"]: r for r in dead}
    handler_failure = next(r for reason, r in by_reason.items() if reason.startswith("handler failed"))
    assert (
        "ValueError: this handler cannot apply a poisoned event" in headers_of(handler_failure)["dlq_reason"]
    )
    assert headers_of(handler_failure)["ce_id"] == str(failing.id)
    assert headers_of(handler_failure)["dlq_original_topic"] == wire(topic)
    assert consumer.stats.dead_lettered == 4


async def test_consumer_killed_mid_batch_applies_every_event_exactly_once(
    engine: AsyncEngine,
    database_url: str,
    sessions: async_sessionmaker[AsyncSession],
    writer: OutboxWriter,
    topic: str,
    bootstrap: str,
    log_dir: Path,
) -> None:
    total = 600
    for chunk in range(0, total, 100):
        await write(
            sessions,
            writer,
            *(
                Event(
                    topic=topic, type=f"{topic}.changed", aggregate_id=f"a{i % 20}", data={"i": i}, version=i
                )
                for i in range(chunk, chunk + 100)
            ),
        )
    await drain_outbox(engine, bootstrap)
    group = f"crash-{uuid.uuid4().hex[:8]}"
    argv = [sys.executable, str(APPS / "effect_consumer.py"), database_url, group, topic, "0.002"]
    kills = 0
    for round_ in range(3):
        proc = ServiceProcess(f"consumer-{round_}", argv, env={}, log_dir=log_dir).start()
        already = len(await effects(engine, group))
        # Let it apply part of the backlog, then kill it without warning, mid-batch.
        await wait_until(
            lambda already=already: _grown(engine, group, already + 60), timeout=60, what="progress"
        )
        proc.kill()
        kills += 1
    final = ServiceProcess("consumer-final", argv, env={}, log_dir=log_dir).start()
    try:
        await wait_until(lambda: _grown(engine, group, total), timeout=90, what="all events applied")
        async with engine.connect() as conn:
            inbox = (
                await conn.execute(text("SELECT count(*) FROM inbox WHERE consumer = :c"), {"c": group})
            ).scalar_one()
    finally:
        final.terminate()
    applied = await effects(engine, group)
    assert kills == 3
    assert len(applied) == total, "an event was applied twice or lost"
    assert len({e[0] for e in applied}) == total
    assert inbox == total


async def _grown(engine: AsyncEngine, consumer: str, n: int) -> bool:
    async with engine.connect() as conn:
        count = (
            await conn.execute(text("SELECT count(*) FROM effects WHERE consumer = :c"), {"c": consumer})
        ).scalar_one()
    return int(count) >= n


async def test_batch_handler_applies_runs_of_events_in_one_call_and_isolates_a_poison_one(
    engine: AsyncEngine,
    sessions: async_sessionmaker[AsyncSession],
    writer: OutboxWriter,
    topic: str,
    bootstrap: str,
    run_consumer: Callable[[IdempotentConsumer], None],
) -> None:
    events = [
        Event(
            topic=topic,
            type=f"{topic}.changed",
            aggregate_id=f"a{i % 4}",
            data={"poison": i == 13},
            version=i,
        )
        for i in range(1, 31)
    ]
    await write(sessions, writer, *events)
    stale = Event(
        topic=topic, type=f"{topic}.changed", aggregate_id="a1", data={}, version=1
    )  # older than a1's 29
    await write(sessions, writer, stale)
    await drain_outbox(engine, bootstrap)
    consumer = IdempotentConsumer(f"g-{uuid.uuid4().hex[:8]}", [topic], sessions, FAST)
    calls: list[int] = []

    @consumer.batch_handler(f"{topic}.*")
    async def apply_all(ctx: BatchContext) -> None:
        calls.append(len(ctx.events))
        if any(e.data.get("poison") for e in ctx.events):
            raise ValueError("poison in this batch")
        await ctx.session.execute(
            text(
                "INSERT INTO effects (consumer, event_id, aggregate_id, version) "
                "SELECT :c, unnest(CAST(:ids AS uuid[])), unnest(CAST(:aggs AS text[])), unnest(CAST(:vs AS bigint[]))"
            ),
            {
                "c": ctx.consumer,
                "ids": [e.id for e in ctx.events],
                "aggs": [e.subject for e in ctx.events],
                "vs": [e.version for e in ctx.events],
            },
        )

    run_consumer(consumer)
    await wait_until(lambda: _at_least(consumer, "dead_lettered", 1), timeout=30, what="poison dead-lettered")
    await wait_until(lambda: _at_least(consumer, "applied", 29), timeout=30, what="the rest applied")
    applied = await effects(engine, consumer.name)
    assert sorted(v for _, _, v in applied) == [
        v for v in range(1, 31) if v != 13
    ]  # once each; not the stale copy
    assert len({e for e, _, _ in applied}) == len(applied)
    assert max(calls) > 1, calls  # runs of events came in single calls on the fast path
    assert calls.count(1) >= 1  # after the failure, the careful path called it one event at a time
    dead = await read_topic(bootstrap, consumer.dead_letter_topic, expect=1, timeout=15)
    assert headers_of(dead[0])["ce_id"] == str(events[12].id)


async def test_batch_linger_applies_a_trickle_of_events_in_one_transaction(
    engine: AsyncEngine,
    sessions: async_sessionmaker[AsyncSession],
    writer: OutboxWriter,
    topic: str,
    bootstrap: str,
    run_consumer: Callable[[IdempotentConsumer], None],
) -> None:
    """Six events committed 80 ms apart and published as they come: without a linger each fetch would be
    its own transaction; with `batch_linger_ms` the first fetch waits and takes the other five with it."""
    relay = Relay(engine, RelaySettings(bootstrap=bootstrap, idle_poll_max_s=0.05))
    relaying = asyncio.create_task(relay.run())
    consumer = IdempotentConsumer(
        f"g-{uuid.uuid4().hex[:8]}", [topic], sessions, dataclasses.replace(FAST, batch_linger_ms=2500)
    )
    calls: list[list[int | None]] = []

    @consumer.batch_handler(f"{topic}.*")
    async def apply_all(ctx: BatchContext) -> None:
        calls.append([e.version for e in ctx.events])

    def event(version: int) -> Event:
        return Event(topic=topic, type=f"{topic}.changed", aggregate_id="a", data={}, version=version)

    try:
        await write(sessions, writer, event(1))
        run_consumer(consumer)
        await wait_until(lambda: _at_least(consumer, "applied", 1), timeout=60, what="the first event")
        for version in range(2, 8):
            await write(sessions, writer, event(version))
            await asyncio.sleep(0.08)
        await wait_until(lambda: _at_least(consumer, "applied", 7), timeout=30, what="the trickle applied")
    finally:
        relay.stop()
        await asyncio.wait_for(relaying, 30)
    assert calls == [[1], [2, 3, 4, 5, 6, 7]]


async def test_records_postgresql_cannot_store_are_dead_lettered_one_by_one(
    engine: AsyncEngine,
    sessions: async_sessionmaker[AsyncSession],
    writer: OutboxWriter,
    topic: str,
    bootstrap: str,
    run_consumer: Callable[[IdempotentConsumer], None],
) -> None:
    """Security review, finding 5. Before: a NUL byte in ce_type/ce_subject or an out-of-range
    ce_aggregateversion failed in the inbox insert, outside any handler, so the batch was rewound and
    retried forever and every partition the consumer held stalled. Now each is malformed: dead-lettered at
    once while the records around it, on the same partition, are applied."""
    key = b"same-key"
    await write(
        sessions,
        writer,
        Event(topic=topic, type=f"{topic}.changed", aggregate_id="same-key", data={}, version=1),
    )
    await drain_outbox(engine, bootstrap)

    def headers(**overrides: object) -> list[tuple[str, bytes]]:
        fields: dict[str, object] = {
            "event_id": uuid.uuid4(),
            "event_type": f"{topic}.changed",
            "source": "test",
            "subject": "same-key",
            "time": "2026-11-24T00:00:00+00:00",
            "version": 2,
            "trace_context": {},
        }
        return encode_headers(**{**fields, **overrides})  # type: ignore[arg-type]

    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await producer.start()
    await producer.send_and_wait(
        wire(topic), b"{}", key=key, headers=headers(event_type=f"{topic}.chan\x00ged")
    )
    await producer.send_and_wait(wire(topic), b"{}", key=key, headers=headers(subject="same\x00key"))
    await producer.send_and_wait(wire(topic), b"{}", key=key, headers=headers(version=2**63))
    await producer.send_and_wait(wire(topic), b'{"name": "a\\u0000b"}', key=key, headers=headers())
    await producer.stop()
    await write(
        sessions,
        writer,
        Event(topic=topic, type=f"{topic}.changed", aggregate_id="same-key", data={}, version=3),
    )
    await drain_outbox(engine, bootstrap)

    consumer = recording_consumer(sessions, topic)
    run_consumer(consumer)
    await wait_until(lambda: _at_least(consumer, "applied", 2), timeout=30, what="the good events applied")
    assert [e[2] for e in await effects(engine, consumer.name)] == [1, 3]
    dead = await read_topic(bootstrap, consumer.dead_letter_topic, expect=4, timeout=15)
    reasons = sorted(headers_of(r)["dlq_reason"] for r in dead)
    assert len(dead) == 4 and all(r.startswith("malformed") for r in reasons), reasons
    assert any("NUL" in r and "ce_type" in r for r in reasons) and any("out of range" in r for r in reasons)
