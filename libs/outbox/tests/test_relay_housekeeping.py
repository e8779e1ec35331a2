"""Issue 14, finding 9 (two of its smaller items), each shown by a test that failed before the fix:
the relay's ANALYZE must never queue behind (or cancel) autovacuum and other maintenance, and the admin
commands must wake relays on the configured NOTIFY channel, not a hard-coded one. Issue 16: the relay
ANALYZEs a backlog's stale figures before it claims from them."""

from __future__ import annotations

import asyncio

import psycopg
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from outbox import Relay, RelaySettings
from outbox.admin import Selection, redrive, replay
from outbox.outbox_store import OutboxStore
from testsupport import wait_until

pytestmark = pytest.mark.usefixtures("clean")


def libpq(url: str) -> str:
    return url.replace("postgresql+psycopg://", "postgresql://")


async def make_statistics_stale(engine: AsyncEngine) -> None:
    """2,000 changes since the last ANALYZE of an outbox it counted empty, visible to the statistics system
    (backends report their counters within a second or so)."""
    async with engine.begin() as conn:
        await conn.execute(text("ANALYZE outbox"))
        await conn.execute(
            text(
                "INSERT INTO outbox (event_id, topic, event_type, source, aggregate_id, payload) "
                "SELECT gen_random_uuid(), 'stats', 't', 'test', 'a' || g % 10, '{}' FROM generate_series(1, 2000) g"
            )
        )

    async def stale() -> bool:
        async with engine.connect() as conn:
            return await OutboxStore.statistics_stale(conn)

    await wait_until(stale, timeout=10, what="outbox statistics stale")


async def analyzed_at(engine: AsyncEngine) -> object:
    async with engine.connect() as conn:
        return (
            await conn.execute(text("SELECT last_analyze FROM pg_stat_user_tables WHERE relname = 'outbox'"))
        ).scalar()


async def test_analyze_runs_before_a_claim_when_the_planner_figures_are_stale(
    engine: AsyncEngine, bootstrap: str
) -> None:
    """A backlog that appears faster than autovacuum re-analyzes: the relay's check (one catalog read) sees
    it and ANALYZEs; a fresh table is left alone."""
    relay = Relay(engine, RelaySettings(bootstrap=bootstrap, analyze_interval_s=0))
    await make_statistics_stale(engine)
    before = await analyzed_at(engine)
    await relay.refresh_statistics()
    after = await analyzed_at(engine)
    assert after is not None and after != before
    await relay.refresh_statistics()  # no change since: no second ANALYZE
    assert await analyzed_at(engine) == after


async def test_analyze_skips_a_table_held_by_maintenance_instead_of_waiting(
    engine: AsyncEngine, database_url: str, bootstrap: str
) -> None:
    """Before: a plain ANALYZE waited for the lock a VACUUM/ANALYZE holds (and, as the requester, makes
    autovacuum cancel itself). With SKIP_LOCKED it returns at once and the relay goes on."""
    relay = Relay(engine, RelaySettings(bootstrap=bootstrap, analyze_interval_s=0))
    await make_statistics_stale(engine)  # so that the relay does try to ANALYZE
    before = await analyzed_at(engine)
    holder = await psycopg.AsyncConnection.connect(libpq(database_url))
    try:
        await holder.execute("BEGIN")
        await holder.execute("LOCK TABLE outbox IN SHARE UPDATE EXCLUSIVE MODE")  # what VACUUM/ANALYZE take
        await asyncio.wait_for(relay.refresh_statistics(), timeout=5)
    finally:
        await holder.rollback()
        await holder.close()
    assert await analyzed_at(engine) == before  # skipped, not waited for


async def test_replay_and_redrive_wake_relays_on_the_configured_channel(
    engine: AsyncEngine, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OUTBOX_NOTIFY_CHANNEL", "custom_outbox_wakeup")
    listener = await psycopg.AsyncConnection.connect(libpq(database_url), autocommit=True)
    try:
        await listener.execute("LISTEN custom_outbox_wakeup")
        await replay(engine, Selection(), dry_run=False)
        await redrive(engine, ids=None, dry_run=False)
        received = []
        async for note in listener.notifies(timeout=2):
            received.append(note.channel)
        assert received.count("custom_outbox_wakeup") == 2
    finally:
        await listener.close()
