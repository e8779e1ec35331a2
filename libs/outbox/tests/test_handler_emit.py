"""`ctx.emit` against real PostgreSQL: a handler's follow-up events land in the consumer's own outbox in the
transaction of its effect and its inbox row, and a failing handler leaves neither. The consumer's pipeline
runs in-process (no broker: records are built by the harness, dead letters kept in a list); the inbox,
effects and outbox are the real tables. (The indexer's tests run the same path through Kafka.)"""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from pydantic import BaseModel
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from outbox import ConsumerSettings, Event, EventContext, IdempotentConsumer, OutboxWriter, Reject
from outbox.consumer.apply import ApplyPipeline
from outbox.consumer.apply_types import ConsumerStats
from outbox.consumer.inbox import InboxStore
from outbox.testing import HandlerHarness, MemoryDeadLetters, record_effect

pytestmark = pytest.mark.usefixtures("clean")


class Order(BaseModel):
    order_id: str
    fail: str = ""  # "once": fails its first attempt; "always": rejected


def emitter(sessions: async_sessionmaker[AsyncSession]) -> tuple[IdempotentConsumer, list[int]]:
    settings = ConsumerSettings(bootstrap="unused:9092", topic_prefix="", max_attempts=3, retry_initial_s=0.0)
    consumer = IdempotentConsumer(
        "emitter", ["orders"], sessions, settings, writer=OutboxWriter(source="emitter")
    )
    attempts: list[int] = []

    @consumer.handler("orders.placed", payload=Order)
    async def placed(ctx: EventContext[Order]) -> None:
        attempts.append(ctx.attempt)
        await record_effect(ctx)  # the effect: a row in `effects`
        ctx.emit(Event(topic="invoices", type="invoices.due", aggregate_id=ctx.payload.order_id, data={}))
        if ctx.payload.fail == "always" or (ctx.payload.fail == "once" and ctx.attempt == 1):
            raise Reject("refused") if ctx.payload.fail == "always" else ConnectionError("blinked")

    return consumer, attempts


async def deliver(
    consumer: IdempotentConsumer, sessions: async_sessionmaker[AsyncSession], *orders: Order | Event
) -> tuple[ConsumerStats, MemoryDeadLetters]:
    harness = HandlerHarness(consumer)  # only to make the records the writer and relay would
    records = [
        harness.record(
            o
            if isinstance(o, Event)
            else Event(topic="orders", type="orders.placed", aggregate_id=o.order_id, data=o.model_dump())
        )
        for o in orders
    ]
    letters = MemoryDeadLetters("emitter.dlq")
    pipeline: ApplyPipeline = consumer.pipeline(InboxStore(consumer.name), letters, consumer.writer)
    stats = ConsumerStats()
    await pipeline.process(sessions, [consumer.parse(r) for r in records], budget_s=10, into=stats)
    return stats, letters


async def rows(engine: AsyncEngine, sql: str) -> list[Any]:
    async with engine.connect() as conn:
        return list((await conn.execute(text(sql))).all())


async def test_an_emitted_event_commits_in_the_effects_transaction(
    engine: AsyncEngine, sessions: async_sessionmaker[AsyncSession]
) -> None:
    consumer, attempts = emitter(sessions)
    order = uuid.uuid4().hex
    stats, letters = await deliver(consumer, sessions, Order(order_id=order))
    assert (stats.applied, attempts, letters.letters) == (1, [1], [])
    [(effect_tx,)] = await rows(engine, "SELECT xmin::text FROM effects")
    [(source, aggregate, invoice_tx)] = await rows(
        engine, "SELECT source, aggregate_id, xmin::text FROM outbox WHERE event_type = 'invoices.due'"
    )
    [(inbox_tx,)] = await rows(engine, "SELECT xmin::text FROM inbox WHERE consumer = 'emitter'")
    assert (source, aggregate) == ("emitter", order)
    assert effect_tx == invoice_tx == inbox_tx  # one transaction: effect, follow-up event, inbox row


async def test_a_failing_handler_rolls_back_its_effect_and_its_events(
    engine: AsyncEngine, sessions: async_sessionmaker[AsyncSession]
) -> None:
    consumer, attempts = emitter(sessions)
    flaky, refused = uuid.uuid4().hex, uuid.uuid4().hex
    stats, letters = await deliver(
        consumer, sessions, Order(order_id=flaky, fail="once"), Order(order_id=refused, fail="always")
    )
    # Fast path: flaky fails and the whole transaction rolls back; careful path: flaky fails once more then
    # goes through, refused is rejected at its one attempt.
    assert (stats.applied, stats.dead_lettered) == (1, 1) and attempts == [1, 1, 2, 1]
    assert [letter.reason for letter in letters.letters] == ["rejected by the handler: Reject: refused"]
    invoices = await rows(engine, "SELECT aggregate_id FROM outbox WHERE event_type = 'invoices.due'")
    assert invoices == [(flaky,)]  # exactly once: the failed attempts' events rolled back with them
    assert await rows(engine, "SELECT count(*) FROM effects") == [(1,)]
    outcomes = await rows(
        engine, "SELECT aggregate_id, outcome FROM inbox WHERE consumer = 'emitter' ORDER BY 2"
    )
    assert outcomes == [(flaky, "applied"), (refused, "dead")]


async def test_a_payload_that_does_not_fit_is_dead_lettered_and_its_batch_commits_without_it(
    engine: AsyncEngine, sessions: async_sessionmaker[AsyncSession]
) -> None:
    consumer, attempts = emitter(sessions)
    good = uuid.uuid4().hex
    unfit = Event(topic="orders", type="orders.placed", aggregate_id="unfit", data={"fail": 3})
    stats, letters = await deliver(consumer, sessions, unfit, Order(order_id=good))
    assert (stats.applied, stats.dead_lettered, stats.retries, attempts) == (1, 1, 0, [1])  # the fast path
    [letter] = letters.letters
    assert letter.reason == (
        "malformed: orders.placed payload does not fit Order: order_id: Field required; "
        "fail: Input should be a valid string"
    )
    outcomes = await rows(
        engine, "SELECT aggregate_id, outcome FROM inbox WHERE consumer = 'emitter' ORDER BY 2"
    )
    assert outcomes == [(good, "applied"), ("unfit", "dead")]
    assert await rows(engine, "SELECT aggregate_id FROM outbox WHERE event_type = 'invoices.due'") == [
        (good,)
    ]
