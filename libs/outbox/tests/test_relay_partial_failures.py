"""The relay when part of a claim fails: order per aggregate, no dead-lettering on outages, no hang, no starvation.

The local broker never rejects a single record, denies authorisation or stops answering, so those answers
are injected at the publisher's one seam (`BatchPublisher.submit`, where a record batch is handed to the
real producer); everything else is the real broker and PostgreSQL.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import orjson
import pytest
from aiokafka.errors import MessageSizeTooLargeError, TopicAuthorizationFailedError
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from libs.outbox.tests.relay_support import (
    POISON,
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
from outbox.kafka import replication_factor
from outbox.testing import read_topic, wire

pytestmark = pytest.mark.usefixtures("clean")


async def test_a_row_that_fails_alone_holds_back_its_successors_so_the_topic_stays_in_order(
    sessions: async_sessionmaker[AsyncSession],
    engine: AsyncEngine,
    writer: OutboxWriter,
    topic: str,
    bootstrap: str,
) -> None:
    # One record per batch (batch_bytes=1): X v1's batch fails on its own while X v2's could be acked, the
    # case where per-record sends wrote v2 before v1.
    x, y = keys_in_two_partitions()
    await write(sessions, writer, topic, (x, 1, True), (x, 2, False), (y, 1, False), (x, 3, False))
    relay = FaultyRelay(
        engine,
        RelaySettings(bootstrap=bootstrap, batch_bytes=1, row_backoff_initial_s=0.05, max_attempts=5),
        fault=lambda: MessageSizeTooLargeError("rejected by the broker"),
        remaining=2,
    )
    await run_until_published(relay, engine, 4)
    assert relay.faulty.faulted == 2
    assert (
        await scalar(
            engine, "SELECT attempts FROM outbox WHERE aggregate_id = :x AND aggregate_version = 1", x=x
        )
        == 2
    )
    found = versions_by_key(await read_topic(bootstrap, wire(topic), expect=4, timeout=10))
    assert found[x.encode()] == [1, 2, 3]  # never v2 before v1, and nothing written twice
    assert found[y.encode()] == [1]


async def test_a_failed_batch_of_several_records_charges_only_the_record_at_fault(
    sessions: async_sessionmaker[AsyncSession],
    engine: AsyncEngine,
    writer: OutboxWriter,
    topic: str,
    bootstrap: str,
) -> None:
    # One partition's three rows share a record batch; only the middle one is bad. The batch is resent
    # record by record: v1 goes, v2 is charged (and dead-lettered: max_attempts 1), v3 follows it later.
    x = f"x-{uuid.uuid4().hex[:8]}"
    await write(sessions, writer, topic, (x, 1, False), (x, 2, True), (x, 3, False))
    relay = FaultyRelay(
        engine,
        RelaySettings(bootstrap=bootstrap, max_attempts=1),
        fault=lambda: MessageSizeTooLargeError("rejected by the broker"),
        remaining=100,
    )
    task = await running(relay)
    try:
        await wait_for(
            lambda: scalar(
                engine,
                "SELECT count(*) = 3 FROM outbox WHERE published_at IS NOT NULL OR dead_at IS NOT NULL",
            )
        )
    finally:
        await stopped(relay, task)
    rows = await scalar(
        engine,
        "SELECT json_agg(json_build_array(aggregate_version, attempts, published_at IS NOT NULL, dead_at IS NOT NULL) "
        "ORDER BY id) FROM outbox",
    )
    assert rows == [[1, 0, True, False], [2, 1, False, True], [3, 0, True, False]]
    assert versions_by_key(await read_topic(bootstrap, wire(topic), expect=2, timeout=10))[x.encode()] == [
        1,
        3,
    ]


async def test_an_authorisation_failure_is_an_outage_it_never_dead_letters_a_row(
    sessions: async_sessionmaker[AsyncSession],
    engine: AsyncEngine,
    writer: OutboxWriter,
    topic: str,
    bootstrap: str,
) -> None:
    x, y = keys_in_two_partitions()
    await write(sessions, writer, topic, (x, 1, True), (x, 2, False), (y, 1, False))
    relay = FaultyRelay(
        engine,
        RelaySettings(bootstrap=bootstrap, max_attempts=1, outage_backoff_max_s=0.1),
        fault=lambda: TopicAuthorizationFailedError("ACL says no"),
        remaining=5,
    )
    await run_until_published(relay, engine, 3)
    assert relay.faulty.faulted == 5
    assert relay.stats.outages >= 5
    assert await scalar(engine, "SELECT count(*) FROM outbox WHERE attempts > 0 OR dead_at IS NOT NULL") == 0
    found = versions_by_key(await read_topic(bootstrap, wire(topic), expect=3, timeout=10))
    assert found[x.encode()] == [1, 2]


async def test_a_broker_that_never_acknowledges_does_not_keep_the_transaction_open(
    sessions: async_sessionmaker[AsyncSession],
    engine: AsyncEngine,
    writer: OutboxWriter,
    topic: str,
    bootstrap: str,
) -> None:
    x, y = keys_in_two_partitions()
    await write(sessions, writer, topic, (x, 1, True), (y, 1, False))
    relay = FaultyRelay(
        engine,
        RelaySettings(bootstrap=bootstrap, ack_timeout_s=0.5, outage_backoff_max_s=0.5),
        fault=lambda: None,  # the batch holding x v1 is never acknowledged
        remaining=1_000_000,
    )
    task = await running(relay)
    try:
        # The other partition's row goes out; the hung one is released, not charged, and stays pending.
        await wait_for(
            lambda: scalar(engine, "SELECT published_at IS NOT NULL FROM outbox WHERE aggregate_id = :y", y=y)
        )
        await wait_for(lambda: asyncio.sleep(0, relay.stats.outages >= 2))
        async with engine.connect() as conn:
            await conn.execute(text("SET lock_timeout = '5s'"))
            row = (
                await conn.execute(
                    text("SELECT attempts FROM outbox WHERE aggregate_id = :x FOR UPDATE"), {"x": x}
                )
            ).scalar_one()  # waits for the relay's claim to end: it must, within the ack deadline
            await conn.rollback()
        assert row == 0
        relay.faulty.remaining = 0  # the broker answers again
        await wait_for(
            lambda: scalar(engine, "SELECT published_at IS NOT NULL FROM outbox WHERE aggregate_id = :x", x=x)
        )
    finally:
        await stopped(relay, task)


async def test_an_aggregate_stuck_behind_a_backoff_does_not_starve_the_others(
    engine: AsyncEngine, topic: str, bootstrap: str
) -> None:
    # x's first row waits out a long backoff; 15 rows of x queue behind it, older than y's 3 rows. With
    # claims of 10, x's rows used to fill every claim (all held back) and y never went out.
    async with engine.begin() as conn:
        await conn.execute(
            text(
                "INSERT INTO outbox (event_id, topic, event_type, source, aggregate_id, aggregate_version, payload, "
                "attempts, available_at) "
                "SELECT gen_random_uuid(), :topic, 't.changed', 'test', agg, v, '{}'::jsonb, "
                "CASE WHEN agg = 'x' AND v = 1 THEN 1 ELSE 0 END, "
                "CASE WHEN agg = 'x' AND v = 1 THEN now() + interval '1 hour' ELSE now() END "
                "FROM (SELECT 'x' AS agg, g AS v FROM generate_series(1, 16) g "
                "      UNION ALL SELECT 'y', g FROM generate_series(1, 3) g) s ORDER BY agg, v"
            ),
            {"topic": topic},
        )
    relay = Relay(engine, RelaySettings(bootstrap=bootstrap, batch_size=10))
    await relay.start()
    try:
        await relay.publish_batch_with_retries()
    finally:
        await relay.close()
    assert (
        await scalar(
            engine, "SELECT count(*) FROM outbox WHERE aggregate_id = 'y' AND published_at IS NOT NULL"
        )
        == 3
    )
    assert (
        await scalar(
            engine, "SELECT count(*) FROM outbox WHERE aggregate_id = 'x' AND published_at IS NOT NULL"
        )
        == 0
    )


class ClusterAnswers:
    """What a cluster says to the two questions `replication_factor` asks (pure decision logic under test)."""

    def __init__(self, brokers: int, default_replication: str | None) -> None:
        self.brokers = brokers
        self.default_replication = default_replication

    async def describe_cluster(self) -> dict[str, Any]:
        return {"brokers": [{"node_id": i} for i in range(self.brokers)]}

    async def describe_configs(self, resources: list[Any]) -> list[Any]:
        entries = (
            []
            if self.default_replication is None
            else [("default.replication.factor", self.default_replication)]
        )

        class Response:
            resources = [(0, None, 4, "0", entries)]

        return [Response()]


@pytest.mark.parametrize(
    ("brokers", "default", "expected"), [(1, None, 1), (3, None, 3), (5, None, 3), (3, "2", 2), (1, "1", 1)]
)
async def test_topics_get_the_clusters_replication_factor_never_a_hard_coded_one(
    monkeypatch: pytest.MonkeyPatch, brokers: int, default: str | None, expected: int
) -> None:
    monkeypatch.delenv("OUTBOX_TOPIC_REPLICATION", raising=False)
    assert await replication_factor(ClusterAnswers(brokers, default)) == expected  # type: ignore[arg-type]
    monkeypatch.setenv("OUTBOX_TOPIC_REPLICATION", "2")
    assert await replication_factor(ClusterAnswers(brokers, default)) == 2  # type: ignore[arg-type]


async def test_the_real_broker_reports_a_usable_replication_factor(bootstrap: str) -> None:
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        brokers = len((await admin.describe_cluster())["brokers"])
        assert 1 <= await replication_factor(admin) <= max(brokers, 1)
    finally:
        await admin.close()


def test_payload_marker_is_what_the_writer_stores() -> None:
    assert POISON in orjson.dumps({"marker": "poison"})
