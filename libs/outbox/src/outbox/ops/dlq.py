"""Consumer dead letters: list, show and redrive the records on `<group>.dlq`.

A dead letter keeps the original key, value and headers plus `dlq_reason`, `dlq_consumer`,
`dlq_original_topic/partition/offset`, `dlq_attempts` and `dlq_time` (consumer.py). It is named by its
place on the dead-letter topic, `partition:offset`. Redrive republishes the original record (without the
`dlq_*` headers) to its original topic, where the group judges it like any other delivery: a record redriven
twice is a duplicate its inbox absorbs, and one whose aggregate had a later version applied meanwhile is
stale (the version guard keeps the newer state; the consumer logs a warning naming both versions). Reading
never joins a group and never commits an offset.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition

from outbox.consumer.dead_letters import REDRIVE_HEADER, dead_letter_topic
from outbox.kafka import start_producer
from outbox.kafka.clients import KafkaConsumer

__all__ = [
    "REDRIVE_HEADER",
    "DeadLetter",
    "dead_letter_topic",
    "read_dead_letters",
    "redrive",
    "run",
    "select",
]


@dataclass(frozen=True, slots=True)
class DeadLetter:
    id: str  # partition:offset on the dead-letter topic
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes]] = field(default_factory=list)

    def header(self, name: str) -> str | None:
        for key, value in self.headers:
            if key == name:
                return value.decode(errors="replace")
        return None

    @property
    def original_topic(self) -> str | None:
        return self.header("dlq_original_topic")

    def summary(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "event_id": self.header("ce_id"),
            "type": self.header("ce_type"),
            "subject": self.header("ce_subject"),
            "original": f"{self.original_topic}[{self.header('dlq_original_partition')}]"
            f"@{self.header('dlq_original_offset')}",
            "reason": self.header("dlq_reason"),
            "attempts": self.header("dlq_attempts"),
            "dead_lettered_at": self.header("dlq_time"),
        }

    def detail(self) -> dict[str, Any]:
        value = (self.value or b"").decode(errors="replace")
        return {
            **self.summary(),
            "key": (self.key or b"").decode(errors="replace"),
            "headers": {k: v.decode(errors="replace") for k, v in self.headers},
            "value": value if len(value) <= 4000 else value[:4000] + "…",
        }


async def read_dead_letters(bootstrap: str, topic: str, *, timeout_s: float = 15.0) -> list[DeadLetter]:
    """Every record on the dead-letter topic, from the start to the highwater of a fetch."""
    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False, fetch_max_wait_ms=10
    )
    await consumer.start()
    try:
        if topic not in await consumer.topics():
            return []
        partitions = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        letters: list[DeadLetter] = []
        deadline = time.monotonic() + timeout_s
        while True:
            fetched = await consumer.getmany(timeout_ms=100, max_records=500)
            for records in fetched.values():
                letters += [
                    DeadLetter(
                        id=f"{r.partition}:{r.offset}",
                        key=r.key,
                        value=r.value,
                        headers=list(r.headers or ()),
                    )
                    for r in records
                ]
            if await _at_end(consumer, partitions):
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"could not read {topic} to its end within {timeout_s}s")
        return sorted(letters, key=lambda d: tuple(int(x) for x in d.id.split(":")))
    finally:
        await consumer.stop()


async def _at_end(consumer: AIOKafkaConsumer, partitions: Sequence[TopicPartition]) -> bool:
    for tp in partitions:
        highwater = consumer.highwater(tp)
        if highwater is None or await consumer.position(tp) < highwater:
            return False
    return True


def select(letters: Sequence[DeadLetter], ids: Sequence[str] | None) -> list[DeadLetter]:
    if not ids:
        return list(letters)
    wanted = set(ids)
    unknown = wanted - {d.id for d in letters}
    if unknown:
        raise LookupError(f"no dead letter {', '.join(sorted(unknown))} on this topic")
    return [d for d in letters if d.id in wanted]


async def redrive(bootstrap: str, letters: Sequence[DeadLetter]) -> int:
    """Republish each dead letter to its original topic with its original key, value and headers, plus
    `outbox_redrive`: the consumer's inbox remembers a dead-lettered event (so a plain redelivery is a
    duplicate); this header tells it the delivery is an operator's new attempt, judged by the version guard
    like any delivery (stale, and not applied, when a later version of its aggregate was applied)."""
    producer = await start_producer(bootstrap, idempotent=True)
    try:
        futures = []
        for letter in letters:
            topic = letter.original_topic
            if not topic:
                raise ValueError(f"dead letter {letter.id} has no dlq_original_topic header")
            headers = [(k, v) for k, v in letter.headers if not k.startswith("dlq_") and k != REDRIVE_HEADER]
            headers.append((REDRIVE_HEADER, f"{letter.id}@{time.time():.3f}".encode()))
            futures.append(await producer.send(topic, value=letter.value, key=letter.key, headers=headers))
        for future in futures:
            await future
        return len(futures)
    finally:
        await producer.stop()


async def run(
    bootstrap: str, action: str, group: str, ids: Sequence[str] | None, *, yes: bool
) -> dict[str, Any]:
    """The `outbox dlq` command: list | show | redrive (dry run unless `yes`)."""
    topic = dead_letter_topic(group)
    letters = select(await read_dead_letters(bootstrap, topic), ids)
    if action == "list":
        return {"topic": topic, "count": len(letters), "dead_letters": [d.summary() for d in letters]}
    if action == "show":
        return {"topic": topic, "dead_letters": [d.detail() for d in letters]}
    if not yes:
        return {"topic": topic, "would_redrive": [d.summary() for d in letters]}
    return {
        "topic": topic,
        "redriven": await redrive(bootstrap, letters),
        "ids": [d.id for d in letters],
        "note": STALE_NOTE,
    }


STALE_NOTE = (
    "each is judged by the group's version guard like any delivery: one whose aggregate had a later "
    "version applied meanwhile is stale and not applied (the consumer logs it)"
)
