"""What a handler gets and what it may raise: contexts, outcomes, `Reject`.

Handlers change state through `ctx.session` and never end its transaction: the inbox rows of the whole
batch commit with their effects, after every handler ran. A handler that commits would make those inbox
rows permanent before later handlers ran, and a later failure or crash would lose their events; so
`commit` and `rollback` on a handler's session raise `HandlerCommitted` (a `Reject`).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Any, cast

from sqlalchemy.ext.asyncio import AsyncSession

from outbox.envelope import Event, ReceivedEvent

if TYPE_CHECKING:
    from outbox.writer import OutboxWriter

Handler = Callable[["EventContext"], Awaitable[None]]
BatchHandler = Callable[["BatchContext"], Awaitable[None]]


class Outcome(StrEnum):
    """What became of one delivered event; also the inbox row's `outcome`."""

    APPLIED = "applied"
    STALE = "stale"  # its aggregate already had a higher version applied
    IGNORED = "ignored"  # a type this consumer deliberately skips
    DUPLICATE = "duplicate"  # the inbox already held it (no inbox row of its own)
    DEAD = "dead"  # dead-lettered: a redelivery is a duplicate, not a second dead letter
    PARKED = "parked"  # arrived before the version it follows: kept, applied once that version is


class Reject(Exception):
    """Raise from a handler when the event can never be applied: it is dead-lettered at once, no retries."""


class HandlerCommitted(Reject):
    """A handler tried to end the consumer's transaction (commit or rollback)."""


def _refuse(action: str) -> Callable[..., Coroutine[Any, Any, None]]:
    async def refuse(*_args: Any, **_kwargs: Any) -> None:
        raise HandlerCommitted(
            f"a handler called session.{action}(): the consumer owns the transaction (flush, never commit)"
        )

    return refuse


def guard_session(session: AsyncSession) -> AsyncSession:
    """Make `session` refuse to be committed or rolled back by handlers.

    The consumer ends its transactions through `session.begin()` (which does not go through these
    methods), so the guard holds for the session's whole life and costs nothing per event. Refusing up
    front, rather than in a `before_commit` hook, leaves the transaction intact for the other events."""
    session.commit = _refuse("commit")  # type: ignore[method-assign]
    session.rollback = _refuse("rollback")  # type: ignore[method-assign]
    return session


async def _emit(writer: OutboxWriter | None, session: AsyncSession, events: tuple[Event, ...]) -> None:
    if writer is None:
        raise RuntimeError("emit() needs IdempotentConsumer(..., writer=OutboxWriter(source=...))")
    await writer.add(session, *events)


@dataclass(slots=True)
class EventContext:
    """One event and the session of the transaction that also holds its inbox row."""

    event: ReceivedEvent
    session: AsyncSession
    consumer: str
    attempt: int
    writer: OutboxWriter | None = None

    async def emit(self, *events: Event) -> None:
        """Record follow-up events in this consumer's outbox, in the same transaction as the effect."""
        await _emit(self.writer, self.session, events)


@dataclass(slots=True)
class BatchContext:
    """Consecutive fresh events of a batch handler's types (in delivery order, stale ones already dropped)
    and the session of the transaction that holds their inbox rows. On the careful path (after a failure)
    it is called with one event at a time, inside that event's savepoint."""

    events: list[ReceivedEvent]
    session: AsyncSession
    consumer: str
    attempt: int
    writer: OutboxWriter | None = None

    async def emit(self, *events: Event) -> None:
        await _emit(self.writer, self.session, events)


@dataclass(frozen=True, slots=True)
class Route:
    pattern: str
    handler: Handler | BatchHandler
    version_guard: bool
    batch: bool = False
    # Park an event whose previous version (`ce_prevversion`) was not applied yet, instead of applying it.
    gap_aware: bool = False

    async def call(
        self,
        session: AsyncSession,
        consumer: str,
        events: list[ReceivedEvent],
        attempt: int,
        writer: OutboxWriter | None,
    ) -> None:
        if self.batch:
            batch_handler = cast(BatchHandler, self.handler)
            await batch_handler(BatchContext(events, session, consumer, attempt, writer))
        else:
            [event] = events
            await cast(Handler, self.handler)(EventContext(event, session, consumer, attempt, writer))
