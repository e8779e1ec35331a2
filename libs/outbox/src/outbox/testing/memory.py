"""In-memory stand-ins for the apply pipeline's stores (`outbox.consumer.ports`), for `HandlerHarness`.

`MemoryInbox` decides with the production guard's own rule (`inbox.decide`) and releases parked chains as
the SQL does; `MemorySession` gives handlers a session whose transactions and savepoints roll the inbox and
the emitted events back when their block raises, as PostgreSQL would. Dead letters are kept in a list and
never rolled back: in production they are on the broker before the transaction ends.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from aiokafka import ConsumerRecord
from sqlalchemy.ext.asyncio import AsyncSession

from outbox.consumer.handlers import Outcome
from outbox.consumer.inbox import decide
from outbox.envelope import Event, MalformedMessage, ReceivedEvent, decode_record


@dataclass(frozen=True, slots=True)
class ParkedAggregate:
    """One row of `MemoryInbox.parked`, shaped like the SQL's."""

    topic: str
    aggregate_id: str
    events: int
    since: datetime
    waiting_for: int | None


@dataclass(slots=True)
class MemoryState:
    """Everything a transaction of the harness can roll back."""

    outcomes: dict[uuid.UUID, str] = field(default_factory=dict)
    versions: dict[tuple[str, str], int] = field(default_factory=dict)
    parked: dict[uuid.UUID, tuple[ReceivedEvent, dict[str, Any], datetime]] = field(default_factory=dict)
    emitted: list[Event] = field(default_factory=list)


class MemoryInbox:
    """The `Inbox` interface over a `MemoryState`."""

    def __init__(self, consumer: str, state: MemoryState) -> None:
        self.consumer = consumer
        self.state = state

    def row(self, event: ReceivedEvent, outcome: Outcome) -> dict[str, Any]:
        return {"event_id": event.id, "event": event, "outcome": outcome.value}

    async def insert(self, session: AsyncSession, rows: Sequence[dict[str, Any]]) -> set[uuid.UUID]:
        fresh = {r["event_id"] for r in rows if r["event_id"] not in self.state.outcomes}
        for r in rows:
            self.state.outcomes.setdefault(r["event_id"], r["outcome"])
        return fresh

    async def mark(self, session: AsyncSession, ids: Sequence[uuid.UUID], outcome: Outcome) -> None:
        for i in ids:
            if i in self.state.outcomes:
                self.state.outcomes[i] = outcome.value

    async def forget_dead(self, session: AsyncSession, ids: Sequence[uuid.UUID]) -> None:
        for i in ids:
            if self.state.outcomes.get(i) == Outcome.DEAD.value:
                del self.state.outcomes[i]

    async def guard(
        self, session: AsyncSession, events: Sequence[ReceivedEvent], gap_aware: Sequence[bool]
    ) -> list[Outcome]:
        verdicts, changed = decide(self.state.versions, events, gap_aware)
        self.state.versions.update(changed)
        return verdicts

    async def advance_version(
        self, session: AsyncSession, event: ReceivedEvent, *, gap_aware: bool = False
    ) -> Outcome:
        [verdict] = await self.guard(session, [event], [gap_aware])
        return verdict

    async def applied_version(self, session: AsyncSession, topic: str, aggregate_id: str) -> int | None:
        return self.state.versions.get((topic, aggregate_id))

    async def lock_versions(self, session: AsyncSession, aggregates: Sequence[tuple[str, str]]) -> None:
        pass  # one task, no concurrent transactions: nothing to lock

    async def park(
        self, session: AsyncSession, parked: Sequence[tuple[ReceivedEvent, dict[str, Any]]]
    ) -> None:
        for event, stored in parked:
            self.state.parked.setdefault(event.id, (event, stored, datetime.now(UTC)))

    async def unpark(
        self, session: AsyncSession, aggregates: Sequence[tuple[str, str]] | None, *, limit: int = 500
    ) -> list[dict[str, Any]]:
        """As the SQL: per aggregate, the chain of parked events that follows the applied version, in
        (topic, aggregate, version, delivery) order; their `parked` inbox rows go with them."""
        wanted = None if aggregates is None else set(aggregates)
        chains: dict[tuple[str, str], list[tuple[ReceivedEvent, datetime]]] = {}
        for event, _, since in self.state.parked.values():
            key = (event.topic, event.subject or "")
            if key in self.state.versions and (wanted is None or key in wanted):
                chains.setdefault(key, []).append((event, since))
        due: list[tuple[tuple[str, str, int, datetime, int], uuid.UUID]] = []
        for key, events in chains.items():
            reach = self.state.versions[key]
            for event, since in sorted(events, key=lambda e: (e[0].version or 0, e[1], e[0].offset)):
                if event.prev_version is not None and event.prev_version > reach:
                    break
                reach = max(reach, event.version or 0)
                due.append(((*key, event.version or 0, since, event.offset), event.id))
        taken = [event_id for _, event_id in sorted(due)[:limit]]
        for event_id in taken:
            if self.state.outcomes.get(event_id) == Outcome.PARKED.value:
                del self.state.outcomes[event_id]
        return [self.state.parked.pop(event_id)[1] for event_id in taken]

    async def parked(self, session: AsyncSession) -> list[Any]:
        groups: dict[tuple[str, str], list[tuple[ReceivedEvent, datetime]]] = {}
        for event, _, since in self.state.parked.values():
            groups.setdefault((event.topic, event.subject or ""), []).append((event, since))
        return [
            ParkedAggregate(
                topic,
                aggregate,
                len(events),
                min(since for _, since in events),
                min((e.prev_version for e, _ in events if e.prev_version is not None), default=None),
            )
            for (topic, aggregate), events in sorted(groups.items())
        ]


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A record the pipeline gave up on: the record as delivered, its event (None: undecodable), why."""

    record: ConsumerRecord[bytes, bytes]
    event: ReceivedEvent | None
    reason: str
    attempts: int


class MemoryDeadLetters:
    """The `DeadLetters` interface: a list instead of `<group>.dlq`."""

    def __init__(self, topic: str, topic_prefix: str = "") -> None:
        self.topic = topic
        self.topic_prefix = topic_prefix
        self.letters: list[DeadLetter] = []

    async def send(self, record: ConsumerRecord[bytes, bytes], reason: str, *, attempts: int) -> None:
        try:
            event: ReceivedEvent | None = decode_record(
                topic=record.topic.removeprefix(self.topic_prefix),
                partition=record.partition,
                offset=record.offset,
                headers=record.headers,
                value=record.value,
            )
        except MalformedMessage:
            event = None
        self.letters.append(DeadLetter(record, event, reason, attempts))


class MemoryOutbox:
    """The `EventSink` that `ctx.emit` writes through: the events land in the transaction's state, so a
    handler that raises after emitting leaves none behind."""

    def __init__(self, state: MemoryState) -> None:
        self.state = state

    async def add(self, session: AsyncSession, *events: Event) -> None:
        self.state.emitted.extend(events)


class NoDatabase(RuntimeError):
    """A handler used SQL on the harness's session, which has no database behind it."""


class MemorySession:
    """What the pipeline needs of a session: transactions and savepoints (`begin`, `begin_nested`) that
    restore the state when their block raises. Anything else (SQL) raises `NoDatabase`: give the handler a
    repository or a service function to call instead, and pass a fake of it in the test."""

    def __init__(self, state: MemoryState) -> None:
        self._state = state

    def begin(self) -> _Transaction:
        return _Transaction(self._state)

    begin_nested = begin

    async def __aenter__(self) -> MemorySession:
        return self

    async def __aexit__(self, *_: object) -> None:
        pass

    def __getattr__(self, name: str) -> Any:
        raise NoDatabase(
            f"session.{name}: the handler harness has no database; pass the handler a repository or a "
            "service function and a fake of it, or test this handler against PostgreSQL"
        )


class _Transaction:
    def __init__(self, state: MemoryState) -> None:
        self._state = state

    async def __aenter__(self) -> None:
        s = self._state
        self._saved = (dict(s.outcomes), dict(s.versions), dict(s.parked), list(s.emitted))

    async def __aexit__(self, kind: object, *_: object) -> None:
        if kind is not None:
            s = self._state
            s.outcomes, s.versions, s.parked, s.emitted = self._saved
