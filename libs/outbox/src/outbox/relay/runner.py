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
from typing import Any

from aiokafka.errors import KafkaError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from tenacity import AsyncRetrying, retry_if_exception_type, wait_exponential_jitter

from outbox.database_url import psycopg_url
from outbox.log_throttle import LogThrottle
from outbox.periodic import cancel_and_wait
from outbox.relay.failures import (
    DatabaseUnavailable,
    TransientPublishError,
)
from outbox.relay.housekeeping import RelayHousekeeping
from outbox.relay.pipeline import PublishPipeline
from outbox.relay.settings import RelaySettings, RelayStats
from outbox.relay.shares import ShareLeases
from outbox.relay.steps import BatchSteps
from outbox.telemetry.heartbeat import Heartbeat

__all__ = ["Relay", "RelaySettings", "RelayStats", "TransientPublishError"]

log = logging.getLogger("outbox.relay")


class Relay(RelayHousekeeping, BatchSteps):
    """Publishes one database's outbox. Run several processes for availability; order per aggregate holds."""

    def __init__(
        self, database: str | AsyncEngine, settings: RelaySettings | None = None, *, name: str = "relay"
    ) -> None:
        settings = settings or RelaySettings.from_env()
        engine = (
            create_async_engine(psycopg_url(database), pool_size=4) if isinstance(database, str) else database
        )
        BatchSteps.__init__(self, engine, settings, name)
        self._owns_engine = isinstance(database, str)
        self._wake = asyncio.Event()
        self.outage_log = LogThrottle(log)  # a line per outage retry would bury the rest of the log
        self._analyzed_at = -float("inf")
        self._analyze_refusal_logged = False
        self._heartbeat = Heartbeat(None)

    # -- lifecycle ----------------------------------------------------------------------------------------
    def stop(self) -> None:
        """Finish the batch in flight, then return from `run()`."""
        self._stopping.set()
        self._wake.set()

    async def close(self) -> None:
        if self.leases is not None:
            await self.leases.close()
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
        if self.settings.shares > 0:
            self.leases = ShareLeases(self.libpq_dsn(), self.settings.shares, self.name)
            await self.leases.rebalance()
        background = [asyncio.create_task(self._cleanup_loop(), name="outbox-cleanup")]
        if self.leases is not None:
            background.append(asyncio.create_task(self._share_loop(), name="outbox-shares"))
        if self.settings.notify_channel:
            background.append(asyncio.create_task(self._listen_loop(), name="outbox-listen"))
        try:
            await self._publish_loop()
        finally:
            await cancel_and_wait(background)
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
            if s.claim_linger_ms > 0 and self._wake.is_set():
                await asyncio.sleep(s.claim_linger_ms / 1000)  # woken by a commit: let others join it

    async def publish_batch_with_retries(self) -> int:
        """One batch (a run of them, claimed ahead under a backlog: `pipeline`); broker or database
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
                    pipeline = PublishPipeline(
                        self,
                        publisher,
                        beat=self._heartbeat.beat,
                        refresh=self.refresh_statistics,
                        claim_ahead=self.settings.claim_ahead,
                    )
                    claimed = await pipeline.run()
                    # A claim that met a topic not created yet left its rows pending (`send`): create it
                    # and claim them again now, not a poll later.
                    if not self.wants_topics() or self._stopping.is_set():
                        if attempt.retry_state.attempt_number > 1:
                            self.outage_log.recovered("publish", "relay %s: publishing again", self.name)
                        return claimed
        return 0  # pragma: no cover - AsyncRetrying either returns or raises

    def _log_outage(self, retry_state: Any) -> None:
        self.stats.outages += 1
        exc = retry_state.outcome.exception() if retry_state.outcome else None
        self.outage_log.log(
            logging.WARNING,
            "publish",
            "relay %s: rows not published (%s: %s); retry %d in %.2fs, they stay pending",
            self.name,
            type(exc).__name__,
            exc,
            retry_state.attempt_number,
            retry_state.next_action.sleep,
        )
