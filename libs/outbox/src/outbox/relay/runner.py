"""The relay: publishes committed outbox rows to Kafka, in order per aggregate, at least once.

Before a claim, whatever may wait on the broker for long: the topics earlier claims met are created and a
producer is started (`prepare`). Then one batch = one database transaction:
  1. claim up to `batch_size` pending rows in ready order (`available_at`, then id), `FOR UPDATE SKIP
     LOCKED` (several relays share the work without blocking each other);
  2. keep, per aggregate, only the rows that continue the aggregate's pending sequence from its head:
     a row whose predecessor is pending and not in this batch (held by another relay, or waiting on a
     retry) must wait, so two relays can never reorder one aggregate;
     held rows whose aggregate has a pending row before them that is ready later (a redrive or a
     replay behind them) move behind it, so they cannot fill every claim (`OutboxStore`);
  3. send them as record batches, one lane per partition (key = aggregate id, so one aggregate = one
     partition), each lane never past a failed batch (`publisher.py`), all under one ack deadline;
  4. mark the acked rows published; charge record-level failures to their row (attempts, error, backoff)
     and dead-letter it after `max_attempts`; commit.
A crash anywhere before the commit leaves the rows pending: they are published again (at least once) and
the consumers' inbox makes that exactly once in effect. Outages (the broker, the cluster, authorisation,
a missed ack deadline: `failures.py`) never count against a row: the acked rows are marked, the rest stay
pending, and the relay backs off.

Wake-ups: adaptive polling (immediately again after a full batch, then 1 ms doubling up to
`idle_poll_max_s`), and, when `notify_channel` is set, a LISTEN connection that wakes the relay the moment
a writer's transaction commits.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from tenacity import AsyncRetrying, retry_if_exception_type, wait_exponential_jitter

from outbox.kafka import Producers, ensure_topics
from outbox.relay.batch import Settlement, in_aggregate_order, outbound, settle
from outbox.relay.failures import (
    DatabaseUnavailable,
    PublishFailure,
    TransientPublishError,
    classify_publish_error,
    outages_classified,
)
from outbox.relay.housekeeping import RelayHousekeeping
from outbox.relay.pipeline import Pipeline
from outbox.relay.publisher import BatchPublisher
from outbox.relay.settings import RelaySettings, RelayStats
from outbox.relay.store import ClaimedRow, OutboxStore
from outbox.telemetry.heartbeat import Heartbeat
from outbox.telemetry.metrics import relay_metrics

__all__ = ["Relay", "RelaySettings", "RelayStats", "TransientPublishError"]

log = logging.getLogger("outbox.relay")


class Relay(RelayHousekeeping):
    """Publishes one database's outbox. Run several processes for availability; order per aggregate holds."""

    def __init__(
        self, database: str | AsyncEngine, settings: RelaySettings | None = None, *, name: str = "relay"
    ) -> None:
        self.settings = settings or RelaySettings.from_env()
        self.engine = create_async_engine(database, pool_size=4) if isinstance(database, str) else database
        self._owns_engine = isinstance(database, str)
        self.name = name
        self.stats = RelayStats()
        self.store = OutboxStore()
        self.publisher: BatchPublisher | None = None
        self._stopping = asyncio.Event()
        self._wake = asyncio.Event()
        self._starting = asyncio.Lock()
        self._known_topics: set[str] = set()
        self._wanted_topics: set[str] = set()  # met in a claim, created before the next one
        s = self.settings
        # One for the relay's lifetime: a broker that refused the idempotent producer is not asked again.
        self._producers = Producers(
            s.bootstrap,
            linger_ms=s.linger_ms,
            max_request_size=s.max_message_bytes,
            max_batch_size=s.batch_bytes,
            compression_type=s.compression,
            request_timeout_ms=15_000,
        )
        self._analyzed_at = -float("inf")
        self._analyze_refusal_logged = False
        self._heartbeat = Heartbeat(None)

    # -- lifecycle ----------------------------------------------------------------------------------------
    async def start(self) -> None:
        self.publisher = self.make_publisher(await self._producers.start())

    def make_publisher(self, producer: AIOKafkaProducer) -> BatchPublisher:
        return BatchPublisher(
            producer,
            max_request_size=self.settings.max_message_bytes,
            ack_timeout_s=self.settings.ack_timeout_s,
        )

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    def stop(self) -> None:
        """Finish the batch in flight, then return from `run()`."""
        self._stopping.set()
        self._wake.set()

    async def close(self) -> None:
        if self.publisher is not None:
            await self.publisher.producer.stop()
            self.publisher = None
        if self._owns_engine:
            await self.engine.dispose()

    async def run(self) -> None:
        try:
            await self.start()
        except KafkaError as exc:  # e.g. refused credentials: the publish loop retries with backoff
            log.error("relay %s: cannot start a producer: %s", self.name, exc)
        background = [asyncio.create_task(self._cleanup_loop(), name="outbox-cleanup")]
        if self.settings.notify_channel:
            background.append(asyncio.create_task(self._listen_loop(), name="outbox-listen"))
        try:
            await self._publish_loop()
        finally:
            for task in background:
                task.cancel()
            for task in background:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            await self.close()
        log.info("relay %s stopped: %s", self.name, self.stats)

    # -- publishing ---------------------------------------------------------------------------------------
    async def _publish_loop(self) -> None:
        s = self.settings
        idle = s.idle_poll_min_s
        self._heartbeat = heartbeat = Heartbeat.from_env()
        while not self._stopping.is_set():
            heartbeat.beat()
            # Cleared before the claim, not after: a commit notified while the claim runs must wake us.
            self._wake.clear()
            await self.refresh_statistics()
            claimed = await self.publish_batch_with_retries()
            if claimed >= s.batch_size:
                idle = s.idle_poll_min_s
                continue
            if claimed:
                idle = s.idle_poll_min_s
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), idle)
            idle = min(idle * 2, s.idle_poll_max_s)

    async def publish_batch_with_retries(self) -> int:
        """One batch (a run of them, claimed ahead, under a backlog: `relay_pipeline`); broker or database
        outages are retried with backoff until it goes through or we stop. Returns the last claim's size."""
        async for attempt in AsyncRetrying(
            retry=retry_if_exception_type((TransientPublishError, DatabaseUnavailable)),
            wait=wait_exponential_jitter(
                multiplier=0.05, max=self.settings.outage_backoff_max_s, jitter=0.05
            ),
            before_sleep=self._log_outage,
            reraise=True,
        ):
            with attempt:
                if self._stopping.is_set() and attempt.retry_state.attempt_number > 1:
                    return 0
                while True:
                    publisher = await self.prepare()
                    if self.settings.claim_ahead:
                        claimed = await Pipeline(self, publisher, self._heartbeat.beat).run()
                    else:
                        claimed = await self.publish_batch(publisher)
                    # A claim that met a topic not created yet left its rows pending (`send`): create it
                    # and claim them again now, not a poll later.
                    if not self._wanted_topics or self._stopping.is_set():
                        return claimed
        return 0  # pragma: no cover - AsyncRetrying either returns or raises

    def _log_outage(self, retry_state: Any) -> None:
        self.stats.outages += 1
        exc = retry_state.outcome.exception() if retry_state.outcome else None
        log.warning(
            "relay %s: rows not published (%s: %s); retry %d in %.2fs, they stay pending",
            self.name,
            type(exc).__name__,
            exc,
            retry_state.attempt_number,
            retry_state.next_action.sleep,
        )

    async def prepare(self) -> BatchPublisher:
        """Everything a claim needs that may wait on the broker, done before claiming: a claim is a
        transaction holding its rows' locks, and a silent broker makes each of these wait 10-15 s (the
        clients' request timeouts), where the claim itself may only wait the ack deadline. Creates the
        topics earlier claims met, starts a producer if none runs; raises TransientPublishError."""
        async with outages_classified():
            await self._ensure_topics()
            return await self.ready_publisher()

    async def publish_batch(self, publisher: BatchPublisher | None = None) -> int:
        """Claim, publish and mark one batch; returns how many rows were claimed.

        Raises TransientPublishError after committing what was acknowledged when an outage kept some rows
        from going out (the caller backs off), DatabaseUnavailable when the database failed."""
        if publisher is None:
            publisher = await self.prepare()
        async with outages_classified(), self.engine.begin() as conn:
            rows = await self.claim(conn)
            if not rows:
                return 0
            settlement = await self.send(in_aggregate_order(rows), publisher)
            await self.apply(conn, settlement)
        await self.after_outage(settlement.outage)
        return len(rows)

    async def claim(self, conn: AsyncConnection, in_flight: Sequence[int] = ()) -> list[ClaimedRow]:
        rows = await self.store.claim(
            conn, self.settings.batch_size, block_on_dead=self.settings.block_on_dead, in_flight=in_flight
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
