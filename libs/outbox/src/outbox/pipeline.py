"""One apply pipeline for delivered records: inbox rows, version guard, handlers, dead letters.

The consumer runs it over a fetched batch in one of two ways, with the same steps:
- `apply`: the whole batch in one transaction, without savepoints (one inbox statement for all records);
- `apply_isolated`: after a handler raised in `apply` (that transaction rolled back; nothing of it
  persists), each record alone inside a savepoint, with retries and backoff, dead-lettering what cannot be
  applied (at once for `Reject`) within a time budget.
"""

from __future__ import annotations

import base64
import logging
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from typing import Any

from aiokafka import ConsumerRecord
from opentelemetry import trace
from opentelemetry.trace import Link, Span, SpanKind, Status, StatusCode
from sqlalchemy.ext.asyncio import AsyncSession
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    stop_after_attempt,
    wait_exponential_jitter,
)
from tenacity.stop import stop_base

from outbox.dead_letters import DeadLetterSender
from outbox.envelope import ReceivedEvent
from outbox.handlers import Outcome, Reject, Route
from outbox.inbox_store import InboxStore
from outbox.tracing import MESSAGING_BATCH_MESSAGE_COUNT, context_from, process_attributes, tracer
from outbox.writer import OutboxWriter

log = logging.getLogger("outbox.consumer")


@dataclass(slots=True)
class ConsumerStats:
    applied: int = 0
    duplicates: int = 0
    stale: int = 0
    ignored: int = 0
    dead_lettered: int = 0
    retries: int = 0
    batch_failures: int = 0
    parked: int = 0  # arrived before the version they follow (gap-aware handlers)
    released: int = 0  # parked events applied once their gap closed

    def merge(self, other: ConsumerStats) -> None:
        for f in fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))


@dataclass(frozen=True, slots=True)
class Parsed:
    """A delivered record, decoded: its event (None: malformed), its handler, what is wrong with it."""

    record: ConsumerRecord[bytes, bytes]
    event: ReceivedEvent | None
    route: Route | None
    problem: str | None  # set: dead-letter this record with this reason
    redriven: bool = False  # an operator's redrive from the dead-letter topic: a new attempt


class HandlerFailed(Exception):
    """A handler raised; `cause` is what it raised."""

    def __init__(self, cause: BaseException) -> None:
        super().__init__(f"{type(cause).__name__}: {cause}")
        self.cause = cause


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    max_attempts: int
    initial_s: float
    max_s: float


class ApplyPipeline:
    def __init__(
        self,
        consumer: str,
        inbox: InboxStore,
        dead_letters: DeadLetterSender,
        retry: RetryPolicy,
        writer: OutboxWriter | None,
        parse: Callable[[ConsumerRecord[bytes, bytes]], Parsed],
    ) -> None:
        self.consumer = consumer
        self.inbox = inbox
        self.dead_letters = dead_letters
        self.retry = retry
        self.writer = writer
        self.parse = parse
        # Aggregates with parked events (kept fresh by the consumer's sweep): applying one of their events
        # looks for parked successors in the same transaction.
        self.parked_keys: set[tuple[str, str]] = set()
        # Set by the consumer when a handler is gap-aware: events it skips on purpose (ignored types, its own
        # dead letters) still move their aggregate's version, so their successors are not parked for them.
        self.tracks_gaps = False

    async def apply(
        self, session: AsyncSession, items: Sequence[Parsed], *, attempt: int = 1
    ) -> ConsumerStats:
        """Apply `items` in the session's transaction; raises HandlerFailed when a handler raises."""
        await self.inbox.forget_dead(session, [p.event.id for p in items if p.redriven and p.event])
        rows = []
        for p in items:
            if p.event is not None:
                outcome = (
                    Outcome.DEAD if p.problem else Outcome.IGNORED if p.route is None else Outcome.APPLIED
                )
                rows.append(self.inbox.row(p.event, outcome))
        fresh = await self.inbox.insert(session, rows)
        dead: list[Parsed] = []
        counts = ConsumerStats()
        routed: list[Parsed] = []  # fresh events with a handler, in delivery order
        # What the version guard judges, in delivery order: guarded events, and (for gap-aware handlers) the
        # events skipped on purpose, which still move their aggregate's version. One pass in one order, so
        # passing over an event never makes one delivered before it stale.
        judged: list[Parsed] = []
        for item in items:
            event = item.event
            if event is None:  # malformed: no event id to remember it by
                dead.append(item)
                continue
            if event.id not in fresh:
                counts.duplicates += 1  # a redelivery, of a dead-lettered event too: no second dead letter
                continue
            fresh.discard(event.id)  # a second copy inside this batch is a duplicate too
            if item.problem is None and item.route is not None:
                routed.append(item)
                if item.route.version_guard:
                    judged.append(item)
                continue
            if item.problem is not None:
                dead.append(item)
            else:
                counts.ignored += 1
            if self.tracks_gaps:
                judged.append(item)
        # One read and one write of the version guard for the whole batch, not a statement per event; run
        # under the first guarded message's span, so a trace shows the guard with the message it decided.
        verdicts: dict[int, Outcome] | None = None
        stale: list[uuid.UUID] = []
        parked: list[Parsed] = []
        advanced: set[tuple[str, str]] = set()
        group: tuple[Route, list[ReceivedEvent]] | None = None  # consecutive events for one batch handler
        for item in routed:
            event, route = item.event, item.route
            assert event is not None and route is not None
            span = self._span(item)
            with trace.use_span(span, end_on_exit=True):
                if verdicts is None and route.version_guard:
                    verdicts = await self._judge(session, judged)
                verdict = (verdicts or {}).get(id(item), Outcome.APPLIED)
                span.set_attribute("outbox.outcome", verdict.value)
                if verdict is Outcome.STALE:
                    stale.append(event.id)
                    counts.stale += 1
                    continue
                if verdict is Outcome.PARKED:
                    parked.append(item)
                    counts.parked += 1
                    continue
                if route.version_guard and event.subject:
                    advanced.add((event.topic, event.subject))
                counts.applied += 1
                if route.batch:
                    if group and group[0].handler is not route.handler:
                        await self._call_group(session, group, attempt)
                        group = None
                    group = group or (route, [])
                    group[1].append(event)
                    continue
                if group:
                    await self._call_group(session, group, attempt)
                    group = None
                await self._call(session, route, [event], span, attempt)
        if group:
            await self._call_group(session, group, attempt)
        if verdicts is None and judged:  # only events passed over: no guarded one to run the guard under
            verdicts = await self._judge(session, judged)
        advanced |= {  # events passed over move their aggregate's version too: it may close a gap
            (i.event.topic, i.event.subject)
            for i in judged
            if i.route is None
            and i.event
            and i.event.subject
            and i.event.version is not None
            and (verdicts or {}).get(id(i)) is Outcome.APPLIED
        }
        await self.inbox.mark(session, stale, Outcome.STALE)
        await self._park(session, parked)
        if released := advanced & self.parked_keys:
            counts.merge(await self._release(session, sorted(released), attempt))
        for item in dead:
            await self.dead_letters.send(item.record, item.problem or "undecodable", attempts=0)
            counts.dead_lettered += 1
        return counts

    async def _judge(self, session: AsyncSession, judged: Sequence[Parsed]) -> dict[int, Outcome]:
        """The version guard's verdicts for `judged`, by item identity."""
        events = [i.event for i in judged if i.event is not None]
        outcomes = await self.inbox.guard(
            session, events, [bool(i.route and i.route.gap_aware) for i in judged]
        )
        return dict(zip((id(i) for i in judged), outcomes, strict=True))

    async def _park(self, session: AsyncSession, items: Sequence[Parsed]) -> None:
        for item in items:
            assert item.event is not None and item.event.subject is not None
            log.warning(
                "consumer %s: parked %s v%s of %s: waits for v%s",
                self.consumer,
                item.event.type,
                item.event.version,
                item.event.subject,
                item.event.prev_version,
            )
            await self.inbox.park(session, item.event, stored_record(item.record))
            self.parked_keys.add((item.event.topic, item.event.subject))
        await self.inbox.mark(session, [i.event.id for i in items if i.event], Outcome.PARKED)

    async def _release(
        self, session: AsyncSession, aggregates: Sequence[tuple[str, str]], attempt: int = 1
    ) -> ConsumerStats:
        """Apply the parked events of `aggregates` whose gap this transaction closed, in version order, in a
        savepoint: if one of their handlers fails they stay parked (the sweep retries them one by one) and
        the event that closed the gap is not blamed for it."""
        try:
            async with session.begin_nested():
                records = await self.inbox.unpark(session, aggregates)
                if not records:
                    return ConsumerStats()
                counts = await self.apply(
                    session, [self.parse(record_from(r)) for r in records], attempt=attempt
                )
        except HandlerFailed as failed:
            log.warning(
                "consumer %s: a released event's handler failed (%s); it stays parked for the sweep",
                self.consumer,
                failed,
            )
            return ConsumerStats()
        counts.released += len(records)
        return counts

    async def release_parked(self, session: AsyncSession, *, budget_s: float = 60.0) -> ConsumerStats:
        """The sweep: parked events whose gap closed (by another member, or behind a failure above), each
        through the careful path (retries, then the dead-letter topic); refreshes which aggregates have
        parked events."""
        counts = ConsumerStats()
        deadline = time.monotonic() + budget_s
        for stored in await self.inbox.unpark(session, None):
            released = await self.apply_isolated(session, self.parse(record_from(stored)), deadline)
            released.released += 1
            counts.merge(released)
        self.parked_keys = {(r.topic, r.aggregate_id) for r in await self.inbox.parked(session)}
        return counts

    async def apply_isolated(self, session: AsyncSession, item: Parsed, deadline: float) -> ConsumerStats:
        """`apply` for one record inside a savepoint, retried with backoff until it goes through, the
        handler rejects it, `max_attempts` or the deadline passes; then it is dead-lettered."""
        r = self.retry
        attempt = 0
        try:
            async for state in AsyncRetrying(
                stop=stop_after_attempt(r.max_attempts) | _PastDeadline(deadline),
                wait=wait_exponential_jitter(multiplier=r.initial_s, max=r.max_s, jitter=r.initial_s),
                retry=retry_if_exception(_worth_retrying),
                reraise=True,
            ):
                with state:
                    attempt = state.retry_state.attempt_number
                    try:
                        async with session.begin_nested():
                            counts = await self.apply(session, [item], attempt=attempt)
                    except HandlerFailed:
                        raise
                    except Exception as exc:
                        if _connection_lost(session):
                            raise DatabaseLost(str(exc)) from exc
                        raise
                    counts.retries = attempt - 1
                    return counts
        except DatabaseLost:
            raise
        except HandlerFailed as failed:
            cause = failed.cause
            if isinstance(cause, Reject):
                reason = f"rejected by the handler: {type(cause).__name__}: {cause}"
            else:
                reason = f"handler failed after {attempt} attempts: {type(cause).__name__}: {cause}"
        except Exception as exc:
            reason = f"handler failed after {attempt} attempts: {type(exc).__name__}: {exc}"
        event = item.event
        log.error(
            "consumer %s: dead-lettering %s (%s): %s",
            self.consumer,
            event.id if event else "?",
            event.type if event else "?",
            reason,
        )
        counts = await self._give_up(session, item, reason, attempts=attempt)
        counts.retries = max(attempt - 1, 0)
        return counts

    async def _give_up(
        self, session: AsyncSession, item: Parsed, reason: str, *, attempts: int
    ) -> ConsumerStats:
        """Dead-letter the record and remember that in the inbox (a redelivery is then a duplicate)."""
        counts = ConsumerStats()
        if item.event is not None and not await self.inbox.insert(
            session, [self.inbox.row(item.event, Outcome.DEAD)]
        ):
            counts.duplicates += 1
            return counts
        await self.dead_letters.send(item.record, reason, attempts=attempts)
        counts.dead_lettered += 1
        if item.event is not None:
            await self._pass_over(session, item.event)
        return counts

    async def _pass_over(self, session: AsyncSession, event: ReceivedEvent) -> None:
        """An event dead-lettered on the careful path still counts as seen for gap-aware ordering (a gap is
        a version that never arrived, not one that was refused); `apply` does this in its guard."""
        if self.tracks_gaps:
            await self.inbox.advance_version(session, event)

    def _span(self, item: Parsed) -> Span:
        """`process {topic}`: a child of the producer's span (one trace end to end) and linked to it, as the
        messaging conventions ask of a span that processes a message created elsewhere."""
        assert item.event is not None
        producer = context_from(item.event.headers)
        return tracer().start_span(
            f"process {item.event.topic}",
            context=producer,
            kind=SpanKind.CONSUMER,
            links=[Link(trace.get_current_span(producer).get_span_context())],
            attributes=process_attributes(
                item.event.topic,
                self.consumer,
                partition=item.record.partition,
                offset=item.record.offset,
                message_id=str(item.event.id),
            ),
        )

    async def _call_group(
        self, session: AsyncSession, group: tuple[Route, list[ReceivedEvent]], attempt: int
    ) -> None:
        route, events = group
        # One span for the call, linked to every event's trace (a span has one parent, a batch many).
        links = [Link(trace.get_current_span(context_from(e.headers)).get_span_context()) for e in events]
        span = tracer().start_span(
            f"process {events[0].topic}",
            kind=SpanKind.CONSUMER,
            links=links,
            attributes={
                **process_attributes(events[0].topic, self.consumer, partition=events[0].partition),
                MESSAGING_BATCH_MESSAGE_COUNT: len(events),
                "outbox.handler": route.pattern,
            },
        )
        with trace.use_span(span, end_on_exit=True):
            await self._call(session, route, events, span, attempt)

    async def _call(
        self, session: AsyncSession, route: Route, events: list[ReceivedEvent], span: Span, attempt: int
    ) -> None:
        try:
            await route.call(session, self.consumer, list(events), attempt, self.writer)
        except Exception as exc:
            span.record_exception(exc)
            span.set_status(Status(StatusCode.ERROR, type(exc).__name__))
            raise HandlerFailed(exc) from exc


class DatabaseLost(Exception):
    """The connection itself failed: retrying inside this transaction cannot help."""


class _PastDeadline(stop_base):
    def __init__(self, deadline: float) -> None:
        self.deadline = deadline

    def __call__(self, retry_state: RetryCallState) -> bool:
        return time.monotonic() >= self.deadline


def stored_record(record: ConsumerRecord[bytes, bytes]) -> dict[str, Any]:
    """A Kafka record as JSON, to park it in the database."""
    return {
        "topic": record.topic,
        "partition": record.partition,
        "offset": record.offset,
        "timestamp": record.timestamp,
        "key": base64.b64encode(record.key).decode() if record.key is not None else None,
        "value": base64.b64encode(record.value).decode() if record.value is not None else None,
        "headers": [[k, base64.b64encode(v).decode()] for k, v in record.headers or ()],
    }


def record_from(stored: dict[str, Any]) -> ConsumerRecord[bytes, bytes]:
    key = base64.b64decode(stored["key"]) if stored["key"] is not None else None
    value = base64.b64decode(stored["value"]) if stored["value"] is not None else None
    return ConsumerRecord(
        topic=stored["topic"],
        partition=stored["partition"],
        offset=stored["offset"],
        timestamp=stored["timestamp"],
        timestamp_type=0,
        key=key,
        value=value,
        checksum=None,
        serialized_key_size=len(key or b""),
        serialized_value_size=len(value or b""),
        headers=tuple((k, base64.b64decode(v)) for k, v in stored["headers"]),
    )


def _worth_retrying(exc: BaseException) -> bool:
    if isinstance(exc, DatabaseLost):
        return False
    return not (isinstance(exc, HandlerFailed) and isinstance(exc.cause, Reject))


def _connection_lost(session: AsyncSession) -> bool:
    try:
        conn = session.sync_session.connection()
    except Exception:
        return True
    return bool(conn.invalidated or conn.closed)
