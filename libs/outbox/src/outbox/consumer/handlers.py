"""What a handler gets and what it may raise: contexts, outcomes, `Reject`.

Handlers change state through `ctx.session` and never end its transaction: the inbox rows of the whole
batch commit with their effects, after every handler ran. A handler that commits would make those inbox
rows permanent before later handlers ran, and a later failure or crash would lose their events; so
`commit` and `rollback` on a handler's session raise `HandlerCommitted` (a `Reject`).

A handler registered with `payload=Model` (a pydantic model, or any class with `model_validate`) gets
`ctx.payload` already validated: a record whose data does not validate is dead-lettered as malformed when it
is decoded, like a record that is not JSON, and never reaches the handler. Follow-up events go through
`ctx.emit(...)`: written to the consumer's outbox (`IdempotentConsumer(writer=)`) in the effect's transaction.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, Any, Generic, Protocol, Self, TypeVar, cast

from sqlalchemy.ext.asyncio import AsyncSession

from outbox.envelope import Event, ReceivedEvent

if TYPE_CHECKING:
    from typing_extensions import TypeVar as DefaultTypeVar

    # What a handler's context carries as `payload`: the registered model, else the event's JSON object.
    P = DefaultTypeVar("P", default=dict[str, Any], covariant=True)
else:  # the default only matters to type checkers (typing.TypeVar takes none before Python 3.13)
    P = TypeVar("P", covariant=True)

M = TypeVar("M")
Handler = Callable[["EventContext[M]"], Awaitable[None]]
BatchHandler = Callable[["BatchContext[M]"], Awaitable[None]]


class PayloadModel(Protocol):
    """What `payload=` takes: a class that validates a JSON object into an instance (pydantic's BaseModel),
    raising ValueError (pydantic's ValidationError is one) when it does not fit."""

    @classmethod
    def model_validate(cls, obj: Any, /) -> Self: ...


class EventSink(Protocol):
    """Where `ctx.emit` writes: an `OutboxWriter` (the consumer's own outbox), or a test's in-memory one."""

    async def add(self, session: AsyncSession, *events: Event) -> None: ...


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


@dataclass(frozen=True, slots=True)
class EventContext(Generic[P]):
    """One event, its payload and the session of the transaction that also holds its inbox row.

    `payload` is the event's data validated by the handler's `payload=` model (`EventContext[Model]`), or
    the data itself (a dict) for a handler registered without one."""

    event: ReceivedEvent
    session: AsyncSession
    consumer: str
    attempt: int
    payload: P
    emitted: list[Event] = field(default_factory=list)

    def emit(self, *events: Event) -> None:
        """Record follow-up events: written to this consumer's outbox in the transaction of the effect as the
        handler returns (a handler that raises emits nothing). Like a service's `UnitOfWork.emit`, so a
        service function that takes a unit of work (`session` + `emit`) can take the context."""
        self.emitted.extend(events)


@dataclass(frozen=True, slots=True)
class BatchContext(Generic[P]):
    """Consecutive fresh events of a batch handler's types (in delivery order, stale ones already dropped),
    their payloads (`payloads[i]` is `events[i]`'s, as for `EventContext.payload`) and the session of the
    transaction that holds their inbox rows. On the careful path (after a failure) it is called with one
    event at a time, inside that event's savepoint."""

    events: list[ReceivedEvent]
    session: AsyncSession
    consumer: str
    attempt: int
    payloads: list[P]
    emitted: list[Event] = field(default_factory=list)

    def emit(self, *events: Event) -> None:
        """As `EventContext.emit`."""
        self.emitted.extend(events)


class Delivered(Protocol):
    """What a route is called with: a decoded record (`apply_types.Parsed`) and its validated payload."""

    @property
    def event(self) -> ReceivedEvent | None: ...
    @property
    def payload(self) -> Any: ...


@dataclass(frozen=True, slots=True)
class Route:
    pattern: str
    handler: Handler[Any] | BatchHandler[Any]
    version_guard: bool
    batch: bool = False
    # Park an event whose previous version (`ce_prevversion`) was not applied yet, instead of applying it.
    gap_aware: bool = False
    payload: type[PayloadModel] | None = None

    def validate(self, event: ReceivedEvent) -> Any:
        """The handler's payload for `event`; raises ValueError when it does not fit the model."""
        return event.data if self.payload is None else self.payload.model_validate(event.data)

    async def call(
        self,
        session: AsyncSession,
        consumer: str,
        items: Sequence[Delivered],
        attempt: int,
        writer: EventSink | None,
    ) -> None:
        events = [cast(ReceivedEvent, p.event) for p in items]
        payloads = [
            p.payload if p.payload is not None else self.validate(e)
            for p, e in zip(items, events, strict=True)
        ]
        ctx: EventContext[Any] | BatchContext[Any]
        if self.batch:
            ctx = BatchContext(events, session, consumer, attempt, payloads)
            await cast("BatchHandler[Any]", self.handler)(ctx)
        else:
            [event], [payload] = events, payloads
            ctx = EventContext(event, session, consumer, attempt, payload)
            await cast("Handler[Any]", self.handler)(ctx)
        if ctx.emitted:
            if writer is None:
                raise RuntimeError(
                    f"the handler for {self.pattern!r} emitted events, which needs "
                    "IdempotentConsumer(..., writer=OutboxWriter(source=...))"
                )
            await writer.add(session, *ctx.emitted)
