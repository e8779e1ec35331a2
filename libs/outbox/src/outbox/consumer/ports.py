"""What the apply pipeline needs of its stores, as interfaces: the inbox (with the version guard and the
parked events) and the dead-letter topic. `InboxStore` (PostgreSQL) and `DeadLetterSender` (Kafka) are the
production ones; `outbox.testing` has in-memory ones, so handlers run through the real pipeline in a unit
test. Interfaces only: the production path calls the same objects as before, at the same cost."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any, Protocol

from aiokafka import ConsumerRecord
from sqlalchemy.ext.asyncio import AsyncSession

from outbox.consumer.handlers import Outcome
from outbox.envelope import ReceivedEvent


class Inbox(Protocol):
    """One consumer's inbox rows, aggregate versions and parked events, in the caller's transaction."""

    consumer: str

    def row(self, event: ReceivedEvent, outcome: Outcome) -> dict[str, Any]: ...

    async def insert(self, session: AsyncSession, rows: Sequence[dict[str, Any]]) -> set[uuid.UUID]: ...

    async def mark(self, session: AsyncSession, ids: Sequence[uuid.UUID], outcome: Outcome) -> None: ...

    async def forget_dead(self, session: AsyncSession, ids: Sequence[uuid.UUID]) -> None: ...

    async def guard(
        self, session: AsyncSession, events: Sequence[ReceivedEvent], gap_aware: Sequence[bool]
    ) -> list[Outcome]: ...

    async def advance_version(
        self, session: AsyncSession, event: ReceivedEvent, *, gap_aware: bool = False
    ) -> Outcome: ...

    async def applied_version(self, session: AsyncSession, topic: str, aggregate_id: str) -> int | None: ...

    async def lock_versions(self, session: AsyncSession, aggregates: Sequence[tuple[str, str]]) -> None: ...

    async def park(
        self, session: AsyncSession, parked: Sequence[tuple[ReceivedEvent, dict[str, Any]]]
    ) -> None: ...

    async def unpark(
        self, session: AsyncSession, aggregates: Sequence[tuple[str, str]] | None, *, limit: int = 500
    ) -> list[dict[str, Any]]: ...

    async def parked(self, session: AsyncSession) -> list[Any]: ...


class DeadLetters(Protocol):
    """The consumer's dead-letter topic: `send` returns once the record is safely there."""

    topic: str

    async def send(self, record: ConsumerRecord[bytes, bytes], reason: str, *, attempts: int) -> None: ...
