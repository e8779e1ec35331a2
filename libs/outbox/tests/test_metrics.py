"""Metrics move when events flow: the relay's and the consumer's instruments, read back as Prometheus text
(what `GET /metrics` and OUTBOX_METRICS_PORT serve), and the lag probe against the real broker."""

from __future__ import annotations

import asyncio
import sys
import uuid
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from aiokafka import AIOKafkaProducer
from prometheus_client.parser import text_string_to_metric_families
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
from outbox.kafka import ensure_topics
from outbox.ops.observe import group_lag, read_backlog
from outbox.telemetry.metrics import prometheus_text, setup_metrics
from outbox.testing import drain_outbox, record_effect, wire
from testsupport import ServiceProcess, free_port, wait_until

pytestmark = pytest.mark.usefixtures("clean")
FAST = ConsumerSettings(
    max_attempts=2, retry_initial_s=0.01, retry_max_s=0.05, session_timeout_ms=6000, request_timeout_ms=10000
)


def scrape(name: str, **labels: str) -> float:
    """Sum of the samples called `name` whose labels include `labels`."""
    setup_metrics("outbox-tests")
    text = prometheus_text()[0].decode()
    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return total


async def test_relay_and_consumer_metrics_move_with_events(
    engine: AsyncEngine,
    sessions: async_sessionmaker[AsyncSession],
    writer: OutboxWriter,
    topic: str,
    bootstrap: str,
    run_consumer: Callable[[IdempotentConsumer], None],
) -> None:
    setup_metrics("outbox-tests")
    async with sessions() as session, session.begin():
        await writer.add(
            session,
            *[
                Event(
                    topic=topic, type=f"{topic}.changed", aggregate_id=f"a{i % 4}", data={"i": i}, version=i
                )
                for i in range(1, 13)
            ],
        )
    backlog = await read_backlog(engine)
    assert backlog.pending == 12 and backlog.oldest_pending_age_s >= 0 and backlog.dead == 0

    await drain_outbox(engine, bootstrap)
    assert (await read_backlog(engine)).pending == 0
    sent = {"messaging_destination_name": topic}
    assert scrape("messaging_client_sent_messages_total", **sent) == 12
    assert scrape("outbox_relay_commit_to_ack_duration_seconds_count", **sent) == 12
    assert scrape("outbox_relay_batch_size_sum") >= 12

    group = f"g-{uuid.uuid4().hex[:8]}"
    consumer = IdempotentConsumer(group, [topic], sessions, FAST)

    @consumer.handler(f"{topic}.*")
    async def apply(ctx: EventContext) -> None:
        await record_effect(ctx)

    run_consumer(consumer)
    by_group = {"messaging_consumer_group_name": group}

    async def applied_all() -> bool:
        return scrape("outbox_consumer_messages_total", **by_group, outbox_outcome="applied") == 12

    await wait_until(applied_all, timeout=60, what="12 applied in the outcome counter")
    assert scrape("messaging_client_consumed_messages_total", **by_group) == 12
    assert scrape("messaging_process_duration_seconds_count", **by_group) >= 1

    async def caught_up() -> bool:
        text = prometheus_text()[0].decode()
        return (
            f'messaging_consumer_group_name="{group}"' in text
            and scrape("outbox_consumer_lag", **by_group) == 0
        )

    await wait_until(caught_up, timeout=30, what="consumer lag observed and 0")
    # Seen from outside (what an API's /metrics and `outbox status` report): committed offsets vs highwater.
    lag = await group_lag(bootstrap, group, [wire(topic)])
    assert sum(lag.values()) == 0 and lag


async def test_group_lag_uses_the_fetch_highwater(bootstrap: str) -> None:
    """Records produced in one batch: the broker's end_offsets may say 1 (docs/broker.md); the probe says 10."""
    topic = wire(f"lag.{uuid.uuid4().hex[:8]}")
    await ensure_topics(bootstrap, [topic], partitions=1)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=50)
    await producer.start()
    try:
        futures = [await producer.send(topic, b"x", key=b"k") for _ in range(10)]
        await asyncio.gather(*futures)
    finally:
        await producer.stop()
    assert await group_lag(bootstrap, f"nobody-{uuid.uuid4().hex[:6]}", [topic]) == {(topic, 0): 10}


async def test_relay_process_serves_its_metrics_port(
    sessions: async_sessionmaker[AsyncSession],
    writer: OutboxWriter,
    topic: str,
    database_url: str,
    log_dir: Path,
) -> None:
    """`outbox relay` with OUTBOX_METRICS_PORT: its counters on that port, moving as it publishes."""
    port = free_port()
    relay = ServiceProcess(
        "relay",
        [
            sys.executable,
            "-m",
            "outbox.ops.cli",
            "relay",
            "--database-url",
            database_url,
            "--name",
            "metrics-test",
        ],
        env={"OUTBOX_METRICS_PORT": str(port)},
        log_dir=log_dir,
    ).start()
    try:
        async with sessions() as session, session.begin():
            await writer.add(
                session,
                *[Event(topic=topic, type=f"{topic}.x", aggregate_id=str(i), data={}) for i in range(5)],
            )

        async def sent() -> bool:
            try:
                r = await asyncio.to_thread(httpx.get, f"http://127.0.0.1:{port}/metrics", timeout=5)
            except httpx.HTTPError:
                return False
            return (
                _sample(r.text, "messaging_client_sent_messages_total", messaging_destination_name=topic) == 5
            )

        await wait_until(sent, timeout=60, what="5 sent on the relay's metrics port")
    finally:
        relay.terminate(timeout=10)


def _sample(text: str, name: str, **labels: str) -> float:
    return sum(
        s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
    )


async def test_refused_and_dead_lettered_rows_are_counted(
    engine: AsyncEngine,
    sessions: async_sessionmaker[AsyncSession],
    writer: OutboxWriter,
    topic: str,
    bootstrap: str,
) -> None:
    setup_metrics("outbox-tests")
    huge = Event(topic=topic, type=f"{topic}.changed", aggregate_id="big", data={"blob": "x" * 300_000})
    async with sessions() as session, session.begin():
        await writer.add(session, huge)
    relay = Relay(
        engine,
        RelaySettings(
            bootstrap=bootstrap, max_message_bytes=100_000, max_attempts=3, row_backoff_initial_s=0.05
        ),
        name=f"r-{uuid.uuid4().hex[:6]}",
    )
    await relay.start()
    try:

        async def dead() -> bool:
            await relay.publish_batch_with_retries()
            return (await read_backlog(engine)).dead == 1

        await wait_until(dead, timeout=30, what="the huge row dead-lettered")
    finally:
        await relay.close()
    by_relay = {"outbox_relay_name": relay.name, "messaging_destination_name": topic}
    assert (
        scrape("outbox_relay_publish_failures_total", **by_relay, error_type="MessageSizeTooLargeError") == 3
    )
    assert scrape("outbox_relay_dead_lettered_total", **by_relay) == 1
    assert scrape("messaging_client_sent_messages_total", messaging_destination_name=topic) == 0
