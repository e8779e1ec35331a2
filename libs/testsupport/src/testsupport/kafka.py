"""Kafka helpers for service tests (real broker): publish an event by hand in the relay's envelope, and
wait until a consumer group has committed past given records (applied, deduplicated or dropped alike)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from aiokafka import TopicPartition

from outbox.envelope import encode_headers, encode_value
from outbox.kafka import bootstrap_from_env, topic_prefix
from outbox.kafka.clients import KafkaAdmin, KafkaProducer
from testsupport.processes import wait_until


@dataclass(frozen=True, slots=True)
class Sent:
    event_id: uuid.UUID
    topic: str
    partition: int
    offset: int


async def publish(
    topic: str,
    event_type: str,
    key: str,
    data: dict[str, Any],
    *,
    version: int | None = None,
    event_id: uuid.UUID | None = None,
    source: str = "test",
) -> Sent:
    """Publish one event (a duplicate when `event_id` repeats one already delivered) to the logical
    `topic` as the relay would: under OUTBOX_TOPIC_PREFIX. `Sent.topic` is the wire topic."""
    event_id = event_id or uuid.uuid4()
    topic = topic_prefix() + topic
    producer = KafkaProducer(bootstrap_servers=bootstrap_from_env(), acks="all")
    await producer.start()
    try:
        headers = encode_headers(
            event_id=event_id,
            event_type=event_type,
            source=source,
            subject=key,
            time=datetime.now(UTC),
            version=version,
            trace_context={},
        )
        meta = await producer.send_and_wait(topic, encode_value(data), key=key.encode(), headers=headers)
    finally:
        await producer.stop()
    return Sent(event_id=event_id, topic=topic, partition=meta.partition, offset=meta.offset)


async def committed_offset(group: str, topic: str, partition: int) -> int:
    """The group's committed offset of one partition, -1 when none (explicit partitions: a broker quirk)."""
    admin = KafkaAdmin(bootstrap_servers=bootstrap_from_env())
    await admin.start()
    try:
        tp = TopicPartition(topic, partition)
        meta = (await admin.list_consumer_group_offsets(group, partitions=[tp])).get(tp)
        return meta.offset if meta is not None else -1
    finally:
        await admin.close()


async def consumed(group: str, sent: list[Sent], *, timeout: float = 30.0) -> None:
    """Wait until `group` committed past every record in `sent`."""
    last: dict[tuple[str, int], int] = {}
    for s in sent:
        last[(s.topic, s.partition)] = max(last.get((s.topic, s.partition), -1), s.offset)
    for (topic, partition), offset in last.items():

        async def probe(t: str = topic, p: int = partition, o: int = offset) -> bool:
            return await committed_offset(group, t, p) > o

        await wait_until(probe, timeout=timeout, what=f"{group} committed past {topic}[{partition}]@{offset}")
