"""The relay's work beside publishing: ANALYZE when the planner's figures are stale, LISTEN for writers'
commits (wake-ups), and the retention cleanup. A base class of `Relay`, kept apart so relay.py stays about
publishing."""

from __future__ import annotations

import asyncio
import logging
import time

import psycopg
from sqlalchemy.ext.asyncio import AsyncEngine

from outbox.log_throttle import LogThrottle
from outbox.periodic import every
from outbox.relay.settings import RelaySettings, RelayStats
from outbox.relay.shares import ShareLeases
from outbox.relay.store import OutboxStore, Retention

log = logging.getLogger("outbox.relay")


class RelayHousekeeping:
    settings: RelaySettings
    engine: AsyncEngine
    store: OutboxStore
    name: str
    stats: RelayStats
    _stopping: asyncio.Event
    _wake: asyncio.Event
    _analyzed_at: float
    _analyze_refusal_logged: bool
    outage_log: LogThrottle
    leases: ShareLeases | None

    async def refresh_statistics(self) -> None:
        """ANALYZE the outbox when its planner figures are stale: more rows changed since the last ANALYZE
        than half the rows it counted (checked at most every `analyze_interval_s`, one catalog read).

        A queue table swings from empty to large faster than autovacuum re-analyzes it (a minute at best).
        With the figures of an empty table the planner serves the claim's per-row gap probe from the ready
        index instead of the aggregate index: measured 480 ms instead of 5 ms for a 1,000-row claim over a
        50k backlog, and it grows with the backlog. So the check runs before a claim, not after a slow one.
        """
        now = time.monotonic()
        if now - self._analyzed_at < self.settings.analyze_interval_s:
            return
        self._analyzed_at = now
        try:
            async with self.engine.connect() as conn:
                outcome = await self.store.analyze_if_stale(conn)
            if outcome == "not permitted" and not self._analyze_refusal_logged:
                self._analyze_refusal_logged = True
                log.warning(
                    "relay %s: its role neither owns the outbox nor may run outbox_analyze() (schema step 5): "
                    "statistics are left to autovacuum, and claims may be slow on a sudden backlog",
                    self.name,
                )
        except Exception as exc:  # not fatal: e.g. a database outage
            self.outage_log.log(
                logging.WARNING,
                "analyze",
                "relay %s: ANALYZE outbox failed (%s); claims may be slow on a backlog",
                self.name,
                exc,
            )

    # -- wake-ups and housekeeping ------------------------------------------------------------------------
    async def _listen_loop(self) -> None:
        """LISTEN for writers' commits; reconnects with backoff. Polling still covers any missed wake-up."""
        channel = self.settings.notify_channel
        assert channel is not None
        dsn = self.libpq_dsn()
        delay = 0.1
        while not self._stopping.is_set():
            try:
                async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
                    await conn.execute(f'LISTEN "{channel}"')
                    delay = 0.1
                    async for _ in conn.notifies():
                        self._wake.set()
            except (psycopg.Error, OSError) as exc:
                self.outage_log.log(
                    logging.WARNING,
                    "listen",
                    "relay %s: LISTEN connection lost (%s); polling meanwhile",
                    self.name,
                    exc,
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    def libpq_dsn(self) -> str:
        """The engine's database as a libpq URL, for the relay's own psycopg connections."""
        return self.engine.url.set(drivername="postgresql").render_as_string(hide_password=False)

    async def _share_loop(self) -> None:
        """Rebalance this relay's shares (`shares.py`); a share taken wakes the publish loop at once."""
        leases = self.leases
        assert leases is not None

        async def rebalance() -> None:
            before = leases.held
            if not (await leases.rebalance()) <= before:
                self._wake.set()

        await every(
            self.settings.share_rebalance_s,
            rebalance,
            stopping=self._stopping,
            log=self.outage_log,
            failed=f"relay {self.name}: rebalancing shares failed",
        )

    async def _cleanup_loop(self) -> None:
        await every(
            self.settings.cleanup_interval_s,
            self.cleanup_published,
            stopping=self._stopping,
            log=self.outage_log,
            failed=f"relay {self.name}: retention cleanup failed",
        )

    async def cleanup_published(self) -> int:
        """Delete published rows past `retention`, dead rows past `dead_retention`, a page of heads quiet past
        `heads_retention`; returns rows deleted."""
        s = self.settings
        total = await self.store.prune(
            self.engine,
            Retention(s.retention, s.dead_retention, s.cleanup_batch, heads=s.heads_retention),
            stop=self._stopping.is_set,
        )
        self.stats.cleaned += total
        return total
