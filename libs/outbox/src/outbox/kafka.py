"""Kafka plumbing shared by the relay and the consumer: bootstrap address, topic creation, producers.

Code only ever sees a bootstrap address; nothing here knows which broker implementation answers. The
clients are the library's (`kafka_clients.py`): each carries the KAFKA_SECURITY_* / KAFKA_SASL_* /
KAFKA_SSL_* settings and explains a refused start.
"""

from __future__ import annotations

import contextlib
import logging
import os

from aiokafka.admin import NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import KafkaError, TopicAlreadyExistsError

from outbox.kafka_clients import KafkaAdmin as AIOKafkaAdminClient
from outbox.kafka_clients import KafkaProducer as AIOKafkaProducer

log = logging.getLogger("outbox.kafka")

DEFAULT_BOOTSTRAP = "127.0.0.1:9092"


def bootstrap_from_env() -> str:
    return os.environ.get("KAFKA_BOOTSTRAP", DEFAULT_BOOTSTRAP)


def topic_prefix() -> str:
    """`OUTBOX_TOPIC_PREFIX`: prepended to every topic on the wire (environments, test isolation).

    Writers and handlers keep using logical names (`console.document`); the relay publishes to, and the
    consumer subscribes to, the prefixed name, and events reach handlers with the logical topic.
    """
    return os.environ.get("OUTBOX_TOPIC_PREFIX", "")


def default_partitions() -> int:
    return int(os.environ.get("OUTBOX_TOPIC_PARTITIONS", "8"))


async def replication_factor(admin: AIOKafkaAdminClient) -> int:
    """`OUTBOX_TOPIC_REPLICATION` when set; else the cluster's own `default.replication.factor`.

    aiokafka's CreateTopics (v3) cannot say "broker default" (-1), so the value is read from a broker's
    configuration. A broker that does not report it gets min(3, brokers): never an explicit 1 on a
    cluster, which would make `acks=all` protect nothing."""
    configured = os.environ.get("OUTBOX_TOPIC_REPLICATION", "")
    if configured:
        return int(configured)
    cluster = await admin.describe_cluster()
    brokers = cluster["brokers"]
    with contextlib.suppress(KafkaError, KeyError, IndexError, ValueError, TypeError):
        [response] = await admin.describe_configs(
            [ConfigResource(ConfigResourceType.BROKER, str(brokers[0]["node_id"]))]
        )
        for resource in response.resources:
            for entry in resource[4]:
                if entry[0] == "default.replication.factor" and entry[1]:
                    return int(entry[1])
    return max(1, min(3, len(brokers)))


async def ensure_topics(bootstrap: str, topics: list[str], *, partitions: int | None = None) -> None:
    """Create missing topics (idempotent) with the cluster's replication factor (see replication_factor)."""
    if not topics:
        return
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=10000)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        missing = [t for t in dict.fromkeys(topics) if t not in existing]
        if not missing:
            return
        replication = await replication_factor(admin)
        with contextlib.suppress(TopicAlreadyExistsError):
            await admin.create_topics(
                [NewTopic(t, partitions or default_partitions(), replication) for t in missing]
            )
        log.info("created topics %s", ", ".join(missing))
    finally:
        await admin.close()


async def start_producer(bootstrap: str, *, idempotent: bool = True, **options: object) -> AIOKafkaProducer:
    """Start an acks=all producer; idempotent when the broker supports it, with a warning when it does not."""
    if idempotent:
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap, enable_idempotence=True, **options)
        try:
            await producer.start()
            return producer
        except KafkaError as exc:
            await producer.stop()
            log.warning(
                "broker refused the idempotent producer (%s): falling back to acks=all without idempotence; "
                "duplicates on retry are absorbed by the consumers' inbox",
                exc,
            )
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", **options)
    await producer.start()
    return producer
