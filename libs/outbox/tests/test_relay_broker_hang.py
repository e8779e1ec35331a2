"""The relay while the broker's link is black-holed: a claim (an open transaction holding row locks) never
waits on the broker for longer than the ack deadline, on the serial and the claim-ahead paths alike.

The broker is a dedicated one behind a TCP proxy that swallows every byte once cut ("blackhole"): each
request hangs until the client's own timeout (10 s to create a topic, 15 s to start a producer). How long
the relay's transactions stay open is read from PostgreSQL itself (pg_stat_activity.xact_start of the
relay's own connections), sampled while the broker hangs.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import time
import uuid
import warnings
from collections.abc import AsyncIterator, Iterator, Sequence
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.errors import (
    ClusterAuthorizationFailedError,
    KafkaConnectionError,
    KafkaTimeoutError,
    OutOfOrderSequenceNumber,
    SaslAuthenticationFailed,
    UnknownError,
)
from aiokafka.producer.message_accumulator import BatchBuilder
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine

from libs.outbox.tests.relay_support import POISON, scalar, versions_by_key, wait_for, write
from outbox import OutboxWriter, Relay, RelaySettings
from outbox.kafka import ensure_topics, refuses_idempotence, start_producer
from outbox.relay.failures import PublishTimeout
from outbox.relay.publisher import BatchPublisher, Outbound
from outbox.testing import read_topic, wire
from testsupport.broker import BrokerBehindProxy

pytestmark = pytest.mark.usefixtures("clean")

ACK_TIMEOUT_S = 1.0
# The claim itself, the marks and the commit take milliseconds; the rest of the bound is the ack deadline.
CLAIM_BOUND_S = ACK_TIMEOUT_S + 1.5
HANG_WINDOW_S = 12.0  # longer than one topic creation (10 s) against the black hole
START_WINDOW_S = 20.0  # longer than a producer's stop (1 s), backoff and failed start (15 s)


@pytest.fixture
def broker() -> Iterator[BrokerBehindProxy]:
    b = BrokerBehindProxy().start()
    try:
        yield b
    finally:
        b.stop()


@pytest.fixture
def relay_app() -> str:
    return f"relay-{uuid.uuid4().hex[:8]}"


@pytest.fixture
async def relay_engine(database_url: str, relay_app: str) -> AsyncIterator[AsyncEngine]:
    """The relay's own engine, its connections named so pg_stat_activity tells them apart."""
    engine = create_async_engine(database_url, pool_size=4, connect_args={"application_name": relay_app})
    yield engine
    await engine.dispose()


@contextlib.contextmanager
def unclosed_producers() -> Iterator[list[str]]:
    """Collects aiokafka's `Unclosed AIOKafkaProducer` warnings (raised when one is garbage-collected)."""
    found: list[str] = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            yield found
        finally:
            gc.collect()
            found.extend(str(w.message) for w in caught if "Unclosed AIOKafkaProducer" in str(w.message))


async def longest_claim(engine: AsyncEngine, relay_app: str, seconds: float) -> float:
    """The longest a transaction of the relay's stayed open (seconds) while sampling for `seconds`."""
    longest = 0.0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        age = await scalar(
            engine,
            "SELECT coalesce(max(extract(epoch FROM clock_timestamp() - xact_start)), 0)::float8 "
            "FROM pg_stat_activity WHERE application_name = :name AND xact_start IS NOT NULL",
            name=relay_app,
        )
        longest = max(longest, float(age))
        await asyncio.sleep(0.05)
    return longest


def settings(bootstrap: str, *, claim_ahead: bool) -> RelaySettings:
    return RelaySettings(
        bootstrap=bootstrap,
        claim_ahead=claim_ahead,
        batch_size=2,  # a backlog of a few rows engages the claim-ahead pipeline
        ack_timeout_s=ACK_TIMEOUT_S,
        outage_backoff_max_s=0.5,
        idle_poll_max_s=0.05,
    )


async def published(engine: AsyncEngine, n: int) -> bool:
    return bool(await scalar(engine, "SELECT count(*) = :n FROM outbox WHERE published_at IS NOT NULL", n=n))


async def run_relay(relay: Relay) -> asyncio.Task[None]:
    task = asyncio.create_task(relay.run())
    await asyncio.sleep(0)
    return task


async def stop_relay(relay: Relay, task: asyncio.Task[None]) -> None:
    relay.stop()
    await asyncio.wait_for(task, 60)


@pytest.mark.slow
@pytest.mark.parametrize("claim_ahead", [False, True], ids=["serial", "claim_ahead"])
async def test_a_new_topic_while_the_broker_hangs_is_created_outside_any_claim(
    engine: AsyncEngine,
    relay_engine: AsyncEngine,
    relay_app: str,
    sessions: async_sessionmaker[AsyncSession],
    writer: OutboxWriter,
    topic: str,
    broker: BrokerBehindProxy,
    claim_ahead: bool,
) -> None:
    # Rows for a topic this relay has not created yet arrive while the link is black-holed: creating it
    # hangs 10 s per attempt, and that must happen with no claim open.
    fresh = f"{topic}.fresh"
    relay = Relay(relay_engine, settings(broker.bootstrap, claim_ahead=claim_ahead))
    with unclosed_producers() as unclosed:
        task = await run_relay(relay)
        try:
            await write(sessions, writer, topic, ("x", 1, False))
            await wait_for(lambda: published(engine, 1))
            broker.proxy.cut("blackhole")
            # The new topic's rows first: they are the ones the next claim takes.
            await write(sessions, writer, fresh, ("y", 1, False), ("y", 2, False), ("y", 3, False))
            await write(sessions, writer, topic, ("x", 2, False), ("x", 3, False))
            longest = await longest_claim(engine, relay_app, HANG_WINDOW_S)
            print(f"longest claim while the broker hangs: {longest:.2f}s over {HANG_WINDOW_S}s")
            assert await scalar(engine, "SELECT count(*) FROM outbox WHERE published_at IS NULL") == 5
            assert relay.stats.outages >= 1
            broker.proxy.restore()
            await wait_for(lambda: published(engine, 6), timeout=60)
        finally:
            await stop_relay(relay, task)
    assert longest < CLAIM_BOUND_S, f"a claim stayed open {longest:.1f}s while the broker hung"
    found = versions_by_key(await read_topic(broker.bootstrap, wire(topic), expect=3, timeout=20))
    assert found[b"x"] == [1, 2, 3]
    found = versions_by_key(await read_topic(broker.bootstrap, wire(fresh), expect=3, timeout=20))
    assert found[b"y"] == [1, 2, 3]
    assert await scalar(engine, "SELECT count(*) FROM outbox WHERE attempts > 0 OR dead_at IS NOT NULL") == 0
    assert unclosed == []


class FaultThenHang(BatchPublisher):
    """The first record batch holding the poison row gets a producer fault (the producer must be replaced)
    and, at that moment, the broker's link goes silent: the replacement producer cannot start."""

    def __init__(self, *args: Any, relay: ProducerFaultRelay, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.relay = relay

    async def submit(
        self, topic: str, partition: int, builder: BatchBuilder, batch: Sequence[Outbound]
    ) -> asyncio.Future[object]:
        if not self.relay.faulted and any(POISON in item.value for item in batch):
            self.relay.faulted = True
            self.relay.proxy.cut("blackhole")
            future: asyncio.Future[object] = asyncio.get_running_loop().create_future()
            future.set_exception(OutOfOrderSequenceNumber())
            return future
        return await super().submit(topic, partition, builder, batch)


class ProducerFaultRelay(Relay):
    def __init__(self, *args: Any, proxy: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.proxy = proxy
        self.faulted = False

    def make_publisher(self, producer: AIOKafkaProducer) -> BatchPublisher:
        return FaultThenHang(
            producer,
            max_request_size=self.settings.max_message_bytes,
            ack_timeout_s=self.settings.ack_timeout_s,
            relay=self,
        )


@pytest.mark.slow
@pytest.mark.parametrize("claim_ahead", [False, True], ids=["serial", "claim_ahead"])
async def test_a_producer_replaced_while_the_broker_hangs_is_started_outside_any_claim(
    engine: AsyncEngine,
    relay_engine: AsyncEngine,
    relay_app: str,
    sessions: async_sessionmaker[AsyncSession],
    writer: OutboxWriter,
    topic: str,
    broker: BrokerBehindProxy,
    claim_ahead: bool,
) -> None:
    # A producer fault replaces the producer just as the link goes silent: starting the new one hangs
    # (15 s per attempt), and that must happen before a claim, never inside one.
    relay = ProducerFaultRelay(
        relay_engine, settings(broker.bootstrap, claim_ahead=claim_ahead), proxy=broker.proxy
    )
    with unclosed_producers() as unclosed:
        task = await run_relay(relay)
        try:
            await write(sessions, writer, topic, ("x", 1, False))
            await wait_for(lambda: published(engine, 1))
            await write(
                sessions, writer, topic, *[(agg, v, agg == "x" and v == 2) for v in (2, 3, 4) for agg in "xy"]
            )
            await wait_for(lambda: asyncio.sleep(0, relay.faulted))
            longest = await longest_claim(engine, relay_app, START_WINDOW_S)
            print(f"longest claim while the broker hangs: {longest:.2f}s over {START_WINDOW_S}s")
            assert relay.stats.producer_resets >= 1
            assert relay.stats.outages >= 2  # the fault, then a replacement that could not start
            broker.proxy.restore()
            await wait_for(lambda: published(engine, 7), timeout=60)
        finally:
            await stop_relay(relay, task)
    assert longest < CLAIM_BOUND_S, f"a claim stayed open {longest:.1f}s while the broker hung"
    found = versions_by_key(await read_topic(broker.bootstrap, wire(topic), expect=7, timeout=20))
    # y v2 may have been written before the fault and again after it (at least once); never out of order.
    assert found[b"x"] == [1, 2, 3, 4]
    assert sorted(set(found[b"y"])) == [2, 3, 4] and found[b"y"] == sorted(found[b"y"])
    assert await scalar(engine, "SELECT count(*) FROM outbox WHERE attempts > 0 OR dead_at IS NOT NULL") == 0
    assert unclosed == []


async def test_the_ack_deadline_covers_the_wait_for_a_topics_partitions(
    broker: BrokerBehindProxy, topic: str
) -> None:
    # The topic exists, but the producer has never asked for its partitions and the link is now silent:
    # the metadata request hangs until the producer's request timeout (15 s) unless the deadline covers it.
    name = wire(topic)
    producer = await start_producer(broker.bootstrap, idempotent=False, request_timeout_ms=15_000)
    try:
        await ensure_topics(broker.bootstrap, [name])  # after the producer's start: not in its metadata
        broker.proxy.cut("blackhole")
        publisher = BatchPublisher(producer, max_request_size=1_048_576, ack_timeout_s=ACK_TIMEOUT_S)
        item = Outbound(topic=name, key=b"k", value=b"{}", headers=[])
        started = time.monotonic()
        with contextlib.suppress(Exception):
            await publisher.publish([item])
        elapsed = time.monotonic() - started
    finally:
        broker.proxy.restore()
        await producer.stop()
    print(f"publish returned after {elapsed:.2f}s")
    assert elapsed < CLAIM_BOUND_S, f"publish took {elapsed:.1f}s"
    assert isinstance(item.error, PublishTimeout) and not item.acked


async def test_a_producer_that_fails_to_start_is_closed(broker: BrokerBehindProxy) -> None:
    broker.proxy.cut("blackhole")
    with unclosed_producers() as unclosed:
        started = time.monotonic()
        with pytest.raises(Exception):  # noqa: B017 - whichever KafkaError the silent link produces
            await start_producer(broker.bootstrap, idempotent=True, request_timeout_ms=2_000)
        elapsed = time.monotonic() - started
    print(f"start failed after {elapsed:.2f}s")
    assert unclosed == []
    # An unreachable broker is not a broker refusing idempotence: no second, non-idempotent attempt.
    assert elapsed < 1.5 * 2.0


async def test_a_broker_that_refused_the_idempotent_producer_is_not_asked_again(
    engine: AsyncEngine, bootstrap: str, caplog: pytest.LogCaptureFixture
) -> None:
    # The local broker answers InitProducerId with an error: the relay falls back once, and its later
    # producers (after a producer fault, say) start without idempotence straight away.
    relay = Relay(engine, RelaySettings(bootstrap=bootstrap))
    with caplog.at_level(logging.WARNING):
        for _ in range(3):
            await relay.start()
            await relay.close()
    refusals = [r for r in caplog.records if "refused the idempotent producer" in r.getMessage()]
    init_errors = [r for r in caplog.records if "InitProducerId" in r.getMessage()]
    assert len(refusals) == 1, [r.getMessage() for r in refusals]
    assert len(init_errors) <= 1


def test_only_a_brokers_answer_refuses_idempotence() -> None:
    wrapped = KafkaConnectionError("refused: not authorized for this cluster operation")
    wrapped.__cause__ = ClusterAuthorizationFailedError()
    assert refuses_idempotence(UnknownError())  # Tansu's answer to InitProducerId
    assert refuses_idempotence(ClusterAuthorizationFailedError())
    assert refuses_idempotence(wrapped)
    assert not refuses_idempotence(KafkaConnectionError("Unable to bootstrap"))  # a silent broker
    assert not refuses_idempotence(KafkaTimeoutError())
    assert not refuses_idempotence(SaslAuthenticationFailed())
