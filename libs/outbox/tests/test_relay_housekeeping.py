"""Issue 14, finding 9 (two of its smaller items), each shown by a test that failed before the fix:
the relay's ANALYZE must never queue behind (or cancel) autovacuum and other maintenance, and the admin
commands must wake relays on the configured NOTIFY channel, not a hard-coded one. Issue 16: the relay
ANALYZEs a backlog's stale figures before it claims from them."""

from __future__ import annotations

import asyncio
import logging
import os

import psycopg
import pytest
from sqlalchemy import make_url, text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from outbox import Relay, RelaySettings
from outbox.ops.admin import Selection, redrive, replay
from outbox.relay.store import OutboxStore
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


async def test_a_relay_whose_role_does_not_own_the_outbox_analyzes_through_outbox_analyze(
    engine: AsyncEngine, database_url: str, bootstrap: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Least privilege: a relay connected as a role with only row rights cannot ANALYZE the outbox
    (PostgreSQL would skip it with a mere warning). Without EXECUTE on the owner's `outbox_analyze()` it says
    so once and goes on; with it, the figures are refreshed."""
    role = f"outbox_lib_relay_{os.environ['TEST_RUN_ID']}"
    async with engine.begin() as conn:
        await conn.execute(text(f"DROP ROLE IF EXISTS {role}"))
        await conn.execute(text(f"CREATE ROLE {role} LOGIN"))
        await conn.execute(
            text(f"GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO {role}")
        )
    relay_engine = create_async_engine(make_url(database_url).set(username=role))
    try:
        relay = Relay(relay_engine, RelaySettings(bootstrap=bootstrap, analyze_interval_s=0))
        await make_statistics_stale(engine)
        before = await analyzed_at(engine)
        with caplog.at_level(logging.WARNING, logger="outbox.relay"):
            await relay.refresh_statistics()
            await relay.refresh_statistics()
        refusals = [r for r in caplog.records if "outbox_analyze()" in r.getMessage()]
        assert len(refusals) == 1, caplog.text
        assert await analyzed_at(engine) == before

        async with engine.begin() as conn:
            await conn.execute(text(f"GRANT EXECUTE ON FUNCTION outbox_analyze() TO {role}"))
        async with relay_engine.connect() as conn:
            assert await OutboxStore.analyze_if_stale(conn) == "analyzed"
        assert await analyzed_at(engine) not in (None, before)
    finally:
        await relay_engine.dispose()
        async with engine.begin() as conn:
            await conn.execute(text(f"DROP OWNED BY {role}"))
            await conn.execute(text(f"DROP ROLE {role}"))


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
