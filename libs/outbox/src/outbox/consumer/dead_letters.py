"""Publishing a record the consumer gives up on to its dead-letter topic, with why and where from."""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import UTC, datetime

from aiokafka import AIOKafkaProducer, ConsumerRecord
from aiokafka.errors import KafkaError

from outbox.kafka import topic_prefix

log = logging.getLogger("outbox.consumer")

# Set on a record `outbox dlq redrive` republishes: the consumer then warns when it turns out stale.
REDRIVE_HEADER = "outbox_redrive"


def dead_letter_topic(group: str, prefix: str | None = None) -> str:
    """The one rule for a consumer group's dead-letter topic (wire name): `<prefix><group>.dlq`."""
    return (topic_prefix() if prefix is None else prefix) + f"{group}.dlq"


class DeadLetterSender:
    def __init__(
        self, producer: AIOKafkaProducer, topic: str, consumer: str, *, give_up_after_s: float = 60.0
    ):
        self.producer = producer
        self.topic = topic
        self.consumer = consumer
        self.give_up_after_s = give_up_after_s

    async def send(self, record: ConsumerRecord[bytes, bytes], reason: str, *, attempts: int) -> None:
        """Publish and wait for the ack: called before the offset commit, so a dead letter is never lost
        (at worst written twice). Raises after `give_up_after_s` of broker failures (the batch is retried)."""
        headers = [(k, v) for k, v in (record.headers or ()) if not k.startswith("dlq_")]
        headers += [
            ("dlq_reason", reason.encode()[:4000]),
            ("dlq_consumer", self.consumer.encode()),
            ("dlq_original_topic", record.topic.encode()),
            ("dlq_original_partition", str(record.partition).encode()),
            ("dlq_original_offset", str(record.offset).encode()),
            ("dlq_attempts", str(attempts).encode()),
            ("dlq_time", datetime.now(UTC).isoformat().encode()),
        ]
        started = time.monotonic()
        while True:
            try:
                await (
                    await self.producer.send(self.topic, value=record.value, key=record.key, headers=headers)
                )
                break
            except KafkaError as exc:
                if time.monotonic() - started > self.give_up_after_s:
                    raise
                log.warning("consumer %s: dead-letter publish failed (%s); retrying", self.consumer, exc)
                await asyncio.sleep(0.5)
        log.warning(
            "consumer %s: dead-lettered %s[%d]@%d to %s: %s",
            self.consumer,
            record.topic,
            record.partition,
            record.offset,
            self.topic,
            reason,
        )
