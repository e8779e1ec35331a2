"""One apply pipeline for delivered records: inbox rows, version guard, handlers, dead letters.

The consumer runs it over a fetched batch in one of two ways, with the same steps:
- `apply`: the whole batch in one transaction, without savepoints (one inbox statement for all records),
  then the parked events whose gap it closed (savepoints, bounded: `parking.ParkedRelease`);
- `apply_isolated`: after a handler raised in `apply` (that transaction rolled back; nothing of it
  persists), each record alone inside a savepoint, with retries and backoff, dead-lettering what cannot be
  applied (at once for `Reject`) within a time budget.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Sequence

from aiokafka import ConsumerRecord
from opentelemetry import trace
from opentelemetry.trace import Link, Span, SpanKind, Status, StatusCode
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from tenacity import AsyncRetrying, retry_if_exception, stop_after_attempt, wait_exponential_jitter

from outbox.consumer.apply_types import (
    ConsumerStats,
    DatabaseLost,
    HandlerFailed,
    Parsed,
    PastDeadline,
    RetryPolicy,
    worth_retrying,
)
from outbox.consumer.handlers import EventSink, Outcome, Reject, Route, guard_session
from outbox.consumer.parking import Aggregate, ParkedRelease
from outbox.consumer.ports import DeadLetters, Inbox
from outbox.envelope import ReceivedEvent
from outbox.telemetry.tracing import MESSAGING_BATCH_MESSAGE_COUNT, context_from, process_attributes, tracer

__all__ = ["ApplyPipeline", "DatabaseLost", "RetryPolicy"]

log = logging.getLogger("outbox.consumer")


class ApplyPipeline:
    def __init__(
        self,
        consumer: str,
        inbox: Inbox,
        dead_letters: DeadLetters,
        retry: RetryPolicy,
        writer: EventSink | None,
        parse: Callable[[ConsumerRecord[bytes, bytes]], Parsed],
        *,
        release_round: int = 500,
        savepoints: int = 50,
    ) -> None:
        self.consumer = consumer
        self.inbox = inbox
        self.dead_letters = dead_letters
        self.retry = retry
        self.writer = writer
        self.parse = parse
        # Savepoints per transaction (PostgreSQL caches 64 subtransactions): careful-path events, or
        # rounds of up to `release_round` parked events.
        self.savepoints = max(1, savepoints)
        self.parking = ParkedRelease(self, round_size=release_round, savepoints=self.savepoints)
        # Set by the consumer when a handler is gap-aware: events it skips on purpose (ignored types, its own
        # dead letters) still move their aggregate's version, so their successors are not parked for them.
        self.tracks_gaps = False

    @property
    def parked_keys(self) -> set[Aggregate]:
        return self.parking.keys

    async def process(
        self,
        sessions: async_sessionmaker[AsyncSession],
        items: Sequence[Parsed],
        *,
        budget_s: float,
        into: ConsumerStats,
    ) -> None:
        """One fetched batch, counted `into` as its transactions commit. Fast path first: the whole batch in
        one transaction without savepoints, inbox rows in one statement. If any handler raises, that
        transaction rolls back (nothing of it persists) and the batch is replayed on the careful path: a
        savepoint, retries and dead-lettering per message, committed in chunks of `savepoints` events."""
        try:
            async with sessions() as session, session.begin():
                counts = await self.apply(guard_session(session), items)
            into.merge(counts)
        except HandlerFailed:
            await self.apply_careful(sessions, items, budget_s, into)
        # Parked events whose gap this batch closed and that its transaction(s) left for later.
        into.merge(await self.release_pending(sessions))

    async def apply(
        self, session: AsyncSession, items: Sequence[Parsed], *, attempt: int = 1, release: bool = True
    ) -> ConsumerStats:
        """Apply `items` in the session's transaction, then the parked events whose gap they closed (without
        `release`: left for `release_pending`); raises HandlerFailed when a handler raises."""
        counts, advanced = await self.apply_batch(session, items, attempt)
        if due := advanced & self.parking.keys:
            if release:
                counts.merge(await self.parking.release(session, due, attempt=attempt))
            else:
                self.parking.pending |= due
        return counts

    async def release_pending(self, sessions: async_sessionmaker[AsyncSession]) -> ConsumerStats:
        """Parked events whose gap closed but that `apply` left for later, in transactions of their own."""
        return await self.parking.release_pending(sessions)

    async def release_parked(
        self, sessions: async_sessionmaker[AsyncSession], *, budget_s: float = 60.0
    ) -> ConsumerStats:
        """The sweep: every parked event whose gap closed (by another member, or behind a failure)."""
        return await self.parking.sweep(sessions, budget_s=budget_s)

    async def apply_batch(
        self, session: AsyncSession, items: Sequence[Parsed], attempt: int
    ) -> tuple[ConsumerStats, set[Aggregate]]:
        """`apply` without releasing parked events; also returns the aggregates whose version it moved."""
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
        advanced: set[Aggregate] = set()
        group: tuple[Route, list[Parsed]] | None = None  # consecutive events for one batch handler
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
                    if item.redriven:  # an operator expects it applied: say why it was not
                        await self._redriven_stale(session, event)
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
                    group[1].append(item)
                    continue
                if group:
                    await self._call_group(session, group, attempt)
                    group = None
                await self._call(session, route, [item], span, attempt)
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
        await self.parking.park(session, parked)
        for item in dead:
            await self.dead_letters.send(item.record, item.problem or "undecodable", attempts=0)
            counts.dead_lettered += 1
        return counts, advanced

    async def _redriven_stale(self, session: AsyncSession, event: ReceivedEvent) -> None:
        applied = await self.inbox.applied_version(session, event.topic, event.subject or "")
        log.warning(
            "consumer %s: redriven %s v%s of %s is stale: v%s already applied, so it is not applied over it "
            "(the version guard keeps the newer state)",
            *(self.consumer, event.type, event.version, event.subject, applied),
        )

    async def _judge(self, session: AsyncSession, judged: Sequence[Parsed]) -> dict[int, Outcome]:
        """The version guard's verdicts for `judged`, by item identity."""
        events = [i.event for i in judged if i.event is not None]
        outcomes = await self.inbox.guard(
            session, events, [bool(i.route and i.route.gap_aware) for i in judged]
        )
        return dict(zip((id(i) for i in judged), outcomes, strict=True))

    async def apply_careful(
        self,
        sessions: async_sessionmaker[AsyncSession],
        items: Sequence[Parsed],
        budget_s: float,
        into: ConsumerStats,
    ) -> None:
        """The careful path: `apply_isolated` for each item, committed every `savepoints` items (each
        chunk's counts merged `into` as it commits)."""
        deadline = time.monotonic() + budget_s
        for start in range(0, len(items), self.savepoints):
            counts = ConsumerStats()
            chunk = items[start : start + self.savepoints]
            async with sessions() as session, session.begin():
                guard_session(session)
                # One event per savepoint would lock its aggregate's version in delivery order: lock them
                # all first, in the (topic, aggregate) order of the fast path and the sweep.
                await self.inbox.lock_versions(session, _guarded(chunk))
                for item in chunk:
                    counts.merge(await self.apply_isolated(session, item, deadline))
            into.merge(counts)

    async def apply_isolated(
        self, session: AsyncSession, item: Parsed, deadline: float, *, release: bool = False
    ) -> ConsumerStats:
        """`apply` for one record inside a savepoint, retried with backoff until it goes through, the
        handler rejects it, `max_attempts` or the deadline passes; then it is dead-lettered. The parked
        events it lets through are left for `release_pending` unless `release`: the careful path spends
        its savepoints one per event."""
        r = self.retry
        attempt = 0
        try:
            async for state in AsyncRetrying(
                stop=stop_after_attempt(r.max_attempts) | PastDeadline(deadline),
                wait=wait_exponential_jitter(multiplier=r.initial_s, max=r.max_s, jitter=r.initial_s),
                retry=retry_if_exception(worth_retrying),
                reraise=True,
            ):
                with state:
                    attempt = state.retry_state.attempt_number
                    try:
                        async with session.begin_nested():
                            counts = await self.apply(session, [item], attempt=attempt, release=release)
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
        a version that never arrived, not one that was refused); `apply_batch` does this in its guard."""
        if not self.tracks_gaps:
            return
        moved = await self.inbox.advance_version(session, event) is Outcome.APPLIED
        if moved and event.subject and (key := (event.topic, event.subject)) in self.parking.keys:
            self.parking.pending.add(key)  # its parked successors may be due

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
        self, session: AsyncSession, group: tuple[Route, list[Parsed]], attempt: int
    ) -> None:
        route, items = group
        events = [p.event for p in items if p.event is not None]
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
            await self._call(session, route, items, span, attempt)

    async def _call(
        self, session: AsyncSession, route: Route, items: list[Parsed], span: Span, attempt: int
    ) -> None:
        try:
            await route.call(session, self.consumer, items, attempt, self.writer)
        except Exception as exc:
            span.record_exception(exc)
            span.set_status(Status(StatusCode.ERROR, type(exc).__name__))
            raise HandlerFailed(exc) from exc


def _guarded(items: Sequence[Parsed]) -> list[Aggregate]:
    return [
        (p.event.topic, p.event.subject)
        for p in items
        if p.event and p.event.subject and p.event.version is not None and p.route and p.route.version_guard
    ]


def _connection_lost(session: AsyncSession) -> bool:
    try:
        conn = session.sync_session.connection()
    except Exception:
        return True
    return bool(conn.invalidated or conn.closed)
