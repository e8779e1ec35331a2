"""The idempotent consumer: each event applied exactly once in effect.

Per fetched batch, one database transaction holding every event's inbox row (consumer, event id) and its
handler's effect; the Kafka offsets are committed only after the database commit, so a crash anywhere
replays the batch and the inbox absorbs what was already applied. The fast path applies the batch without
savepoints; if a handler raises, that transaction rolls back and the batch is replayed on the careful
path: one savepoint per event, retries with backoff, and dead-lettering (at once for `Reject`, after
`max_attempts` otherwise), committed every `careful_chunk` events. Malformed records (not JSON, missing
headers, no handler) are dead-lettered at once; a dead-lettered event gets an inbox row (`dead`), so its
redelivery is a duplicate, not a second dead letter.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Sequence

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.errors import CommitFailedError, IllegalStateError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from outbox.consumer.apply import ApplyPipeline, RetryPolicy
from outbox.consumer.apply_types import ConsumerStats
from outbox.consumer.dead_letters import DeadLetterSender
from outbox.consumer.dead_letters import dead_letter_topic as dead_letter_topic_of
from outbox.consumer.handlers import BatchContext, EventContext, EventSink, Reject
from outbox.consumer.inbox import InboxStore
from outbox.consumer.ports import DeadLetters, Inbox
from outbox.consumer.retention import expire_parked, prune_versions
from outbox.consumer.routing import HandlerRegistry
from outbox.consumer.settings import CONSUMER_ENV, ConsumerSettings
from outbox.kafka import clients as kafka_clients
from outbox.kafka import ensure_topics, start_producer
from outbox.log_throttle import LogThrottle
from outbox.periodic import cancel_and_wait, every
from outbox.telemetry.heartbeat import Heartbeat
from outbox.telemetry.metrics import consumer_metrics, observe_consumer_lag

__all__ = [
    "CONSUMER_ENV",
    "BatchContext",
    "ConsumerSettings",
    "ConsumerStats",
    "EventContext",
    "IdempotentConsumer",
    "Reject",
]

log = logging.getLogger("outbox.consumer")


class IdempotentConsumer(HandlerRegistry):
    """A consumer group member that applies events through registered handlers, exactly once in effect.

    `name` is both the Kafka consumer group and the inbox key. Handlers register per CloudEvents type
    (`fnmatch` patterns allowed, e.g. `console.document.*`), with a pydantic `payload=` model to get the
    data validated (`HandlerRegistry.handler`). With `version_guard`, an event whose aggregate version is
    lower than the highest this consumer applied for that aggregate (its subject) is recorded as stale and
    skipped (equal versions pass: several event types may share one version). With `writer` (an
    `OutboxWriter`), handlers record follow-up events with `ctx.emit(...)`: written to this service's outbox
    in the same transaction as their effect, the one way a handler emits.
    """

    def __init__(
        self,
        name: str,
        topics: Sequence[str],
        session_factory: async_sessionmaker[AsyncSession],
        settings: ConsumerSettings | None = None,
        *,
        dead_letter_topic: str | None = None,
        writer: EventSink | None = None,
    ) -> None:
        self.settings = settings or ConsumerSettings.from_env()
        super().__init__(self.settings.topic_prefix)
        self.name = name
        self.topics = list(topics)
        self.sessions = session_factory
        self.writer = writer
        # On the wire: the prefixed names. Handlers see logical topics (prefix stripped).
        self.wire_topics = [self.settings.topic_prefix + t for t in self.topics]
        self.dead_letter_topic = (
            self.settings.topic_prefix + dead_letter_topic
            if dead_letter_topic
            else dead_letter_topic_of(name, self.settings.topic_prefix)
        )
        self.stats = ConsumerStats()
        self.inbox = InboxStore(name)
        self.outage_log = LogThrottle(log)
        self._stopping = asyncio.Event()
        self._consumer: AIOKafkaConsumer | None = None
        self._producer: AIOKafkaProducer | None = None
        self._pipeline: ApplyPipeline | None = None

    def pipeline(
        self,
        inbox: Inbox,
        dead_letters: DeadLetters,
        writer: EventSink | None,
        retry: RetryPolicy | None = None,
    ) -> ApplyPipeline:
        """The apply pipeline of this consumer's handlers over these stores (`outbox.testing` builds its
        harness with this, over in-memory ones)."""
        s = self.settings
        pipeline = ApplyPipeline(
            self.name,
            inbox,
            dead_letters,
            retry or RetryPolicy(s.max_attempts, s.retry_initial_s, s.retry_max_s),
            writer,
            self.parse,
            release_round=s.max_batch,
            savepoints=s.careful_chunk,
        )
        pipeline.tracks_gaps = self.gap_aware
        return pipeline

    # -- lifecycle ----------------------------------------------------------------------------------------
    async def start(self) -> None:
        s = self.settings
        await ensure_topics(s.bootstrap, [*self.wire_topics, self.dead_letter_topic])
        self._producer = await start_producer(s.bootstrap, idempotent=True)
        self._pipeline = self.pipeline(
            self.inbox, DeadLetterSender(self._producer, self.dead_letter_topic, self.name), self.writer
        )
        self._consumer = kafka_clients.KafkaConsumer(
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
        """Consume until `stop()`; starts (with backoff) and closes the Kafka clients, prunes the inbox."""
        if not await kafka_clients.start_with_backoff(
            f"consumer {self.name}", self.start, self.close, self._stopping
        ):
            return
        background = [asyncio.create_task(self._prune_loop(), name="outbox-inbox-prune")]
        if self.gap_aware:
            background.append(asyncio.create_task(self._park_loop(), name="outbox-parked-sweep"))
        try:
            await self._loop()
        finally:
            await cancel_and_wait(background)
            await self.close()

    async def _prune_loop(self) -> None:
        await every(
            self.settings.inbox_prune_interval_s,
            self.prune,
            stopping=self._stopping,
            log=self.outage_log,
            failed=f"consumer {self.name}: pruning failed",
        )

    async def prune(self) -> dict[str, int]:
        """One round of the prune loop: inbox rows, version rows (never below the inbox retention), and,
        once started, events parked past `park_retention` (to the dead-letter topic: `consumer_retention`)."""
        s = self.settings
        pruned = {
            "inbox": await self.inbox.prune(self.sessions, s.inbox_retention),
            "versions": await prune_versions(
                self.sessions, self.name, max(s.version_retention, s.inbox_retention)
            ),
            "gap_expired": 0,
        }
        if self._pipeline is not None:
            expired = await expire_parked(self.sessions, self.name, self._pipeline, s.park_retention)
            if expired:
                pruned["gap_expired"] = expired
                self.stats.gap_expired += expired
                consumer_metrics().stats_changed(self.name, self.stats)
        return pruned

    async def _park_loop(self) -> None:
        await every(
            self.settings.park_sweep_interval_s,
            self.release_parked,
            stopping=self._stopping,
            log=self.outage_log,
            failed=f"consumer {self.name}: releasing parked events failed",
        )

    async def release_parked(self) -> ConsumerStats:
        """Apply parked events whose gap closed (by another member, say); warn about long-parked ones."""
        pipeline = self._pipeline
        assert pipeline is not None, "IdempotentConsumer.start() not called"
        counts = await pipeline.release_parked(self.sessions)
        self.stats.merge(counts)
        async with self.sessions() as session:
            waiting = await self.inbox.parked(session)
        now = time.time()
        oldest = max((now - row.since.timestamp() for row in waiting), default=0.0)
        consumer_metrics().set_parked(
            self.name, sum(row.events for row in waiting), oldest, self.settings.park_alert_after_s
        )
        for row in waiting:
            if now - row.since.timestamp() > self.settings.park_alert_after_s:
                log.error(
                    "consumer %s: %d event(s) of %s %s parked since %s, waiting for version %s: "
                    "find it with `outbox why %s` (dead-lettered upstream? redrive it; lost for good? "
                    "`outbox skip-gap`); past OUTBOX_CONSUMER_PARK_RETENTION_HOURS they are dead-lettered",
                    self.name,
                    row.events,
                    row.topic,
                    row.aggregate_id,
                    row.since.isoformat(),
                    row.waiting_for,
                    row.aggregate_id,
                )
        return counts

    # -- the loop -----------------------------------------------------------------------------------------
    async def _loop(self) -> None:
        assert self._consumer is not None
        consumer = self._consumer
        backoff = self.settings.retry_initial_s
        heartbeat = Heartbeat.from_env()
        # The offset commit (a broker round trip) runs while the next batch is fetched and applied; each
        # commit waits for the one before, so offsets only move forward. A crash before one lands
        # redelivers a batch the database already holds, and the inbox absorbs it.
        committing: asyncio.Task[None] | None = None
        try:
            while not self._stopping.is_set():
                heartbeat.beat()
                await observe_consumer_lag(self.name, consumer)
                fetched = await consumer.getmany(
                    timeout_ms=self.settings.poll_timeout_ms, max_records=self.settings.max_batch
                )
                batches = {tp: records for tp, records in fetched.items() if records}
                if not batches:
                    continue
                await self._linger(consumer, batches)
                started = time.monotonic()
                try:
                    # One transaction and one offset commit for everything fetched, across partitions.
                    await self._process_batch([r for records in batches.values() for r in records])
                except Exception:
                    # The transaction failed as a whole (database unreachable, say): nothing was committed.
                    # Rewind so the same records come again, back off, go on.
                    self.stats.batch_failures += 1
                    self.outage_log.log(
                        logging.ERROR,
                        "batch",
                        "consumer %s: batch of %s failed; retrying in %.2fs",
                        self.name,
                        ", ".join(
                            f"{tp.topic}[{tp.partition}]@{r[0].offset}..{r[-1].offset}"
                            for tp, r in batches.items()
                        ),
                        backoff,
                        exc_info=True,
                    )
                    self._rewind(consumer, batches)
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, self.settings.outage_backoff_max_s)
                    continue
                backoff = self.settings.retry_initial_s
                self.outage_log.recovered("batch", "consumer %s: applying again", self.name)
                if committing is not None:
                    await committing
                offsets = {tp: records[-1].offset + 1 for tp, records in batches.items()}
                committing = asyncio.create_task(self._commit_offsets(offsets))
                counts = {(tp.topic, tp.partition): len(records) for tp, records in batches.items()}
                consumer_metrics().batch_done(self.name, counts, self.stats, started)
        finally:
            if committing is not None:
                await committing

    async def _linger(
        self, consumer: AIOKafkaConsumer, batches: dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]]
    ) -> None:
        """`batch_linger_ms`: add what arrives within the linger to a short batch (after each partition's
        records, so every partition stays in offset order)."""
        room = self.settings.max_batch - sum(len(records) for records in batches.values())
        deadline = time.monotonic() + self.settings.batch_linger_ms / 1000
        # A poll hands out one prefetched response at a time: poll until the linger is over.
        while room > 0 and (left_ms := int((deadline - time.monotonic()) * 1000)) > 0:
            more = await consumer.getmany(timeout_ms=left_ms, max_records=room)
            for tp, records in more.items():
                batches.setdefault(tp, []).extend(records)
                room -= len(records)

    def _rewind(
        self, consumer: AIOKafkaConsumer, batches: dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]]
    ) -> None:
        """Seek back to the failed batch's first offsets, for the partitions this member still holds: a
        rebalance during the failure may have moved some away (seeking those raises), and their new owner
        starts from the last committed offset anyway."""
        held = consumer.assignment()
        for tp, records in batches.items():
            if tp in held:
                with contextlib.suppress(IllegalStateError):  # revoked between the check and the seek
                    consumer.seek(tp, records[0].offset)

    async def _commit_offsets(self, offsets: dict[TopicPartition, int]) -> None:
        assert self._consumer is not None
        try:
            await self._consumer.commit(offsets)
        except (CommitFailedError, IllegalStateError) as exc:
            # The partition moved to another member during a rebalance: it will redeliver from the last
            # committed offset and the inbox absorbs what this member already applied.
            log.warning("consumer %s: offset commit lost to a rebalance (%s)", self.name, exc)

    async def _process_batch(self, records: Sequence[ConsumerRecord[bytes, bytes]]) -> None:
        pipeline = self._pipeline
        assert pipeline is not None, "IdempotentConsumer.start() not called"
        parsed = [self.parse(record) for record in records]
        await pipeline.process(
            self.sessions, parsed, budget_s=self.settings.careful_budget_s, into=self.stats
        )
