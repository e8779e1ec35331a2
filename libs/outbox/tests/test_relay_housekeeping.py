"""Issue 14, finding 9 (two of its smaller items), each shown by a test that failed before the fix:
the relay's ANALYZE must never queue behind (or cancel) autovacuum and other maintenance, and the admin
commands must wake relays on the configured NOTIFY channel, not a hard-coded one."""

from __future__ import annotations

import asyncio

import psycopg
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from outbox import Relay, RelaySettings
from outbox.admin import Selection, redrive, replay

pytestmark = pytest.mark.usefixtures("clean")


def libpq(url: str) -> str:
    return url.replace("postgresql+psycopg://", "postgresql://")


async def test_analyze_skips_a_table_held_by_maintenance_instead_of_waiting(
    engine: AsyncEngine, database_url: str, bootstrap: str
) -> None:
    """Before: a plain ANALYZE waited for the lock a VACUUM/ANALYZE holds (and, as the requester, makes
    autovacuum cancel itself). With SKIP_LOCKED it returns at once and the relay goes on."""
    relay = Relay(engine, RelaySettings(bootstrap=bootstrap, analyze_interval_s=0))
    holder = await psycopg.AsyncConnection.connect(libpq(database_url))
    try:
        await holder.execute("BEGIN")
        await holder.execute("LOCK TABLE outbox IN SHARE UPDATE EXCLUSIVE MODE")  # what VACUUM/ANALYZE take
        await asyncio.wait_for(relay._refresh_statistics(), timeout=5)
    finally:
        await holder.rollback()
        await holder.close()


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
