"""The consumer's guard rails: handlers cannot commit, `Reject` skips retries, the careful path stays small and
bounded in time, a dead-lettered event is remembered, the inbox is pruned, a rebalance during a database
outage does not kill the member. Real PostgreSQL and broker throughout."""

from __future__ import annotations

import asyncio
import socket
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from datetime import timedelta
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine

from outbox import ConsumerSettings, Event, EventContext, IdempotentConsumer, OutboxWriter
from outbox.consumer.handlers import Outcome
from outbox.consumer.runner import Reject
from outbox.kafka import ensure_topics
from outbox.testing import drain_outbox, headers_of, read_topic, record_effect, wire
from testsupport import wait_until

pytestmark = pytest.mark.usefixtures("clean")

FAST = ConsumerSettings(
    max_attempts=3, retry_initial_s=0.01, retry_max_s=0.05, session_timeout_ms=6000, request_timeout_ms=10000
)


async def publish(
    sessions: async_sessionmaker[AsyncSession],
    writer: OutboxWriter,
    engine: AsyncEngine,
    bootstrap: str,
    *events: Event,
) -> None:
    async with sessions() as session, session.begin():
        await writer.add(session, *events)
    await drain_outbox(engine, bootstrap)


async def rows(engine: AsyncEngine, sql: str, **params: object) -> list[Any]:
    async with engine.connect() as conn:
        return [tuple(r) for r in await conn.execute(text(sql), params)]


async def at_least(consumer: IdempotentConsumer, stat: str, n: int) -> bool:
    return int(getattr(consumer.stats, stat)) >= n


def event(topic: str, aggregate: str, **data: object) -> Event:
    return Event(topic=topic, type=f"{topic}.changed", aggregate_id=aggregate, data=dict(data), version=1)


async def test_a_handler_that_commits_is_refused_and_loses_no_other_event(
    engine: AsyncEngine,
    sessions: async_sessionmaker[AsyncSession],
    writer: OutboxWriter,
    topic: str,
    bootstrap: str,
    run_consumer: Callable[[IdempotentConsumer], None],
) -> None:
    # One fetched batch: a handler that commits, one that always fails, one that works. A commit used to
    # make every inbox row of the batch permanent at once: the failing event and the good one after it
    # were then "duplicates" on the careful path, never applied and never dead-lettered.
    commits, fails, fine = (
        event(topic, "a", kind="commits"),
        event(topic, "b", kind="fails"),
        event(topic, "c", kind="fine"),
    )
    await publish(sessions, writer, engine, bootstrap, commits, fails, fine)
    consumer = IdempotentConsumer(f"g-{uuid.uuid4().hex[:8]}", [topic], sessions, FAST)

    @consumer.handler(f"{topic}.*")
    async def apply(ctx: EventContext) -> None:
        await record_effect(ctx)
        if ctx.event.data["kind"] == "commits":
            await ctx.session.commit()
        if ctx.event.data["kind"] == "fails":
            raise ValueError("cannot apply this one")

    run_consumer(consumer)
    await wait_until(lambda: at_least(consumer, "dead_lettered", 2), timeout=30, what="two dead letters")
    await wait_until(lambda: at_least(consumer, "applied", 1), timeout=30, what="the good event applied")
    dead = await read_topic(bootstrap, consumer.dead_letter_topic, expect=2, timeout=10)
    reasons = {headers_of(r)["ce_id"]: headers_of(r)["dlq_reason"] for r in dead}
    assert reasons[str(commits.id)].startswith("rejected by the handler: HandlerCommitted")
    assert reasons[str(fails.id)].startswith("handler failed after 3 attempts: ValueError")
    assert await rows(engine, "SELECT event_id::text FROM effects") == [(str(fine.id),)]
    outcomes = dict(
        await rows(engine, "SELECT event_id::text, outcome FROM inbox WHERE consumer = :c", c=consumer.name)
    )
    assert outcomes == {str(commits.id): "dead", str(fails.id): "dead", str(fine.id): "applied"}


async def test_reject_dead_letters_at_once_without_retries(
    engine: AsyncEngine,
    sessions: async_sessionmaker[AsyncSession],
    writer: OutboxWriter,
    topic: str,
    bootstrap: str,
    run_consumer: Callable[[IdempotentConsumer], None],
) -> None:
    await publish(
        sessions, writer, engine, bootstrap, event(topic, "a", ok=False), event(topic, "b", ok=True)
    )
    consumer = IdempotentConsumer(f"g-{uuid.uuid4().hex[:8]}", [topic], sessions, FAST)

    @consumer.handler(f"{topic}.*")
    async def apply(ctx: EventContext) -> None:
        if not ctx.event.data["ok"]:
            raise Reject("this document was deleted before it could be indexed")
        await record_effect(ctx)

    run_consumer(consumer)
    await wait_until(lambda: at_least(consumer, "dead_lettered", 1), timeout=30, what="dead letter")
    [letter] = await read_topic(bootstrap, consumer.dead_letter_topic, expect=1, timeout=10)
    assert headers_of(letter)["dlq_attempts"] == "1"
    assert "Reject: this document was deleted" in headers_of(letter)["dlq_reason"]
    assert consumer.stats.retries == 0


async def test_a_redelivered_dead_letter_is_a_duplicate_not_a_second_dead_letter(
    engine: AsyncEngine,
    sessions: async_sessionmaker[AsyncSession],
    writer: OutboxWriter,
    topic: str,
    bootstrap: str,
    run_consumer: Callable[[IdempotentConsumer], None],
) -> None:
    unknown = Event(topic=topic, type="somebody.else.changed", aggregate_id="a", data={})
    await publish(sessions, writer, engine, bootstrap, unknown)
    consumer = IdempotentConsumer(f"g-{uuid.uuid4().hex[:8]}", [topic], sessions, FAST)
    consumer.handler(f"{topic}.*")(record_effect)
    run_consumer(consumer)
    await wait_until(lambda: at_least(consumer, "dead_lettered", 1), timeout=30, what="dead letter")
    # The broker delivers the same record again (a relay retry, a replay).
    [record] = await read_topic(bootstrap, wire(topic), expect=1)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await producer.start()
    await producer.send_and_wait(wire(topic), record.value, key=record.key, headers=list(record.headers))
    await producer.stop()
    await wait_until(lambda: at_least(consumer, "duplicates", 1), timeout=30, what="the redelivery")
    assert len(await read_topic(bootstrap, consumer.dead_letter_topic, expect=2, timeout=3)) == 1
    assert consumer.stats.dead_lettered == 1


async def test_the_careful_path_commits_in_small_chunks_and_stops_retrying_at_its_budget(
    engine: AsyncEngine,
    sessions: async_sessionmaker[AsyncSession],
    writer: OutboxWriter,
    topic: str,
    bootstrap: str,
    run_consumer: Callable[[IdempotentConsumer], None],
) -> None:
    async with engine.begin() as conn:
        await conn.execute(text("CREATE TABLE IF NOT EXISTS careful_txids (event_id uuid, txid bigint)"))
        await conn.execute(text("TRUNCATE careful_txids"))
    await ensure_topics(bootstrap, [wire(topic)], partitions=1)
    events = [event(topic, f"a{i}", poison=(i == 60)) for i in range(120)]
    await publish(sessions, writer, engine, bootstrap, *events)
    settings = ConsumerSettings(
        max_attempts=1_000_000,
        retry_initial_s=0.01,
        retry_max_s=0.02,
        careful_chunk=50,
        careful_budget_s=1.0,
        session_timeout_ms=6000,
        request_timeout_ms=10000,
    )
    consumer = IdempotentConsumer(f"g-{uuid.uuid4().hex[:8]}", [topic], sessions, settings)

    @consumer.handler(f"{topic}.*")
    async def apply(ctx: EventContext) -> None:
        if ctx.event.data["poison"]:
            raise ValueError("never")
        await ctx.session.execute(
            text("INSERT INTO careful_txids VALUES (:e, txid_current())"), {"e": ctx.event.id}
        )

    run_consumer(consumer)
    await wait_until(lambda: at_least(consumer, "applied", 119), timeout=60, what="the rest applied")
    [(count, transactions)] = await rows(engine, "SELECT count(*), count(DISTINCT txid) FROM careful_txids")
    assert count == 119
    assert transactions >= 3  # 120 events, at most 50 savepoints per transaction
    [letter] = await read_topic(bootstrap, consumer.dead_letter_topic, expect=1, timeout=10)
    assert int(headers_of(letter)["dlq_attempts"]) < 1000  # the budget ended the retries, not max_attempts


async def test_events_without_a_subject_are_not_stale_against_each_other(
    engine: AsyncEngine, sessions: async_sessionmaker[AsyncSession]
) -> None:
    from outbox.consumer.inbox import InboxStore
    from outbox.envelope import ReceivedEvent

    store = InboxStore(f"g-{uuid.uuid4().hex[:8]}")

    def received(subject: str | None, version: int) -> ReceivedEvent:
        return ReceivedEvent(uuid.uuid4(), "t.x", "test", subject, None, version, {}, {}, "t", 0, 0)

    async with sessions() as session, session.begin():
        assert await store.advance_version(session, received(None, 5)) is Outcome.APPLIED
        # unrelated: not stale
        assert await store.advance_version(session, received(None, 2)) is Outcome.APPLIED
        assert await store.advance_version(session, received("doc", 5)) is Outcome.APPLIED
        assert await store.advance_version(session, received("doc", 2)) is Outcome.STALE


async def test_the_inbox_is_pruned_past_its_retention(
    engine: AsyncEngine, sessions: async_sessionmaker[AsyncSession]
) -> None:
    from outbox.consumer.inbox import InboxStore

    async with engine.begin() as conn:
        await conn.execute(
            text(
                'INSERT INTO inbox (consumer, event_id, event_type, topic, partition, "offset", outcome, processed_at) '
                "SELECT c, gen_random_uuid(), 't', 't', 0, g, 'applied', now() - make_interval(days => d) "
                "FROM (VALUES ('me', 40), ('me', 1), ('other', 40)) v(c, d), generate_series(1, 5) g"
            )
        )
    assert await InboxStore("me").prune(sessions, timedelta(days=30), batch=2) == 5
    left = await rows(engine, "SELECT consumer, count(*) FROM inbox GROUP BY consumer ORDER BY consumer")
    assert left == [("me", 5), ("other", 5)]


@pytest.fixture
async def unanswering_database() -> AsyncIterator[str]:
    """A PostgreSQL address that accepts connections and never answers (a database hung mid-outage)."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(64)
    port = server.getsockname()[1]
    try:
        yield f"postgresql+psycopg://nobody@127.0.0.1:{port}/none"
    finally:
        server.close()


@pytest.mark.slow
@pytest.mark.timeout(180)
async def test_a_rebalance_during_a_database_outage_does_not_kill_the_member(
    engine: AsyncEngine,
    sessions: async_sessionmaker[AsyncSession],
    writer: OutboxWriter,
    topic: str,
    bootstrap: str,
    unanswering_database: str,
    run_consumer: Callable[[IdempotentConsumer], None],
) -> None:
    await ensure_topics(bootstrap, [wire(topic)], partitions=8)
    events = [event(topic, f"agg-{i}") for i in range(40)]
    await publish(sessions, writer, engine, bootstrap, *events)
    group = f"g-{uuid.uuid4().hex[:8]}"
    # A's database never answers: every batch waits out a 4 s connect timeout, fails and is rewound at
    # once (almost no backoff), so the rebalance lands while A holds a failing batch.
    hung = create_async_engine(unanswering_database, connect_args={"connect_timeout": 4}, pool_pre_ping=False)
    a = IdempotentConsumer(group, [topic], async_sessionmaker(hung), replace(FAST, outage_backoff_max_s=0.05))
    a.handler(f"{topic}.*")(record_effect)
    a_task = asyncio.create_task(a.run())
    try:
        await wait_until(lambda: at_least(a, "batch_failures", 1), timeout=60, what="A failing")
        # B joins: the group rebalances while A's batches keep failing; A's rewinds meet revoked partitions.
        b = IdempotentConsumer(group, [topic], sessions, FAST)
        b.handler(f"{topic}.*")(record_effect)
        run_consumer(b)
        await wait_until(lambda: at_least(b, "applied", 1), timeout=60, what="B applying its share")
        failures = a.stats.batch_failures
        await wait_until(lambda: at_least(a, "batch_failures", failures + 2), timeout=60, what="A going on")
        assert not a_task.done(), a_task.exception() if a_task.done() else None
    finally:
        a.stop()
        await asyncio.wait_for(a_task, 30)
        await hung.dispose()
    # With A gone, B holds every partition and applies each event exactly once.
    await wait_until(lambda: at_least(b, "applied", 40), timeout=60, what="every event applied by B")
    [(count, distinct)] = await rows(engine, "SELECT count(*), count(DISTINCT event_id) FROM effects")
    assert count == distinct == 40
