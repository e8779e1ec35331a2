"""The ordering contract end to end: writers serialised per aggregate (ids follow commit order), each
event's previous version on the wire, a dead row that blocks or is redriven without reordering, producer
faults that never charge a row, replays that wait their turn, and a gap-aware consumer that parks what
arrives before its predecessor. Real PostgreSQL and broker throughout."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable, Sequence
from typing import Any

import pytest
from aiokafka.errors import OutOfOrderSequenceNumber
from aiokafka.producer.message_accumulator import BatchBuilder
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from outbox import (
    ConsumerSettings,
    Event,
    EventContext,
    IdempotentConsumer,
    OutboxWriter,
    Relay,
    RelaySettings,
)
from outbox.ops.admin import RedriveOrder, redrive, replay, status
from outbox.ops.admin_store import Selection
from outbox.relay.publisher import BatchPublisher, Outbound
from outbox.relay.store import OutboxStore
from outbox.telemetry.metrics import prometheus_text, setup_metrics
from outbox.testing import drain_outbox, headers_of, read_topic, record_effect, wire
from testsupport import wait_until

pytestmark = pytest.mark.usefixtures("clean")


async def rows(engine: AsyncEngine, sql: str, **params: object) -> list[Any]:
    async with engine.connect() as conn:
        return [tuple(r) for r in await conn.execute(text(sql), params)]


def ev(topic: str, aggregate: str, version: int | None, **extra: Any) -> Event:
    return Event(
        topic=topic,
        type=f"{topic}.changed",
        aggregate_id=aggregate,
        data={"v": version},
        version=version,
        **extra,
    )


async def write(sessions: async_sessionmaker[AsyncSession], writer: OutboxWriter, *events: Event) -> None:
    for event in events:
        async with sessions() as session, session.begin():
            await writer.add(session, event)


async def test_a_second_writer_of_an_aggregate_waits_so_ids_follow_commit_order(
    engine: AsyncEngine, sessions: async_sessionmaker[AsyncSession], writer: OutboxWriter, topic: str
) -> None:
    # Finding 12: without a lock the second transaction takes id 2 while the first, holding id 1, may
    # commit after it; consumers would then see v2 before the v1 the database committed last.
    first = sessions()
    await first.begin()
    await writer.add(first, ev(topic, "x", 1))
    second_done = asyncio.Event()

    async def second() -> None:
        async with sessions() as session, session.begin():
            await writer.add(session, ev(topic, "x", 2))
        second_done.set()

    task = asyncio.create_task(second())

    async def waiting_for_the_first() -> bool:
        found = await rows(
            engine,
            "SELECT 1 FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND query LIKE '%outbox_heads%'",
        )
        return bool(found)

    await wait_until(waiting_for_the_first, timeout=10, what="the second writer waits for the first")
    assert not second_done.is_set()
    await first.commit()
    await first.close()
    await asyncio.wait_for(task, 10)
    stored = await rows(engine, "SELECT id, aggregate_version, prev_version FROM outbox ORDER BY id")
    assert [(v, p) for _, v, p in stored] == [(1, None), (2, 1)]
    # Another aggregate is not held up by the first's lock.
    other = sessions()
    await other.begin()
    await writer.add(other, ev(topic, "x", 3))
    await asyncio.wait_for(write(sessions, writer, ev(topic, "y", 1)), 5)
    await other.rollback()
    await other.close()


async def test_each_event_carries_its_previous_version_except_standalone_snapshots(
    engine: AsyncEngine,
    sessions: async_sessionmaker[AsyncSession],
    writer: OutboxWriter,
    topic: str,
    bootstrap: str,
) -> None:
    await write(sessions, writer, ev(topic, "x", 1), ev(topic, "x", 2))
    async with sessions() as session, session.begin():  # two in one call: the second follows the first
        await writer.add(session, ev(topic, "x", 3), ev(topic, "x", 4))
    await write(sessions, writer, ev(topic, "x", 4, standalone=True), ev(topic, "y", None))
    await drain_outbox(engine, bootstrap)
    records = await read_topic(bootstrap, wire(topic), expect=6)
    seen = [
        (headers_of(r).get("ce_aggregateversion"), headers_of(r).get("ce_prevversion"))
        for r in sorted(records, key=lambda r: (r.key, r.offset))
    ]
    assert seen == [("1", None), ("2", "1"), ("3", "2"), ("4", "3"), ("4", None), (None, None)]


async def test_an_unversioned_event_between_two_versioned_ones_does_not_hide_the_predecessor(
    engine: AsyncEngine, sessions: async_sessionmaker[AsyncSession], writer: OutboxWriter, topic: str
) -> None:
    # Review finding 5: add(v2, unversioned, v3) after v1 gave v3 the predecessor 1 (lag() met the middle
    # event's NULL, and coalesce fell back to the head's old version).
    await write(sessions, writer, ev(topic, "x", 1))
    async with sessions() as session, session.begin():
        await writer.add(session, ev(topic, "x", 2), ev(topic, "x", None), ev(topic, "x", 3))
    async with sessions() as session, session.begin():  # unversioned first, then two in a row
        await writer.add(
            session, ev(topic, "x", None), ev(topic, "x", 4), ev(topic, "x", None), ev(topic, "x", None)
        )
        await writer.add(session, ev(topic, "y", None), ev(topic, "x", 5), ev(topic, "y", 1))
    stored = await rows(
        engine, "SELECT aggregate_id, aggregate_version, prev_version FROM outbox ORDER BY id"
    )
    assert stored == [
        ("x", 1, None),
        ("x", 2, 1),
        ("x", None, None),
        ("x", 3, 2),
        ("x", None, None),
        ("x", 4, 3),
        ("x", None, None),
        ("x", None, None),
        ("y", None, None),
        ("x", 5, 4),
        ("y", 1, None),
    ]


async def dead_row(engine: AsyncEngine, aggregate: str, version: int) -> int:
    async with engine.begin() as conn:
        return int(
            (
                await conn.execute(
                    text(
                        "UPDATE outbox SET dead_at = now(), attempts = 5, last_error = 'RecordTooLargeError: x' "
                        "WHERE aggregate_id = :a AND aggregate_version = :v RETURNING id"
                    ),
                    {"a": aggregate, "v": version},
                )
            ).scalar_one()
        )


async def topic_versions(bootstrap: str, topic: str, expect: int) -> list[int]:
    records = await read_topic(bootstrap, wire(topic), expect=expect)
    return [int(headers_of(r)["ce_aggregateversion"]) for r in sorted(records, key=lambda r: r.offset)]


async def test_block_on_dead_holds_the_aggregate_until_the_redrive_then_sends_in_order(
    engine: AsyncEngine,
    sessions: async_sessionmaker[AsyncSession],
    writer: OutboxWriter,
    topic: str,
    bootstrap: str,
) -> None:
    await write(sessions, writer, ev(topic, "x", 1), ev(topic, "x", 2), ev(topic, "x", 3))
    await dead_row(engine, "x", 2)
    await drain_outbox(engine, bootstrap, block_on_dead=True)
    assert await topic_versions(bootstrap, topic, 1) == [1]  # v3 waits behind the dead v2
    report = await status(engine)
    assert (report["dead_lettered"], report["behind_dead"], report["pending"]) == (1, 1, 1)
    assert (await redrive(engine, ids=None, dry_run=False))["redriven"] == 1  # nothing was out after it
    await drain_outbox(engine, bootstrap, block_on_dead=True)
    assert await topic_versions(bootstrap, topic, 3) == [1, 2, 3]


async def test_a_redrive_behind_published_successors_is_refused_or_reordered(
    engine: AsyncEngine,
    sessions: async_sessionmaker[AsyncSession],
    writer: OutboxWriter,
    topic: str,
    bootstrap: str,
) -> None:
    # Finding 10: v2 dead, v3 and v4 went out; a plain redrive would put v2 after v4.
    await write(sessions, writer, *(ev(topic, "x", v) for v in (1, 2, 3, 4)))
    dead_id = await dead_row(engine, "x", 2)
    await drain_outbox(engine, bootstrap)
    assert await topic_versions(bootstrap, topic, 3) == [1, 3, 4]
    refused = await redrive(engine, ids=None, dry_run=False)
    assert refused["redriven"] == 0 and refused["refused"] == 1
    assert (
        refused["out_of_order"][0]["id"] == dead_id
        and len(refused["out_of_order"][0]["published_after"]) == 2
    )
    reordered = await redrive(engine, ids=[dead_id], dry_run=False, order=RedriveOrder.REORDER)
    assert (reordered["redriven"], reordered["resent"]) == (1, 2)
    await drain_outbox(engine, bootstrap)
    assert await topic_versions(bootstrap, topic, 6) == [1, 3, 4, 2, 3, 4]  # the log ends at v4 again


class JammedPublisher(BatchPublisher):
    """Every batch answers OUT_OF_ORDER_SEQUENCE_NUMBER, as every batch of a partition does once the
    idempotent producer's sequence broke (aiokafka never rewinds it; the local broker has no idempotent
    producer to break, so the answer is given at the publisher's seam)."""

    async def submit(
        self, topic: str, partition: int, builder: BatchBuilder, batch: Sequence[Outbound]
    ) -> asyncio.Future[object]:
        future: asyncio.Future[object] = asyncio.get_running_loop().create_future()
        future.set_exception(OutOfOrderSequenceNumber())
        return future


class JammedFirstProducerRelay(Relay):
    """Its first producer is jammed for good; a replacement producer works."""

    publishers: list[BatchPublisher]

    def make_publisher(self, producer: Any) -> BatchPublisher:
        kind = JammedPublisher if not getattr(self, "publishers", None) else BatchPublisher
        publisher = kind(
            producer,
            max_request_size=self.settings.max_message_bytes,
            ack_timeout_s=self.settings.ack_timeout_s,
        )
        self.publishers = [*getattr(self, "publishers", []), publisher]
        return publisher


async def test_a_broken_producer_sequence_replaces_the_producer_and_charges_no_row(
    engine: AsyncEngine,
    sessions: async_sessionmaker[AsyncSession],
    writer: OutboxWriter,
    topic: str,
    bootstrap: str,
) -> None:
    # Finding 11: before, the relay kept the jammed producer (every batch failed again, for ever) and a
    # record-level reading of the error dead-lettered healthy rows.
    await write(sessions, writer, *(ev(topic, f"a{i}", 1) for i in range(6)))
    relay = JammedFirstProducerRelay(
        engine, RelaySettings(bootstrap=bootstrap, max_attempts=2, outage_backoff_max_s=0.05)
    )
    await relay.start()
    try:
        await asyncio.wait_for(_drain(relay), 60)
    finally:
        await relay.close()
    assert relay.stats.producer_resets == 1 and len(relay.publishers) == 2
    assert await rows(
        engine, "SELECT count(*) FROM outbox WHERE published_at IS NULL OR dead_at IS NOT NULL"
    ) == [(0,)]
    assert await rows(engine, "SELECT max(attempts) FROM outbox") == [(0,)]
    assert len(await read_topic(bootstrap, wire(topic), expect=6)) == 6


async def _drain(relay: Relay) -> None:
    while await relay.publish_batch_with_retries():
        pass


async def test_replayed_rows_wait_behind_rows_ready_before_them_and_status_counts_from_the_replay(
    engine: AsyncEngine,
    sessions: async_sessionmaker[AsyncSession],
    writer: OutboxWriter,
    topic: str,
    bootstrap: str,
) -> None:
    # Finding 13: claims went by id, so a replay of old rows drained entirely before any new row; status
    # measured "oldest pending" from occurred_at, so a replay of day-old events raised a false alarm.
    await write(sessions, writer, *(ev(topic, f"old{i}", 1) for i in range(5)))
    await drain_outbox(engine, bootstrap)
    async with engine.begin() as conn:
        await conn.execute(text("UPDATE outbox SET occurred_at = now() - interval '1 day'"))
    await write(sessions, writer, *(ev(topic, f"new{i}", 1) for i in range(3)))
    assert (await replay(engine, Selection(topic=topic), dry_run=False, chunk=2))["replayed"] == 5
    async with engine.begin() as conn:
        claimed = await OutboxStore.claim(conn, 3)
        await conn.rollback()
    assert sorted(r.aggregate_id for r in claimed) == ["new0", "new1", "new2"]
    report = await status(engine)
    assert report["pending"] == 8 and report["ready"] == 8
    assert report["oldest_pending_age_s"] < 600


async def test_status_tells_ready_rows_from_rows_in_backoff_and_rows_behind_them(
    engine: AsyncEngine, sessions: async_sessionmaker[AsyncSession], writer: OutboxWriter, topic: str
) -> None:
    await write(sessions, writer, ev(topic, "x", 1), ev(topic, "x", 2), ev(topic, "x", 3), ev(topic, "y", 1))
    async with engine.begin() as conn:
        await conn.execute(
            text(
                "UPDATE outbox SET attempts = 1, available_at = now() + interval '1 hour' "
                "WHERE aggregate_id = 'x' AND aggregate_version = 1"
            )
        )
    report = await status(engine)
    assert (report["pending"], report["backoff"], report["behind_backoff"], report["ready"]) == (4, 1, 2, 1)


async def test_a_gap_aware_consumer_parks_what_arrives_before_its_predecessor_and_applies_it_after(
    engine: AsyncEngine,
    sessions: async_sessionmaker[AsyncSession],
    writer: OutboxWriter,
    topic: str,
    bootstrap: str,
    run_consumer: Callable[[IdempotentConsumer], None],
) -> None:
    # v2 is dead-lettered by the relay, v3 and v4 go out. A plain guarded consumer applies v3 on top of v1
    # and later drops v2 as stale; this one parks v3 and v4, then applies v2, v3, v4 once v2 is redriven.
    setup_metrics("outbox-tests")  # the parked gauges the ParkedEventsTooOld alert reads
    await write(sessions, writer, *(ev(topic, "x", v) for v in (1, 2, 3, 4)))
    await dead_row(engine, "x", 2)
    await drain_outbox(engine, bootstrap)
    group = f"g-{uuid.uuid4().hex[:8]}"
    consumer = IdempotentConsumer(
        group,
        [topic],
        sessions,
        ConsumerSettings(session_timeout_ms=6000, request_timeout_ms=10000, park_sweep_interval_s=0.2),
    )

    @consumer.handler(f"{topic}.*", gap_aware=True)
    async def apply(ctx: EventContext) -> None:
        await record_effect(ctx)

    run_consumer(consumer)

    async def parked(n: int) -> bool:
        return consumer.stats.parked >= n

    await wait_until(lambda: parked(2), timeout=30, what="v3 and v4 parked")

    async def parked_gauges(events: float) -> bool:
        return gauge("outbox_consumer_parked_messages", group) == events

    await wait_until(lambda: parked_gauges(2), timeout=30, what="2 parked in the gauge")
    assert gauge("outbox_consumer_parked_oldest_age_seconds", group) > 0
    assert gauge("outbox_consumer_parked_alert_after_seconds", group) == 60
    assert await rows(
        engine, "SELECT version FROM effects WHERE consumer = :c ORDER BY applied_at", c=group
    ) == [(1,)]
    assert await rows(
        engine, "SELECT outcome, count(*) FROM inbox WHERE consumer = :c GROUP BY 1 ORDER BY 1", c=group
    ) == [
        ("applied", 1),
        ("parked", 2),
    ]
    await redrive(engine, ids=None, dry_run=False, order=RedriveOrder.FORCE)
    await drain_outbox(engine, bootstrap)

    async def applied(n: int) -> bool:
        return len(await rows(engine, "SELECT 1 FROM effects WHERE consumer = :c", c=group)) >= n

    await wait_until(lambda: applied(4), timeout=30, what="v2, then the parked v3 and v4, applied")
    effects = await rows(
        engine, "SELECT version FROM effects WHERE consumer = :c ORDER BY applied_at, version", c=group
    )
    assert effects == [(1,), (2,), (3,), (4,)]
    assert await rows(engine, "SELECT count(*) FROM inbox_parked WHERE consumer = :c", c=group) == [(0,)]
    assert consumer.stats.released == 2
    await wait_until(lambda: parked_gauges(0), timeout=30, what="none parked in the gauge")
    assert gauge("outbox_consumer_parked_oldest_age_seconds", group) == 0


def gauge(name: str, group: str) -> float:
    """The Prometheus sample `name` of consumer group `group` (what OUTBOX_METRICS_PORT serves); -1: none."""
    for family in text_string_to_metric_families(prometheus_text()[0].decode()):
        for sample in family.samples:
            if sample.name == name and sample.labels.get("messaging_consumer_group_name") == group:
                return float(sample.value)
    return -1.0


async def test_the_ack_deadline_releases_the_claim_when_the_broker_link_is_black_holed(
    engine: AsyncEngine, sessions: async_sessionmaker[AsyncSession], writer: OutboxWriter, topic: str
) -> None:
    # Finding 2 on a real network fault: the broker's link swallows every byte (a hung broker, as the
    # idempotent producer sees one: it never expires a batch). The claim must end within the deadline.
    from testsupport.broker import BrokerBehindProxy

    broker = BrokerBehindProxy().start()
    relay = Relay(
        engine,
        RelaySettings(
            bootstrap=broker.bootstrap, ack_timeout_s=1.0, outage_backoff_max_s=0.5, idle_poll_max_s=0.05
        ),
    )
    task = asyncio.create_task(relay.run())
    try:
        await write(sessions, writer, ev(topic, "x", 1))
        await wait_until(
            lambda: _is(engine, "SELECT count(*) FROM outbox WHERE published_at IS NULL", 0),
            timeout=30,
            what="first",
        )
        broker.proxy.cut("blackhole")
        await write(sessions, writer, ev(topic, "x", 2))

        async def outages() -> bool:
            return relay.stats.outages >= 2

        await wait_until(outages, timeout=30, what="the relay gives up waiting and backs off")
        async with engine.connect() as conn:
            await conn.execute(text("SET lock_timeout = '5s'"))
            attempts = (
                await conn.execute(text("SELECT attempts FROM outbox WHERE aggregate_version = 2 FOR UPDATE"))
            ).scalar_one()
            await conn.rollback()
        assert attempts == 0  # released, never charged
        broker.proxy.restore()
        await wait_until(
            lambda: _is(engine, "SELECT count(*) FROM outbox WHERE published_at IS NULL", 0),
            timeout=60,
            what="published once the link is back",
        )
    finally:
        relay.stop()
        await asyncio.wait_for(task, 60)
        broker.stop()


async def _is(engine: AsyncEngine, sql: str, expected: object) -> bool:
    return (await rows(engine, sql)) == [(expected,)]


async def outbox_cli(*args: str) -> tuple[int, str, str]:
    import sys

    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "outbox.ops.cli",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await proc.communicate()
    return proc.returncode or 0, out.decode(), err.decode()


async def test_outbox_why_names_the_row_holding_an_aggregate_back_its_lock_holder_and_each_consumers_copy(
    engine: AsyncEngine,
    database_url: str,
    sessions: async_sessionmaker[AsyncSession],
    writer: OutboxWriter,
    topic: str,
    bootstrap: str,
    run_consumer: Callable[[IdempotentConsumer], None],
) -> None:
    import orjson

    await write(sessions, writer, ev(topic, "x", 1))
    await drain_outbox(engine, bootstrap)
    group = f"g-{uuid.uuid4().hex[:8]}"
    consumer = IdempotentConsumer(
        group, [topic], sessions, ConsumerSettings(session_timeout_ms=6000, request_timeout_ms=10000)
    )

    @consumer.handler(f"{topic}.*")
    async def apply(ctx: EventContext) -> None:
        await record_effect(ctx)

    run_consumer(consumer)
    await wait_until(lambda: _is(engine, "SELECT count(*) FROM inbox", 1), timeout=30, what="v1 consumed")
    await write(sessions, writer, ev(topic, "x", 2), ev(topic, "x", 3))
    async with engine.begin() as conn:
        await conn.execute(
            text(
                "UPDATE outbox SET attempts = 2, last_error = 'RecordTooLargeError: too big', "
                "available_at = now() + interval '1 hour' WHERE aggregate_version = 2"
            )
        )
    holder = sessions()  # a writer of x that has not committed: it holds x's head row
    await holder.begin()
    await writer.add(holder, ev(topic, "x", 4))
    try:
        code, out, err = await outbox_cli(
            "why", "x", "--database-url", database_url, "--consumer-db", database_url, "--json"
        )
        assert code == 0, err
        report = orjson.loads(out)
        states = [(r["aggregate_version"], r["state"]) for r in report["rows"]]
        assert states[0] == (1, "published")
        assert (
            states[1] == (2, "backoff") and states[2][0] == 3 and states[2][1].startswith("blocked behind #")
        )
        assert report["held_by"]["aggregate_version"] == 2 and "too big" in report["held_by"]["last_error"]
        assert any(h["holds"] == "the aggregate's writer lock" for h in report["lock_holders"])
        assert report["consumers"][0]["applied_versions"][0]["version"] == 1
        human = (await outbox_cli("why", "x", "--database-url", database_url))[1]
        assert "held back by #" in human and "backoff" in human
        first = report["rows"][0]["event_id"]
        code, out, err = await outbox_cli(
            "why", first, "--database-url", database_url, "--consumer-db", database_url, "--json"
        )
        event = orjson.loads(out)
        [inbox] = event["consumers"][0]["inbox"]
        assert (inbox["consumer"], inbox["outcome"], inbox["topic"]) == (group, "applied", topic)
        assert inbox["offset"] >= 0 and event["rows"][0]["state"] == "published"
    finally:
        await holder.rollback()
        await holder.close()
