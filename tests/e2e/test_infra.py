"""Smoke tests of the e2e infrastructure itself, with real clients: the back end's PostgreSQL, Redis and
broker; a broker behind a TCP proxy that is cut and restored; a broker on s3 storage SIGKILLed and
restarted with its topics, records and committed offsets intact."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable

import psycopg
import pytest
import redis.asyncio as aioredis
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError

from tests.e2e.infra import Infra
from testsupport import wait_until
from testsupport.broker import BrokerBehindProxy, TansuBroker, kafka_api_versions_ok

# Small timeouts: a dead link must show within seconds (the broker holds JoinGroup session_timeout/2).
CLIENT = {"request_timeout_ms": 4000, "metadata_max_age_ms": 1000, "retry_backoff_ms": 100}
GROUP = {"session_timeout_ms": 6000, "heartbeat_interval_ms": 500, "request_timeout_ms": 8000}


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


async def create_topic(bootstrap: str, topic: str, partitions: int = 1) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=10000)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, partitions, 1)])
    finally:
        await admin.close()


async def produce(bootstrap: str, topic: str, values: list[bytes], **options: object) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", **{**CLIENT, **options})
    await producer.start()
    try:
        for v in values:
            await producer.send_and_wait(topic, v, key=b"k")
    finally:
        await producer.stop()


async def read_all(bootstrap: str, topic: str, expect: int, timeout: float = 20.0) -> list[bytes]:
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap, group_id=None, auto_offset_reset="earliest", **CLIENT
    )
    await consumer.start()
    got: list[bytes] = []
    try:
        deadline = time.monotonic() + timeout
        while len(got) < expect and time.monotonic() < deadline:
            for records in (await consumer.getmany(timeout_ms=200)).values():
                got.extend(r.value for r in records if r.value is not None)
    finally:
        await consumer.stop()
    return got


# -- the back end ---------------------------------------------------------------------------------------------
async def test_backend_postgres_redis_kafka(infra: Infra) -> None:
    name = f"e2e_smoke_{uuid.uuid4().hex[:6]}"
    infra.create_database(name)
    try:
        async with await psycopg.AsyncConnection.connect(infra.pg_dsn(name)) as conn:
            row = await (await conn.execute("SELECT current_database(), 1 + 1")).fetchone()
        assert row == (name, 2)
    finally:
        infra.drop_database(name)

    r = aioredis.from_url(infra.redis_url)
    key = unique("e2e-smoke")
    try:
        await r.set(key, b"1", ex=30)
        assert await r.get(key) == b"1"
    finally:
        await r.delete(key)
        await r.aclose()

    topic = unique("e2e.smoke")
    await create_topic(infra.kafka_bootstrap, topic)
    await produce(infra.kafka_bootstrap, topic, [b"a", b"b"])
    assert await read_all(infra.kafka_bootstrap, topic, expect=2) == [b"a", b"b"]


# -- the proxy ------------------------------------------------------------------------------------------------
async def test_clients_go_through_the_proxy(broker_behind_proxy: BrokerBehindProxy) -> None:
    b = broker_behind_proxy
    topic = unique("e2e.proxy")
    await create_topic(b.bootstrap, topic)
    before = b.proxy.stats.bytes_up
    await produce(b.bootstrap, topic, [b"through"])
    assert await read_all(b.bootstrap, topic, expect=1) == [b"through"]
    assert b.proxy.stats.bytes_up > before
    # The broker advertises the proxy: the metadata every client follows names the proxy's port.
    admin = AIOKafkaAdminClient(bootstrap_servers=b.bootstrap)
    await admin.start()
    try:
        brokers = {(m["host"], m["port"]) for m in (await admin.describe_cluster())["brokers"]}
    finally:
        await admin.close()
    assert brokers == {("127.0.0.1", b.proxy.listen_port)}


@pytest.mark.parametrize("mode", ["refuse", "blackhole"])
async def test_cut_fails_sends_and_restore_recovers(
    broker_behind_proxy: BrokerBehindProxy, mode: str
) -> None:
    b = broker_behind_proxy
    topic = unique("e2e.cut")
    await create_topic(b.bootstrap, topic)
    producer = AIOKafkaProducer(bootstrap_servers=b.bootstrap, acks="all", **CLIENT)
    await producer.start()
    try:
        await producer.send_and_wait(topic, b"before", key=b"k")

        b.proxy.cut(mode)  # type: ignore[arg-type]
        assert not kafka_api_versions_ok("127.0.0.1", b.proxy.listen_port, timeout=0.5)
        started = time.monotonic()
        with pytest.raises((KafkaError, TimeoutError)):
            await asyncio.wait_for(producer.send_and_wait(topic, b"during", key=b"k"), 15)
        assert time.monotonic() - started < 15

        b.proxy.restore()

        async def sent_after_restore() -> bool:
            try:
                await asyncio.wait_for(producer.send_and_wait(topic, b"after", key=b"k"), 5)
                return True
            except (KafkaError, TimeoutError):
                return False

        await wait_until(sent_after_restore, timeout=30, interval=0.2, what="a send after restore")
    finally:
        await producer.stop()
    values = await read_all(b.bootstrap, topic, expect=2)
    assert values[0] == b"before" and b"after" in values
    assert b.proxy.stats.cuts == 1


async def test_latency_slows_round_trips(broker_behind_proxy: BrokerBehindProxy) -> None:
    b = broker_behind_proxy
    topic = unique("e2e.latency")
    await create_topic(b.bootstrap, topic)
    producer = AIOKafkaProducer(bootstrap_servers=b.bootstrap, acks="all", **CLIENT)
    await producer.start()
    try:
        await producer.send_and_wait(topic, b"warm", key=b"k")
        b.proxy.set_latency(0.15)
        started = time.monotonic()
        await producer.send_and_wait(topic, b"slow", key=b"k")
        slow = time.monotonic() - started
        b.proxy.set_latency(0.0)
    finally:
        await producer.stop()
    assert slow >= 0.3, f"a produce round trip took {slow:.3f}s through 2 x 0.15 s of latency"


# -- the restartable broker -----------------------------------------------------------------------------------
@pytest.mark.slow
async def test_sigkill_restart_keeps_topics_records_and_offsets(restartable_broker: TansuBroker) -> None:
    broker = restartable_broker
    topic, group = unique("e2e.durable"), unique("e2e-group")
    await create_topic(broker.bootstrap, topic, partitions=3)
    values = [f"m{i}".encode() for i in range(30)]
    producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap, acks="all", **CLIENT)
    await producer.start()
    try:
        partitions = {(await producer.send_and_wait(topic, v, key=b"k")).partition for v in values}
    finally:
        await producer.stop()
    assert len(partitions) == 1  # one key, one partition
    tp = TopicPartition(topic, partitions.pop())

    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=broker.bootstrap,
        group_id=group,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        **GROUP,
    )
    await consumer.start()
    try:
        seen: list[bytes] = []
        deadline = time.monotonic() + 30
        while len(seen) < 30 and time.monotonic() < deadline:
            for records in (await consumer.getmany(timeout_ms=200)).values():
                seen.extend(r.value for r in records if r.value is not None)
        assert seen == values
        await consumer.commit({tp: 20})
    finally:
        await consumer.stop()

    pid_before = broker.pid
    broker.restart(hard=True)  # SIGKILL, then the same ports and the same s3 bucket
    assert broker.pid != pid_before and broker.starts == 2

    admin = AIOKafkaAdminClient(bootstrap_servers=broker.bootstrap, request_timeout_ms=10000)
    await admin.start()
    try:

        async def topic_back() -> bool:
            try:
                return topic in await admin.list_topics()
            except KafkaError:
                return False

        await wait_until(topic_back, timeout=30, interval=0.2, what="the topic after restart")
        described = await admin.describe_topics([topic])
        assert len(described[0]["partitions"]) == 3
        committed = await admin.list_consumer_group_offsets(group, partitions=[tp])
    finally:
        await admin.close()
    assert committed[tp].offset == 20
    assert await read_all(broker.bootstrap, topic, expect=30) == values

    # A member of the same group resumes after the committed offset.
    resumed = AIOKafkaConsumer(
        bootstrap_servers=broker.bootstrap, group_id=group, enable_auto_commit=False, **GROUP
    )
    await resumed.start()
    try:
        resumed.assign([tp])
        assert await resumed.committed(tp) == 20
        got: list[bytes] = []
        deadline = time.monotonic() + 20
        while len(got) < 10 and time.monotonic() < deadline:
            for records in (await resumed.getmany(timeout_ms=200)).values():
                got.extend(r.value for r in records if r.value is not None)
        assert got == values[20:]
    finally:
        await resumed.stop()


@pytest.mark.slow
async def test_durable_broker_behind_proxy_restarts_under_its_clients(
    make_broker: Callable[..., BrokerBehindProxy],
) -> None:
    """The chaos set-up: clients on the proxy while the s3-backed broker behind it is SIGKILLed and restarted."""
    b = make_broker(durable=True)
    topic = unique("e2e.chaos")
    await create_topic(b.bootstrap, topic)
    producer = AIOKafkaProducer(bootstrap_servers=b.bootstrap, acks="all", **CLIENT)
    await producer.start()
    try:
        await producer.send_and_wait(topic, b"before", key=b"k")
        b.broker.restart(hard=True)

        async def sent_after_restart() -> bool:
            try:
                await asyncio.wait_for(producer.send_and_wait(topic, b"after", key=b"k"), 5)
                return True
            except (KafkaError, TimeoutError):
                return False

        await wait_until(sent_after_restart, timeout=30, interval=0.2, what="a send after the broker restart")
    finally:
        await producer.stop()
    values = await read_all(b.bootstrap, topic, expect=2)
    assert values[0] == b"before" and b"after" in values
