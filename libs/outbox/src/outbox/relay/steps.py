"""One batch's steps, as both publish loops drive them (`pipeline.PublishPipeline`: one batch at a time, or
claiming ahead under a backlog): get ready (`prepare`), `claim`, `send`, `apply` the broker's answer, and
react to an outage (`after_outage`). A base class of `Relay`, so a relay is its own steps and a test can
replace one step (a publisher, `apply`) by subclassing `Relay`."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from outbox.kafka import Producers, ensure_topics
from outbox.relay.batch import Settlement, outbound, settle
from outbox.relay.failures import (
    PublishFailure,
    TransientPublishError,
    classify_publish_error,
    outages_classified,
)
from outbox.relay.publisher import BatchPublisher
from outbox.relay.settings import RelaySettings, RelayStats
from outbox.relay.shares import ShareLeases
from outbox.relay.store import ClaimedRow, OutboxStore
from outbox.telemetry.metrics import relay_metrics

log = logging.getLogger("outbox.relay")


class BatchSteps:
    def __init__(self, engine: AsyncEngine, settings: RelaySettings, name: str) -> None:
        self.settings = settings
        self.engine = engine
        self.name = name
        self.stats = RelayStats()
        self.store = OutboxStore()
        self.publisher: BatchPublisher | None = None
        self._stopping = asyncio.Event()
        self._starting = asyncio.Lock()
        self._known_topics: set[str] = set()
        self._wanted_topics: set[str] = set()  # met in a claim, created before the next one
        # Set by `Relay.run()` when settings.shares > 0; a relay driven step by step claims from every share.
        self.leases: ShareLeases | None = None
        s = settings
        # One for the relay's lifetime: a broker that refused the idempotent producer is not asked again.
        self._producers = Producers(
            s.bootstrap,
            linger_ms=s.linger_ms,
            max_request_size=s.max_message_bytes,
            max_batch_size=s.batch_bytes,
            compression_type=s.compression,
            request_timeout_ms=15_000,
        )

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    async def start(self) -> None:
        self.publisher = self.make_publisher(await self._producers.start())

    def make_publisher(self, producer: AIOKafkaProducer) -> BatchPublisher:
        return BatchPublisher(
            producer,
            max_request_size=self.settings.max_message_bytes,
            ack_timeout_s=self.settings.ack_timeout_s,
        )

    def wants_topics(self) -> bool:
        """A claim met a topic not created yet: its rows stayed pending until `prepare` creates it."""
        return bool(self._wanted_topics)

    async def prepare(self) -> BatchPublisher:
        """Everything a claim needs that may wait on the broker, done before claiming: a claim is a
        transaction holding its rows' locks, and a silent broker makes each of these wait 10-15 s (the
        clients' request timeouts), where the claim itself may only wait the ack deadline. Creates the
        topics earlier claims met, starts a producer if none runs; raises TransientPublishError."""
        async with outages_classified():
            await self._ensure_topics()
            return await self.ready_publisher()

    async def claim(self, conn: AsyncConnection, in_flight: Sequence[int] = ()) -> list[ClaimedRow]:
        shares = None
        if self.leases is not None:
            if not self.leases.held:
                return []  # another relay publishes every share for now
            shares = (self.leases.total, sorted(self.leases.held))
        rows = await self.store.claim(
            conn,
            self.settings.batch_size,
            block_on_dead=self.settings.block_on_dead,
            in_flight=in_flight,
            shares=shares,
        )
        if rows:
            relay_metrics().claimed(self.name, len(rows))
            if any(row.behind_later for row in rows):
                await self._move_behind_later_rows(conn, rows)
        return rows

    async def _move_behind_later_rows(self, conn: AsyncConnection, rows: Sequence[ClaimedRow]) -> None:
        """Held rows waiting for a pending row of their aggregate that is ready later (a redrive or replay
        behind them) would fill every claim for ever: they move behind it, in the claim's transaction."""
        moved = await self.store.move_behind_later_rows(conn, rows)
        if moved:
            self.stats.moved_behind += moved
            log.warning(
                "relay %s: %d row(s) were ready before an earlier pending row of their aggregate "
                "(redriven or replayed?); moved behind it",
                self.name,
                moved,
            )

    async def send(self, publishable: Sequence[ClaimedRow], publisher: BatchPublisher) -> Settlement:
        """Publish a claim's rows that may go now (`in_aggregate_order`) and sort every sent row by the
        broker's answer. No database work: the caller applies the settlement.

        Rows of a topic this relay has not created yet are not sent: creating it waits on the broker, so it
        happens before the next claim (`prepare`). They stay pending, their aggregates held like any row
        that was not acknowledged, and go in that claim."""
        self.stats.batches += 1
        if not publishable:
            return Settlement()
        prefix = self.settings.topic_prefix
        new = self.new_topics(publishable)
        if new:
            self._wanted_topics |= new
            publishable = [r for r in publishable if prefix + r.topic not in new]
        items, spans, recording = outbound(publishable, prefix)
        await publisher.publish(items)
        return settle(publishable, items, spans, recording)

    async def apply(self, conn: AsyncConnection, settlement: Settlement) -> None:
        """Charge record failures to their rows (dead-lettering past `max_attempts`), mark the acked rows."""
        s = self.settings
        for row, error in settlement.failed:
            self.stats.failed_attempts += 1
            backoff = min(s.row_backoff_initial_s * 2**row.attempts, s.row_backoff_max_s)
            dead = await self.store.mark_failed(
                conn,
                row.id,
                f"{type(error).__name__}: {error}",
                backoff_s=backoff,
                max_attempts=s.max_attempts,
            )
            relay_metrics().failed(self.name, row.topic, error, dead=dead)
            if dead:
                self.stats.dead_lettered += 1
                log.error(
                    "relay %s: outbox row %d (%s %s) dead-lettered after %d attempts: %s",
                    self.name,
                    row.id,
                    row.event_type,
                    row.event_id,
                    row.attempts + 1,
                    error,
                )
            else:
                log.warning(
                    "relay %s: outbox row %d failed (%s); retry in %.1fs", self.name, row.id, error, backoff
                )
        if settlement.published:
            await self.store.mark_published(conn, [r.id for r in settlement.published])
            self.stats.published += len(settlement.published)
            relay_metrics().published(self.name, settlement.published)

    async def after_outage(self, outage: BaseException | None) -> None:
        """Once a batch's acknowledged rows are committed: replace a faulty producer, then back off."""
        if outage is None:
            return
        if classify_publish_error(outage) is PublishFailure.PRODUCER:
            await self._replace_producer(outage)
        raise TransientPublishError(f"{type(outage).__name__}: {outage}") from outage

    async def ready_publisher(self) -> BatchPublisher:
        """The publisher, started first if a producer fault (or `start()` never called) left none; the
        lock makes sure only one caller starts a producer."""
        async with self._starting:
            if self.publisher is None:
                try:
                    await self.start()
                except KafkaError as exc:
                    raise TransientPublishError(f"cannot start a producer: {exc}") from exc
            assert self.publisher is not None
            return self.publisher

    async def _replace_producer(self, cause: BaseException) -> None:
        """A new producer (new producer id, sequences from 0) for one whose sequence state is broken."""
        log.warning(
            "relay %s: producer fault (%s: %s); replacing the producer",
            self.name,
            type(cause).__name__,
            cause,
        )
        async with self._starting:
            old, self.publisher = self.publisher, None
        if old is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(old.producer.stop(), self.settings.ack_timeout_s)
        self.stats.producer_resets += 1  # the next batch starts a new one

    def new_topics(self, rows: Sequence[ClaimedRow]) -> set[str]:
        """The topics (wire names) of `rows` this relay has not created yet."""
        prefix = self.settings.topic_prefix
        return {prefix + r.topic for r in rows} - self._known_topics

    async def _ensure_topics(self) -> None:
        missing = self._wanted_topics - self._known_topics
        if missing:
            try:
                await ensure_topics(self.settings.bootstrap, sorted(missing))
            except KafkaError as exc:
                raise TransientPublishError(f"cannot create topics {sorted(missing)}: {exc}") from exc
            self._known_topics |= missing
            self._wanted_topics -= missing
