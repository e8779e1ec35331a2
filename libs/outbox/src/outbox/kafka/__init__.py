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
from aiokafka.errors import (
    BrokerResponseError,
    ClusterAuthorizationFailedError,
    KafkaError,
    SaslAuthenticationFailed,
    TopicAlreadyExistsError,
)

from outbox.kafka.clients import KafkaAdmin as AIOKafkaAdminClient
from outbox.kafka.clients import KafkaProducer as AIOKafkaProducer

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


class Producers:
    """Starts acks=all producers for one process: idempotent until the broker refuses one, then never again.

    The refusal is remembered so that a replacement producer (after a producer fault) does not repeat the
    refused start. A producer whose start fails is closed (aiokafka warns about every unclosed one)."""

    def __init__(self, bootstrap: str, *, idempotent: bool = True, **options: object) -> None:
        self.bootstrap = bootstrap
        self.idempotent = idempotent
        self.options = options

    async def start(self) -> AIOKafkaProducer:
        if self.idempotent:
            try:
                return await _started(
                    AIOKafkaProducer(
                        bootstrap_servers=self.bootstrap, enable_idempotence=True, **self.options
                    )
                )
            except KafkaError as exc:
                if not refuses_idempotence(exc):
                    raise  # falling back would only wait out a second start against the same silence
                self.idempotent = False
                log.warning(
                    "broker %s refused the idempotent producer (%s: %s): falling back to acks=all without "
                    "idempotence for this process; duplicates on retry are absorbed by the consumers' inbox",
                    self.bootstrap,
                    type(exc).__name__,
                    exc,
                )
        return await _started(AIOKafkaProducer(bootstrap_servers=self.bootstrap, acks="all", **self.options))


def refuses_idempotence(exc: BaseException) -> bool:
    """The broker answered the idempotent producer's start with an error: Tansu answers InitProducerId with
    UnknownError, a cluster may deny IDEMPOTENT_WRITE (ClusterAuthorizationFailed, which a client wrapping
    its start errors keeps as the cause). An unreachable or silent broker raises a connection or timeout
    error instead, and a failed authentication is the client's credentials: neither is a refusal."""
    if isinstance(exc, SaslAuthenticationFailed):
        return False
    return isinstance(exc, BrokerResponseError) or isinstance(exc.__cause__, ClusterAuthorizationFailedError)


async def _started(producer: AIOKafkaProducer) -> AIOKafkaProducer:
    try:
        await producer.start()
    except BaseException:
        with contextlib.suppress(Exception):
            await producer.stop()
        raise
    return producer


async def start_producer(bootstrap: str, *, idempotent: bool = True, **options: object) -> AIOKafkaProducer:
    """Start an acks=all producer; idempotent when the broker supports it, with a warning when it does not."""
    return await Producers(bootstrap, idempotent=idempotent, **options).start()
