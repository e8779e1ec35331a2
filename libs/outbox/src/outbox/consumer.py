"""The idempotent consumer: each event applied exactly once in effect.

Per partition batch, one database transaction; per message, a savepoint holding the inbox row
(consumer, event id) and the handler's effect. Duplicates hit the inbox primary key and are skipped.
The Kafka offset is committed only after the database commit, so a crash anywhere replays the batch and
the inbox absorbs what was already applied. Handler errors retry with backoff; after `max_attempts` the
event goes to the dead-letter topic with the error and the partition moves on. Malformed records
(not JSON, missing headers, no handler) are dead-lettered at once.
"""

from __future__ import annotations

import asyncio
import fnmatch
import logging
import os
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, cast

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.errors import CommitFailedError, IllegalStateError, KafkaError
from opentelemetry import trace
from opentelemetry.trace import Link, Span, SpanKind, Status, StatusCode
from sqlalchemy import text, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from tenacity import AsyncRetrying, retry_if_exception, stop_after_attempt, wait_exponential_jitter

from outbox.envelope import MalformedMessage, ReceivedEvent, decode_record
from outbox.health import Heartbeat
from outbox.kafka import bootstrap_from_env, ensure_topics, start_producer, topic_prefix
from outbox.metrics import consumer_metrics, observe_consumer_lag
from outbox.schema import inbox_table
from outbox.tracing import MESSAGING_BATCH_MESSAGE_COUNT, context_from, process_attributes, tracer

log = logging.getLogger("outbox.consumer")

Handler = Callable[["EventContext"], Awaitable[None]]
BatchHandler = Callable[["BatchContext"], Awaitable[None]]


def _env_int(name: str, default: int) -> int:
    return int(os.environ.get(name, str(default)))


def _env_float(name: str, default: float) -> float:
    return float(os.environ.get(name, str(default)))


@dataclass(frozen=True, slots=True)
class ConsumerSettings:
    bootstrap: str = field(default_factory=bootstrap_from_env)
    topic_prefix: str = field(default_factory=topic_prefix)
    max_attempts: int = 5
    retry_initial_s: float = 0.05
    retry_max_s: float = 2.0
    max_batch: int = 500
    poll_timeout_ms: int = 200
    # How long the broker may hold an empty fetch. Some brokers answer a held fetch only when it expires,
    # not when data arrives, so this bounds delivery latency; lower costs idle CPU (one fetch per wait).
    fetch_max_wait_ms: int = 5
    session_timeout_ms: int = 10_000
    heartbeat_interval_ms: int = 1_000
    # Must exceed half the session timeout: some brokers hold JoinGroup that long.
    request_timeout_ms: int = 20_000
    # How long to wait before retrying a batch whose transaction failed (database down, say).
    outage_backoff_max_s: float = 5.0

    @classmethod
    def from_env(cls) -> ConsumerSettings:
        return cls(
            max_attempts=_env_int("OUTBOX_CONSUMER_MAX_ATTEMPTS", 5),
            retry_initial_s=_env_float("OUTBOX_CONSUMER_RETRY_INITIAL_S", 0.05),
            retry_max_s=_env_float("OUTBOX_CONSUMER_RETRY_MAX_S", 2.0),
            max_batch=_env_int("OUTBOX_CONSUMER_MAX_BATCH", 500),
            fetch_max_wait_ms=_env_int("OUTBOX_CONSUMER_FETCH_MAX_WAIT_MS", 5),
            session_timeout_ms=_env_int("OUTBOX_CONSUMER_SESSION_TIMEOUT_MS", 10_000),
        )


@dataclass(slots=True)
class EventContext:
    """What a handler gets: the event and the session of the transaction that also holds the inbox row.

    Handlers change state through `session` (flush, never commit) and may record events of their own
    with an OutboxWriter on the same session: they commit together with the effect.
    """

    event: ReceivedEvent
    session: AsyncSession
    consumer: str
    attempt: int


@dataclass(slots=True)
class BatchContext:
    """What a batch handler gets: consecutive fresh events of its types (in delivery order, stale ones
    already dropped) and the session of the transaction that holds their inbox rows. On the careful path
    (after a failure) it is called with one event at a time, inside that event's savepoint."""

    events: list[ReceivedEvent]
    session: AsyncSession
    consumer: str
    attempt: int


@dataclass(slots=True)
class ConsumerStats:
    applied: int = 0
    duplicates: int = 0
    stale: int = 0
    ignored: int = 0
    dead_lettered: int = 0
    retries: int = 0
    batch_failures: int = 0


@dataclass(frozen=True, slots=True)
class _Route:
    pattern: str
    handler: Handler | BatchHandler
    version_guard: bool
    batch: bool = False

    async def call(
        self, session: AsyncSession, consumer: str, events: list[ReceivedEvent], attempt: int
    ) -> None:
        if self.batch:
            batch_handler = cast(BatchHandler, self.handler)
            await batch_handler(
                BatchContext(events=events, session=session, consumer=consumer, attempt=attempt)
            )
        else:
            [event] = events
            handler = cast(Handler, self.handler)
            await handler(EventContext(event=event, session=session, consumer=consumer, attempt=attempt))


class _DeadLetter(Exception):
    def __init__(self, reason: str, attempts: int) -> None:
        super().__init__(reason)
        self.reason = reason
        self.attempts = attempts


class IdempotentConsumer:
    """A consumer group member that applies events through registered handlers, exactly once in effect.

    `name` is both the Kafka consumer group and the inbox key. Handlers register per CloudEvents type
    (`fnmatch` patterns allowed, e.g. `console.document.*`). With `version_guard`, an event whose aggregate
    version is lower than the highest this consumer applied for that aggregate is recorded as stale and
    skipped (equal versions pass: several event types may share one version).
    """

    def __init__(
        self,
        name: str,
        topics: Sequence[str],
        session_factory: async_sessionmaker[AsyncSession],
        settings: ConsumerSettings | None = None,
        *,
        dead_letter_topic: str | None = None,
    ) -> None:
        self.name = name
        self.topics = list(topics)
        self.sessions = session_factory
        self.settings = settings or ConsumerSettings.from_env()
        # On the wire: the prefixed names. Handlers see logical topics (prefix stripped).
        self.wire_topics = [self.settings.topic_prefix + t for t in self.topics]
        self.dead_letter_topic = self.settings.topic_prefix + (dead_letter_topic or f"{name}.dlq")
        self.stats = ConsumerStats()
        self._routes: list[_Route] = []
        self._ignored: list[str] = []
        self._stopping = asyncio.Event()
        self._consumer: AIOKafkaConsumer | None = None
        self._producer: AIOKafkaProducer | None = None

    # -- registration -------------------------------------------------------------------------------------
    def handler(self, *types: str, version_guard: bool = True) -> Callable[[Handler], Handler]:
        def register(fn: Handler) -> Handler:
            for t in types:
                self._routes.append(_Route(t, fn, version_guard))
            return fn

        return register

    def batch_handler(
        self, *types: str, version_guard: bool = True
    ) -> Callable[[BatchHandler], BatchHandler]:
        """Register a handler that applies many events per call (bulk SQL): the same guarantees, a fraction
        of the round trips. Consecutive events routed to it within one fetched batch come in one call."""

        def register(fn: BatchHandler) -> BatchHandler:
            for t in types:
                self._routes.append(_Route(t, fn, version_guard, batch=True))
            return fn

        return register

    def ignore(self, *types: str) -> None:
        """Types this consumer deliberately skips (recorded in the inbox, not dead-lettered)."""
        self._ignored.extend(types)

    def _route(self, event_type: str) -> _Route | None:
        for route in self._routes:
            if route.pattern == event_type or fnmatch.fnmatchcase(event_type, route.pattern):
                return route
        return None

    def _is_ignored(self, event_type: str) -> bool:
        return any(fnmatch.fnmatchcase(event_type, p) for p in self._ignored)

    # -- lifecycle ----------------------------------------------------------------------------------------
    async def start(self) -> None:
        s = self.settings
        await ensure_topics(s.bootstrap, [*self.wire_topics, self.dead_letter_topic])
        self._producer = await start_producer(s.bootstrap, idempotent=True)
        self._consumer = AIOKafkaConsumer(
            *self.wire_topics,
            bootstrap_servers=s.bootstrap,
            group_id=self.name,
            enable_auto_commit=False,
            # "latest" can skip or replay on some brokers; earliest + the inbox is always correct.
            auto_offset_reset="earliest",
            session_timeout_ms=s.session_timeout_ms,
            heartbeat_interval_ms=s.heartbeat_interval_ms,
            request_timeout_ms=s.request_timeout_ms,
            max_poll_records=s.max_batch,
            fetch_max_wait_ms=s.fetch_max_wait_ms,
            metadata_max_age_ms=5_000,
        )
        await self._consumer.start()
        log.info("consumer %s subscribed to %s", self.name, ", ".join(self.wire_topics))

    def stop(self) -> None:
        """Ask the loop to finish the batch in hand and return."""
        self._stopping.set()

    async def close(self) -> None:
        if self._consumer is not None:
            await self._consumer.stop()
            self._consumer = None
        if self._producer is not None:
            await self._producer.stop()
            self._producer = None

    async def run(self) -> None:
        """Consume until `stop()`; starts and closes the Kafka clients itself."""
        await self.start()
        try:
            await self._loop()
        finally:
            await self.close()

    # -- the loop -----------------------------------------------------------------------------------------
    async def _loop(self) -> None:
        assert self._consumer is not None
        consumer = self._consumer
        backoff = self.settings.retry_initial_s
        heartbeat = Heartbeat.from_env()
        while not self._stopping.is_set():
            heartbeat.beat()
            await observe_consumer_lag(self.name, consumer)
            fetched = await consumer.getmany(
                timeout_ms=self.settings.poll_timeout_ms, max_records=self.settings.max_batch
            )
            batches = {tp: records for tp, records in fetched.items() if records}
            if not batches:
                continue
            started = time.monotonic()
            try:
                # One transaction and one offset commit for everything fetched, across partitions: the
                # offset commit is a broker round trip, so doing it per partition would dominate latency.
                await self._process_batch([r for records in batches.values() for r in records])
            except Exception:
                # The transaction failed as a whole (database unreachable, say): nothing was committed.
                # Rewind so the same records come again, back off, go on.
                self.stats.batch_failures += 1
                log.exception(
                    "consumer %s: batch of %s failed; retrying in %.2fs",
                    self.name,
                    ", ".join(
                        f"{tp.topic}[{tp.partition}]@{r[0].offset}..{r[-1].offset}"
                        for tp, r in batches.items()
                    ),
                    backoff,
                )
                for tp, records in batches.items():
                    consumer.seek(tp, records[0].offset)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, self.settings.outage_backoff_max_s)
                continue
            backoff = self.settings.retry_initial_s
            await self._commit_offsets({tp: records[-1].offset + 1 for tp, records in batches.items()})
            counts = {(tp.topic, tp.partition): len(records) for tp, records in batches.items()}
            consumer_metrics().batch_done(self.name, counts, self.stats, started)

    async def _commit_offsets(self, offsets: dict[TopicPartition, int]) -> None:
        assert self._consumer is not None
        try:
            await self._consumer.commit(offsets)
        except (CommitFailedError, IllegalStateError) as exc:
            # The partition moved to another member during a rebalance: it will redeliver from the last
            # committed offset and the inbox absorbs what this member already applied.
            log.warning("consumer %s: offset commit lost to a rebalance (%s)", self.name, exc)

    async def _process_batch(self, records: Sequence[ConsumerRecord[bytes, bytes]]) -> None:
        """Fast path first: the whole batch in one transaction without savepoints, inbox rows in one
        statement. If any handler raises, that transaction rolls back (nothing of it persists) and the batch
        is replayed on the careful path: a savepoint, retries and dead-lettering per message."""
        parsed = [self._parse(record) for record in records]
        try:
            async with self.sessions() as session, session.begin():
                await self._apply_batch(session, parsed)
        except _HandlerFailed:
            async with self.sessions() as session, session.begin():
                for item in parsed:
                    await self._process_record(session, item)

    def _parse(self, record: ConsumerRecord[bytes, bytes]) -> _Parsed:
        try:
            event = decode_record(
                topic=record.topic.removeprefix(self.settings.topic_prefix),
                partition=record.partition,
                offset=record.offset,
                headers=record.headers,
                value=record.value,
            )
        except MalformedMessage as exc:
            return _Parsed(record, None, None, f"malformed: {exc}")
        route = self._route(event.type)
        if route is None and not self._is_ignored(event.type):
            return _Parsed(record, event, None, f"no handler for event type {event.type!r}")
        return _Parsed(record, event, route, None)

    def _span(self, item: _Parsed) -> Span:
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
                self.name,
                partition=item.record.partition,
                offset=item.record.offset,
                message_id=str(item.event.id),
            ),
        )

    async def _apply_batch(self, session: AsyncSession, parsed: Sequence[_Parsed]) -> None:
        valid = [p for p in parsed if p.problem is None and p.event is not None]
        fresh: set[uuid.UUID] = set()
        if valid:
            # Inserting the inbox rows first also serialises two members that got the same partition during
            # a rebalance: the second blocks on the primary key, then sees a conflict and skips.
            rows = [
                self._inbox_row(p.event, "ignored" if p.route is None else "applied")
                for p in valid
                if p.event
            ]
            # One constant statement over arrays: a multi-VALUES insert would be compiled and parsed anew
            # for every batch size (measured at several ms per batch).
            inserted = await session.execute(
                _BULK_INBOX,
                {column: [row[column] for row in rows] for column in _INBOX_COLUMNS},
            )
            fresh = set(inserted.scalars())
        stale: list[uuid.UUID] = []
        counts = ConsumerStats()
        group: tuple[_Route, list[ReceivedEvent]] | None = None  # consecutive events for one batch handler
        for item in parsed:
            event = item.event
            if item.problem is not None or event is None:
                continue
            if event.id not in fresh:
                counts.duplicates += 1
                continue
            fresh.discard(event.id)  # a second copy inside this batch is a duplicate too
            if item.route is None:
                counts.ignored += 1
                continue
            route = item.route
            span = self._span(item)
            with trace.use_span(span, end_on_exit=True):
                if (
                    route.version_guard
                    and event.version is not None
                    and not await self._advance_version(session, event)
                ):
                    stale.append(event.id)
                    counts.stale += 1
                    span.set_attribute("outbox.outcome", "stale")
                    continue
                span.set_attribute("outbox.outcome", "applied")
                counts.applied += 1
                if route.batch:
                    if group and group[0].handler is not route.handler:
                        await self._call_group(session, group)
                        group = None
                    group = group or (route, [])
                    group[1].append(event)
                    continue
                if group:
                    await self._call_group(session, group)
                    group = None
                await self._call_fast(session, route, [event], span)
        if group:
            await self._call_group(session, group)
        if stale:
            await session.execute(
                update(inbox_table)
                .where(inbox_table.c.consumer == self.name, inbox_table.c.event_id.in_(stale))
                .values(outcome="stale")
            )
        for item in parsed:
            if item.problem is not None:
                await self._dead_letter(item.record, item.problem, attempts=0)
        self.stats.applied += counts.applied
        self.stats.duplicates += counts.duplicates
        self.stats.stale += counts.stale
        self.stats.ignored += counts.ignored

    async def _call_group(self, session: AsyncSession, group: tuple[_Route, list[ReceivedEvent]]) -> None:
        route, events = group
        # One span for the call, linked to every event's trace (a span has one parent, a batch many).
        links = [Link(trace.get_current_span(context_from(e.headers)).get_span_context()) for e in events]
        span = tracer().start_span(
            f"process {events[0].topic}",
            kind=SpanKind.CONSUMER,
            links=links,
            attributes={
                **process_attributes(events[0].topic, self.name, partition=events[0].partition),
                MESSAGING_BATCH_MESSAGE_COUNT: len(events),
                "outbox.handler": route.pattern,
            },
        )
        with trace.use_span(span, end_on_exit=True):
            await self._call_fast(session, route, events, span)

    async def _call_fast(
        self, session: AsyncSession, route: _Route, events: list[ReceivedEvent], span: Span
    ) -> None:
        try:
            await route.call(session, self.name, list(events), attempt=1)
        except Exception as exc:
            span.record_exception(exc)
            raise _HandlerFailed from exc

    def _inbox_row(self, event: ReceivedEvent, outcome: str) -> dict[str, Any]:
        return {
            "consumer": self.name,
            "event_id": event.id,
            "event_type": event.type,
            "topic": event.topic,
            "partition": event.partition,
            "offset": event.offset,
            "aggregate_id": event.subject,
            "aggregate_version": event.version,
            "outcome": outcome,
        }

    async def _process_record(self, session: AsyncSession, item: _Parsed) -> None:
        if item.problem is not None or item.event is None:
            await self._dead_letter(item.record, item.problem or "undecodable", attempts=0)
            return
        span = self._span(item)
        with trace.use_span(span, end_on_exit=True):
            try:
                outcome = await self._apply_with_retries(session, item.event, item.route)
                span.set_attribute("outbox.outcome", outcome)
            except _DeadLetter as dead:
                span.set_status(Status(StatusCode.ERROR, dead.reason))
                await self._dead_letter(item.record, dead.reason, attempts=dead.attempts)

    async def _apply_with_retries(
        self, session: AsyncSession, event: ReceivedEvent, route: _Route | None
    ) -> str:
        s = self.settings
        attempt = 0
        last_error: BaseException | None = None
        try:
            async for attempt_state in AsyncRetrying(
                stop=stop_after_attempt(s.max_attempts),
                wait=wait_exponential_jitter(
                    multiplier=s.retry_initial_s, max=s.retry_max_s, jitter=s.retry_initial_s
                ),
                retry=retry_if_exception(lambda e: not isinstance(e, _FatalDatabaseError)),
                reraise=True,
            ):
                with attempt_state:
                    attempt = attempt_state.retry_state.attempt_number
                    if attempt > 1:
                        self.stats.retries += 1
                    return await self._apply_once(session, event, route, attempt)
        except _FatalDatabaseError:
            raise
        except Exception as exc:
            last_error = exc
        reason = f"handler failed after {attempt} attempts: {type(last_error).__name__}: {last_error}"
        log.error("consumer %s: dead-lettering %s (%s): %s", self.name, event.id, event.type, reason)
        raise _DeadLetter(reason, attempt)

    async def _apply_once(
        self, session: AsyncSession, event: ReceivedEvent, route: _Route | None, attempt: int
    ) -> str:
        try:
            async with session.begin_nested():
                outcome = await self._apply_in_savepoint(session, event, route, attempt)
        except _Duplicate:
            outcome = "duplicate"
        except Exception as exc:
            if _connection_lost(session):
                raise _FatalDatabaseError(str(exc)) from exc
            raise
        if outcome == "applied":
            self.stats.applied += 1
        elif outcome == "duplicate":
            self.stats.duplicates += 1
        elif outcome == "stale":
            self.stats.stale += 1
        else:
            self.stats.ignored += 1
        return outcome

    async def _apply_in_savepoint(
        self, session: AsyncSession, event: ReceivedEvent, route: _Route | None, attempt: int
    ) -> str:
        guarded = route is not None and route.version_guard and event.version is not None
        stale = False
        if guarded:
            stale = not await self._advance_version(session, event)
        outcome = "ignored" if route is None else "stale" if stale else "applied"
        inserted = await session.execute(
            pg_insert(inbox_table)
            .values(**self._inbox_row(event, outcome))
            .on_conflict_do_nothing(index_elements=["consumer", "event_id"])
            .returning(inbox_table.c.event_id)
        )
        if inserted.first() is None:
            raise _Duplicate
        if outcome == "applied":
            assert route is not None
            await route.call(session, self.name, [event], attempt)
        return outcome

    async def _advance_version(self, session: AsyncSession, event: ReceivedEvent) -> bool:
        """Record the event's version as the aggregate's highest; False when a higher one was applied."""
        row = await session.execute(
            text(
                "INSERT INTO consumer_versions (consumer, topic, aggregate_id, version) "
                "VALUES (:c, :t, :a, :v) "
                "ON CONFLICT (consumer, topic, aggregate_id) DO UPDATE SET version = EXCLUDED.version "
                "WHERE consumer_versions.version <= EXCLUDED.version RETURNING version"
            ),
            {"c": self.name, "t": event.topic, "a": event.subject or "", "v": event.version},
        )
        return row.first() is not None

    async def _dead_letter(self, record: ConsumerRecord[bytes, bytes], reason: str, *, attempts: int) -> None:
        assert self._producer is not None
        headers = [(k, v) for k, v in (record.headers or ()) if not k.startswith("dlq_")]
        headers += [
            ("dlq_reason", reason.encode()[:4000]),
            ("dlq_consumer", self.name.encode()),
            ("dlq_original_topic", record.topic.encode()),
            ("dlq_original_partition", str(record.partition).encode()),
            ("dlq_original_offset", str(record.offset).encode()),
            ("dlq_attempts", str(attempts).encode()),
            ("dlq_time", datetime.now(UTC).isoformat().encode()),
        ]
        # Awaited before the offset commit: a dead letter is never lost, at worst written twice.
        started = time.monotonic()
        while True:
            try:
                fut = await self._producer.send(
                    self.dead_letter_topic, value=record.value, key=record.key, headers=headers
                )
                await fut
                break
            except KafkaError as exc:
                if time.monotonic() - started > 60:
                    raise
                log.warning("consumer %s: dead-letter publish failed (%s); retrying", self.name, exc)
                await asyncio.sleep(0.5)
        self.stats.dead_lettered += 1
        log.warning(
            "consumer %s: dead-lettered %s[%d]@%d to %s: %s",
            self.name,
            record.topic,
            record.partition,
            record.offset,
            self.dead_letter_topic,
            reason,
        )


@dataclass(frozen=True, slots=True)
class _Parsed:
    record: ConsumerRecord[bytes, bytes]
    event: ReceivedEvent | None
    route: _Route | None
    problem: str | None  # set: dead-letter this record with this reason


class _HandlerFailed(Exception):
    """A handler raised on the fast path: replay the batch on the careful path."""


_INBOX_COLUMNS = (
    "consumer",
    "event_id",
    "event_type",
    "topic",
    "partition",
    "offset",
    "aggregate_id",
    "aggregate_version",
    "outcome",
)
_BULK_INBOX = text(
    """
    INSERT INTO inbox (consumer, event_id, event_type, topic, partition, "offset", aggregate_id, aggregate_version, outcome)
    SELECT * FROM unnest(
        CAST(:consumer AS text[]), CAST(:event_id AS uuid[]), CAST(:event_type AS text[]), CAST(:topic AS text[]),
        CAST(:partition AS integer[]), CAST(:offset AS bigint[]), CAST(:aggregate_id AS text[]),
        CAST(:aggregate_version AS bigint[]), CAST(:outcome AS text[])
    )
    ON CONFLICT (consumer, event_id) DO NOTHING
    RETURNING event_id
    """
)


class _Duplicate(Exception):
    """The inbox already holds this event: raised inside the savepoint so nothing of it persists."""


class _FatalDatabaseError(Exception):
    """The connection itself failed: retrying inside this transaction cannot help."""


def _connection_lost(session: AsyncSession) -> bool:
    try:
        conn = session.sync_session.connection()
    except Exception:
        return True
    return bool(conn.invalidated or conn.closed)
