"""`HandlerHarness`: a consumer's handlers through its real apply pipeline, in memory, in milliseconds.

What runs is the production code: the consumer's own record decoding and payload validation
(`IdempotentConsumer.parse`), `ApplyPipeline.process` (the fast path, then on a handler failure the careful
path: savepoints, retries, `Reject`, dead-lettering), the version guard's rule, parking and release. Only the
stores are in memory (`outbox.testing.memory`), the retry backoff is zero, and there is no broker and no
PostgreSQL. So a unit test sees the outcomes, dead letters and emitted events a deployment would.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import cast

from aiokafka import ConsumerRecord
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from outbox.consumer.apply_types import ConsumerStats, RetryPolicy
from outbox.consumer.handlers import Outcome
from outbox.consumer.runner import IdempotentConsumer
from outbox.envelope import Event, ReceivedEvent, encode_headers, encode_value
from outbox.testing.memory import (
    DeadLetter,
    MemoryDeadLetters,
    MemoryInbox,
    MemoryOutbox,
    MemorySession,
    MemoryState,
)

_FROM_HEADS = object()


class HandlerHarness:
    """Feed events to `consumer`'s handlers and read what became of them.

    ```
    harness = HandlerHarness(consumer)
    stats = await harness.deliver(Event(topic="t", type="t.created", aggregate_id="a", version=1, data={}))
    assert harness.outcome(event) is Outcome.APPLIED and not harness.dead_letters
    ```
    Each `deliver` call is one fetched batch. Handlers get `harness.session`: its transactions roll the
    in-memory stores and the emitted events back as PostgreSQL would, and any SQL on it raises `NoDatabase`
    (keep the effect behind something you pass in, or test that part against PostgreSQL). Follow-up events
    from `ctx.emit` land in `emitted` when the consumer has a writer (`IdempotentConsumer(writer=)`), as in
    production; without one, emitting fails as it would there.
    """

    def __init__(self, consumer: IdempotentConsumer, *, source: str = "test") -> None:
        self.consumer = consumer
        self.source = source
        self.stats = ConsumerStats()  # every delivery's counts, summed
        self._state = MemoryState()
        self.inbox = MemoryInbox(consumer.name, self._state)
        self._letters = MemoryDeadLetters(consumer.dead_letter_topic, consumer.settings.topic_prefix)
        s = consumer.settings
        self.pipeline = consumer.pipeline(
            self.inbox,
            self._letters,
            MemoryOutbox(self._state) if consumer.writer is not None else None,
            RetryPolicy(s.max_attempts, 0.0, 0.0),  # the same attempts, no waiting between them
        )
        self.session = MemorySession(self._state)
        self._sessions = cast(async_sessionmaker[AsyncSession], lambda: self.session)
        self._heads: dict[tuple[str, str], int] = {}  # each aggregate's last written version
        self._offsets: dict[str, int] = {}

    # -- what a test reads --------------------------------------------------------------------------------
    @property
    def emitted(self) -> list[Event]:
        """Follow-up events the handlers emitted, in committed transactions only."""
        return list(self._state.emitted)

    @property
    def dead_letters(self) -> list[DeadLetter]:
        return list(self._letters.letters)

    @property
    def parked(self) -> list[ReceivedEvent]:
        """Events waiting for the version they follow (gap-aware handlers), in parking order."""
        return [event for event, _, _ in self._state.parked.values()]

    def outcome(self, event: Event | ReceivedEvent | uuid.UUID) -> Outcome | None:
        """What the inbox recorded for the event (None: never delivered, or released from parking and
        not recorded again yet)."""
        key = event if isinstance(event, uuid.UUID) else event.id
        found = self._state.outcomes.get(key)
        return Outcome(found) if found is not None else None

    # -- what a test does ---------------------------------------------------------------------------------
    def record(
        self,
        event: Event,
        *,
        prev_version: int | object | None = _FROM_HEADS,
        value: bytes | None = None,
        partition: int = 0,
    ) -> ConsumerRecord[bytes, bytes]:
        """The Kafka record the writer and the relay would make of `event` (headers, key, JSON value with the
        version added), its previous version taken from the events recorded before it, as the writer's
        heads do; or `prev_version` as given. `value` replaces the JSON (a record that is not JSON, say).
        Make records first and deliver them in another order to test reordering."""
        key = (event.topic, event.aggregate_id)
        prev = self._heads.get(key) if prev_version is _FROM_HEADS else prev_version
        if event.version is None or event.standalone:
            prev = None
        if event.version is not None:
            self._heads[key] = event.version
        data = dict(event.data)
        if event.version is not None:
            data.setdefault("version", event.version)
        headers = encode_headers(
            event_id=event.id,
            event_type=event.type,
            source=self.source,
            subject=event.aggregate_id,
            time=event.time,
            version=event.version,
            trace_context={},
            prev_version=cast("int | None", prev),
        )
        topic = self.consumer.settings.topic_prefix + event.topic
        offset = self._offsets.get(topic, 0)
        self._offsets[topic] = offset + 1
        body = encode_value(data) if value is None else value
        key_bytes = event.aggregate_id.encode()
        return ConsumerRecord(
            topic, partition, offset, 0, 0, key_bytes, body, None, len(key_bytes), len(body), tuple(headers)
        )

    async def deliver(self, *items: Event | ConsumerRecord[bytes, bytes]) -> ConsumerStats:
        """Deliver `items` as one fetched batch (events become records with `record`); returns its counts.
        A record delivered again is a redelivery (the inbox makes it a duplicate)."""
        records = [self.record(i) if isinstance(i, Event) else i for i in items]
        counts = ConsumerStats()
        parsed = [self.consumer.parse(r) for r in records]
        budget = self.consumer.settings.careful_budget_s
        await self.pipeline.process(self._sessions, parsed, budget_s=budget, into=counts)
        self.stats.merge(counts)
        return counts

    async def sweep(self) -> ConsumerStats:
        """One round of the consumer's parked-events sweep (whose gap closed, by another member say)."""
        counts = await self.pipeline.release_parked(self._sessions)
        self.stats.merge(counts)
        return counts

    async def deliver_each(self, items: Sequence[Event | ConsumerRecord[bytes, bytes]]) -> ConsumerStats:
        """Deliver `items` one per fetched batch (a consumer with `max_batch=1`); returns the summed counts."""
        total = ConsumerStats()
        for item in items:
            total.merge(await self.deliver(item))
        return total
