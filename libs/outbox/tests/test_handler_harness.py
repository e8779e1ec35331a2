"""`outbox.testing.HandlerHarness` and the handler contract (`payload=`, `ctx.emit`), in memory: no broker,
no PostgreSQL. The pipeline is the consumer's real one; these tests fail if the harness stops matching it
(the same decisions run against PostgreSQL and Kafka in test_consumer*.py and test_handler_emit.py)."""

from __future__ import annotations

import uuid

import pytest
from pydantic import BaseModel
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from outbox import (
    BatchContext,
    ConsumerSettings,
    Event,
    EventContext,
    IdempotentConsumer,
    OutboxWriter,
    Outcome,
    Reject,
)
from outbox.testing import HandlerHarness


class Moved(BaseModel):
    item: str
    to: int


def consumer(*, writer: bool = True, max_attempts: int = 3) -> IdempotentConsumer:
    """A consumer that is never started: the harness needs only its handlers and settings."""
    settings = ConsumerSettings(bootstrap="unused:9092", topic_prefix="", max_attempts=max_attempts)
    return IdempotentConsumer(
        "unit",
        ["t"],
        async_sessionmaker[AsyncSession](),
        settings,
        writer=OutboxWriter(source="unit", max_event_bytes=10_000) if writer else None,
    )


def moved(aggregate: str, version: int, **data: object) -> Event:
    return Event(topic="t", type="t.moved", aggregate_id=aggregate, version=version, data=data)


async def test_a_payload_is_validated_and_a_record_that_does_not_fit_is_dead_lettered_alone() -> None:
    c = consumer()
    seen: list[tuple[str, int]] = []

    @c.handler("t.moved", payload=Moved)
    async def apply(ctx: EventContext[Moved]) -> None:
        seen.append((ctx.payload.item, ctx.payload.to))

    good, bad, late = (
        moved("a", 1, item="x", to=3),
        moved("b", 1, item="y", to="far"),
        moved("c", 1, item="z", to=4),
    )
    stats = await (harness := HandlerHarness(c)).deliver(good, bad, late)
    assert seen == [("x", 3), ("z", 4)]  # the rest of the batch went on, on the fast path
    assert (stats.applied, stats.dead_lettered, stats.retries) == (2, 1, 0)
    [letter] = harness.dead_letters
    assert letter.event is not None and letter.event.id == bad.id and letter.attempts == 0
    assert letter.reason.startswith("malformed: t.moved payload does not fit Moved: to: ")
    assert "far" not in letter.reason  # the values stay out of the dead letter's reason
    assert harness.outcome(bad) is Outcome.DEAD
    again = await harness.deliver(harness.record(bad, prev_version=None))
    assert (again.duplicates, len(harness.dead_letters)) == (1, 1)  # a redelivery is no second dead letter


async def test_without_a_payload_model_the_payload_is_the_data() -> None:
    c = consumer()
    payloads: list[dict[str, object]] = []

    @c.handler("t.*")
    async def apply(ctx: EventContext) -> None:
        payloads.append(ctx.payload)
        assert ctx.payload is ctx.event.data

    await HandlerHarness(c).deliver(moved("a", 1, anything="goes"))
    assert payloads == [{"anything": "goes", "version": 1}]  # the writer's rule: the version joins the data


async def test_a_batch_handler_gets_one_payload_per_event() -> None:
    c = consumer()
    calls: list[list[tuple[str, str]]] = []

    @c.batch_handler("t.moved", payload=Moved)
    async def apply(ctx: BatchContext[Moved]) -> None:
        calls.append([(e.subject or "", p.item) for e, p in zip(ctx.events, ctx.payloads, strict=True)])

    harness = HandlerHarness(c)
    await harness.deliver(
        moved("a", 1, item="x", to=1), moved("b", 1, item=2, to=1), moved("c", 1, item="z", to=1)
    )
    assert calls == [[("a", "x"), ("c", "z")]]
    assert [letter.event.subject for letter in harness.dead_letters if letter.event] == ["b"]


async def test_emitted_events_commit_with_the_handler_and_vanish_with_a_failed_attempt() -> None:
    c = consumer()
    attempts: list[int] = []

    @c.handler("t.moved", payload=Moved)
    async def apply(ctx: EventContext[Moved]) -> None:
        attempts.append(ctx.attempt)
        ctx.emit(Event(topic="u", type="u.noted", aggregate_id=ctx.payload.item, data={"try": ctx.attempt}))
        if ctx.attempt == 1:
            raise ConnectionError("a dependency blinked")

    harness = HandlerHarness(c)
    stats = await harness.deliver(moved("a", 1, item="x", to=1))
    # Fast path (attempt 1) failed, the careful path's attempt 1 failed, its attempt 2 went through.
    assert attempts == [1, 1, 2] and (stats.applied, stats.retries, stats.dead_lettered) == (1, 1, 0)
    assert [(e.type, e.data) for e in harness.emitted] == [("u.noted", {"try": 2})]


async def test_a_rejected_event_is_dead_lettered_at_once_and_emits_nothing() -> None:
    c = consumer()
    calls = 0

    @c.handler("t.moved", payload=Moved)
    async def apply(ctx: EventContext[Moved]) -> None:
        nonlocal calls
        calls += 1
        ctx.emit(Event(topic="u", type="u.noted", aggregate_id="a", data={}))
        if ctx.payload.to < 0:
            raise Reject("no negative moves")

    harness = HandlerHarness(c)
    ok, refused = moved("a", 1, item="x", to=1), moved("b", 1, item="y", to=-1)
    stats = await harness.deliver(ok, refused)
    assert (stats.applied, stats.dead_lettered, stats.retries) == (1, 1, 0)
    assert calls == 4  # both on the fast path, then each once on the careful path: no retry of the Reject
    [letter] = harness.dead_letters
    assert letter.attempts == 1 and letter.reason == "rejected by the handler: Reject: no negative moves"
    assert len(harness.emitted) == 1  # ok's; the refused event's emit rolled back with it
    assert (harness.outcome(ok), harness.outcome(refused)) == (Outcome.APPLIED, Outcome.DEAD)


async def test_emitting_without_a_writer_fails_as_in_production() -> None:
    c = consumer(writer=False, max_attempts=2)

    @c.handler("t.*")
    async def apply(ctx: EventContext) -> None:
        ctx.emit(Event(topic="u", type="u.noted", aggregate_id="a", data={}))

    harness = HandlerHarness(c)
    await harness.deliver(moved("a", 1))
    [letter] = harness.dead_letters
    assert "IdempotentConsumer(..., writer=OutboxWriter" in letter.reason and letter.attempts == 2
    assert harness.emitted == []


async def test_the_version_guard_duplicates_and_parking_run_as_in_the_consumer() -> None:
    c = consumer()
    applied: list[tuple[str, int]] = []

    @c.handler("t.moved", payload=Moved, gap_aware=True)
    async def apply(ctx: EventContext[Moved]) -> None:
        applied.append((ctx.event.subject or "", ctx.event.version or 0))

    harness = HandlerHarness(c)
    v1, v2, v3 = (harness.record(moved("a", v, item="x", to=v)) for v in (1, 2, 3))
    first = await harness.deliver(v1, v3)  # v2 has not arrived: v3 waits for it
    assert (first.applied, first.parked, [e.version for e in harness.parked]) == (1, 1, [3])
    closing = await harness.deliver(v2, v1)  # v2 closes the gap; v1 again is a duplicate
    assert applied == [("a", 1), ("a", 2), ("a", 3)] and not harness.parked
    assert (closing.applied, closing.released, closing.duplicates) == (2, 1, 1)
    stale = await harness.deliver(moved("a", 2, item="x", to=0))  # an older version, new event id
    assert stale.stale == 1 and applied[-1] == ("a", 3)
    assert harness.stats.applied == 3


async def test_an_unknown_type_is_dead_lettered_and_an_ignored_one_recorded() -> None:
    c = consumer()

    @c.handler("t.moved", payload=Moved)
    async def apply(ctx: EventContext[Moved]) -> None:
        pass

    c.ignore("t.noise")
    harness = HandlerHarness(c)
    noise = Event(topic="t", type="t.noise", aggregate_id="a", data={})
    odd = Event(topic="t", type="t.odd", aggregate_id="a", data={})
    raw = harness.record(Event(topic="t", type="t.moved", aggregate_id="b", data={}), value=b"not json")
    stats = await harness.deliver(noise, odd, raw)
    assert (stats.ignored, stats.dead_lettered) == (1, 2)
    assert [letter.reason.split(":")[0] for letter in harness.dead_letters] == [
        "no handler for event type 't.odd'",
        "malformed",
    ]
    assert harness.dead_letters[1].event is None and harness.outcome(noise) is Outcome.IGNORED


async def test_sql_on_the_harness_session_fails_clearly() -> None:
    c = consumer(max_attempts=1)

    @c.handler("t.*")
    async def apply(ctx: EventContext) -> None:
        await ctx.session.execute(text("SELECT 1"))

    harness = HandlerHarness(c)
    await harness.deliver(moved("a", 1))
    [letter] = harness.dead_letters
    assert "NoDatabase: session.execute: the handler harness has no database" in letter.reason


async def test_a_handler_cannot_commit_the_harness_transaction_either() -> None:
    c = consumer()

    @c.handler("t.*")
    async def apply(ctx: EventContext) -> None:
        await ctx.session.commit()

    harness = HandlerHarness(c)
    await harness.deliver(event := moved("a", 1))
    assert harness.dead_letters[0].reason.startswith("rejected by the handler: HandlerCommitted")
    assert harness.outcome(event) is Outcome.DEAD


@pytest.mark.parametrize("to", ["3", 3])
async def test_payload_validation_follows_the_model_lax_mode(to: object) -> None:
    # The model decides what fits (pydantic's lax mode accepts "3" for an int): the harness adds no rule.
    c = consumer()
    got: list[int] = []

    @c.handler("t.moved", payload=Moved)
    async def apply(ctx: EventContext[Moved]) -> None:
        got.append(ctx.payload.to)

    await HandlerHarness(c).deliver(moved(str(uuid.uuid4()), 1, item="x", to=to))
    assert got == [3]
