"""Writer + relay against real PostgreSQL and the real broker: atomicity, headers, trace context."""

from __future__ import annotations

import asyncio
import uuid

import orjson
import pytest
from opentelemetry.sdk.trace import TracerProvider
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from outbox import Event, OutboxWriter, Relay, RelaySettings
from outbox.testing import drain_outbox, headers_of, read_topic, wire

pytestmark = pytest.mark.usefixtures("clean")


async def pending_count(engine: AsyncEngine) -> int:
    async with engine.connect() as conn:
        return int(
            (await conn.execute(text("SELECT count(*) FROM outbox WHERE published_at IS NULL"))).scalar_one()
        )


async def test_rollback_leaves_no_event_and_commit_publishes_once(
    engine: AsyncEngine,
    sessions: async_sessionmaker[AsyncSession],
    writer: OutboxWriter,
    topic: str,
    bootstrap: str,
) -> None:
    rolled_back = Event(topic=topic, type=f"{topic}.rolled_back", aggregate_id="a1", data={"n": 1}, version=1)
    committed = Event(topic=topic, type=f"{topic}.committed", aggregate_id="a1", data={"n": 2}, version=1)

    async with sessions() as session:
        await writer.add(session, rolled_back)
        await session.rollback()
    with pytest.raises(RuntimeError):
        async with sessions() as session, session.begin():
            await writer.add(session, rolled_back)
            raise RuntimeError("the business change failed")
    async with sessions() as session, session.begin():
        await writer.add(session, committed)

    assert await pending_count(engine) == 1
    relay = await drain_outbox(engine, bootstrap)
    assert relay.stats.published == 1
    assert await pending_count(engine) == 0
    # A second relay pass publishes nothing more: the row is marked.
    again = await drain_outbox(engine, bootstrap)
    assert again.stats.published == 0

    records = await read_topic(bootstrap, wire(topic), expect=2, timeout=5)
    assert [headers_of(r)["ce_id"] for r in records] == [str(committed.id)]


async def test_headers_carry_cloudevents_and_traceparent(
    sessions: async_sessionmaker[AsyncSession], engine: AsyncEngine, topic: str, bootstrap: str
) -> None:
    provider = TracerProvider()
    tracer = provider.get_tracer("test")
    writer = OutboxWriter(source="console")
    event = Event(
        topic=topic, type="console.document.enabled", aggregate_id="doc-7", data={"enabled": True}, version=3
    )
    with tracer.start_as_current_span("PATCH /documents/status/enable") as span:
        trace_id = f"{span.get_span_context().trace_id:032x}"
        async with sessions() as session, session.begin():
            await writer.add(session, event)

    await drain_outbox(engine, bootstrap)
    [record] = await read_topic(bootstrap, wire(topic), expect=1)
    headers = headers_of(record)
    assert headers["ce_specversion"] == "1.0"
    assert headers["ce_id"] == str(event.id)
    assert headers["ce_type"] == "console.document.enabled"
    assert headers["ce_source"] == "console"
    assert headers["ce_subject"] == "doc-7"
    assert headers["ce_aggregateversion"] == "3"
    assert headers["ce_time"].startswith(event.time.isoformat()[:19])
    assert headers["content-type"] == "application/json"
    assert headers["traceparent"].split("-")[1] == trace_id
    assert record.key == b"doc-7"
    assert orjson.loads(record.value) == {"enabled": True, "version": 3}


async def test_events_of_one_aggregate_share_a_partition_in_order(
    sessions: async_sessionmaker[AsyncSession],
    engine: AsyncEngine,
    writer: OutboxWriter,
    topic: str,
    bootstrap: str,
) -> None:
    for version in range(1, 21):
        async with sessions() as session, session.begin():
            await writer.add(
                session,
                Event(topic=topic, type="t.changed", aggregate_id="agg", data={}, version=version),
                Event(topic=topic, type="t.changed", aggregate_id=f"other-{version}", data={}, version=1),
            )
    await drain_outbox(engine, bootstrap, batch_size=7)
    records = await read_topic(bootstrap, wire(topic), expect=40)
    mine = [r for r in records if r.key == b"agg"]
    assert len({r.partition for r in mine}) == 1
    assert [int(headers_of(r)["ce_aggregateversion"]) for r in mine] == list(range(1, 21))


async def test_notify_wakes_the_relay_without_waiting_for_the_poll(
    sessions: async_sessionmaker[AsyncSession],
    engine: AsyncEngine,
    writer: OutboxWriter,
    topic: str,
    bootstrap: str,
) -> None:
    # With a 30 s idle poll, only the NOTIFY sent at commit can make the relay publish within the deadline.
    relay = Relay(engine, RelaySettings(bootstrap=bootstrap, idle_poll_max_s=30.0, idle_poll_min_s=30.0))
    task = asyncio.create_task(relay.run())
    try:
        await asyncio.sleep(0.5)  # let it start, find nothing and go to sleep on its 30 s poll
        assert relay.stats.published == 0
        async with sessions() as session, session.begin():
            await writer.add(session, Event(topic=topic, type="t.x", aggregate_id=str(uuid.uuid4()), data={}))
        records = await read_topic(bootstrap, wire(topic), expect=1, timeout=10)
        assert len(records) == 1
    finally:
        relay.stop()
        await asyncio.wait_for(task, 30)


async def test_claim_linger_publishes_a_trickle_of_commits_in_one_claim(
    sessions: async_sessionmaker[AsyncSession],
    engine: AsyncEngine,
    writer: OutboxWriter,
    topic: str,
    bootstrap: str,
) -> None:
    """Five commits 100 ms apart: woken by the first, the relay waits its linger and claims all five in one
    transaction (one `published_at`); without the linger the first would go alone."""
    settings = RelaySettings(
        bootstrap=bootstrap, idle_poll_min_s=30.0, idle_poll_max_s=30.0, claim_linger_ms=2000
    )
    relay = Relay(engine, settings)
    task = asyncio.create_task(relay.run())
    aggregate = str(uuid.uuid4())
    try:
        await asyncio.sleep(0.5)  # started, found nothing, asleep on its 30 s poll
        for version in range(1, 6):
            async with sessions() as session, session.begin():
                await writer.add(
                    session, Event(topic=topic, type="t.x", aggregate_id=aggregate, data={}, version=version)
                )
            await asyncio.sleep(0.1)
        records = await read_topic(bootstrap, wire(topic), expect=5, timeout=15)
        assert [int(headers_of(r)["ce_aggregateversion"]) for r in records] == [1, 2, 3, 4, 5]
    finally:
        relay.stop()
        await asyncio.wait_for(task, 30)
    async with engine.connect() as conn:
        claims = (await conn.execute(text("SELECT count(DISTINCT published_at) FROM outbox"))).scalar_one()
    assert claims == 1


async def test_retention_cleanup_deletes_only_old_published_rows_in_batches(
    sessions: async_sessionmaker[AsyncSession],
    engine: AsyncEngine,
    writer: OutboxWriter,
    topic: str,
    bootstrap: str,
) -> None:
    async with sessions() as session, session.begin():
        await writer.add(
            session, *(Event(topic=topic, type="t.x", aggregate_id=f"a{i}", data={}) for i in range(25))
        )
    await drain_outbox(engine, bootstrap)
    async with engine.begin() as conn:
        await conn.execute(text("UPDATE outbox SET published_at = now() - interval '2 hours' WHERE id <= 20"))
        await conn.execute(text("UPDATE outbox SET published_at = NULL WHERE id = 25"))
    from datetime import timedelta

    relay = Relay(engine, RelaySettings(bootstrap=bootstrap, retention=timedelta(hours=1), cleanup_batch=6))
    assert await relay.cleanup_published() == 20
    async with engine.connect() as conn:
        left = [r[0] for r in await conn.execute(text("SELECT id FROM outbox ORDER BY id"))]
    assert left == [21, 22, 23, 24, 25]


def test_a_replay_of_some_event_types_only_needs_an_explicit_allow_partial(
    database_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Security review, finding 8: `replay --type` into a consumer rebuilt from scratch could resurrect a
    deleted aggregate (its `created` replayed without its `deleted`). It now refuses without --allow-partial."""
    from outbox.ops.cli import main

    assert (
        main(["replay", "--database-url", database_url, "--type", "console.document.created", "--yes"]) == 2
    )
    assert "resurrect" in capsys.readouterr().err
    assert (
        main(["replay", "--database-url", database_url, "--type", "x.created", "--allow-partial", "--json"])
        == 0
    )
    assert '"would_replay": 0' in capsys.readouterr().out
