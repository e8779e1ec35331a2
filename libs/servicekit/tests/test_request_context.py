"""The request context every service runs its use cases through (servicekit.request_context), against a real
PostgreSQL database."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator

import pytest
from sqlalchemy import text

from outbox import Event, OutboxWriter, create_tables
from servicekit.db import Database, UnitOfWork
from servicekit.request_context import RequestContext
from testsupport import recreate_database

pytestmark = pytest.mark.asyncio(loop_scope="session")


class KeepsBookkeeping(Exception):
    """Stands in for auth's CommitsChanges refusals."""


@pytest.fixture(scope="module")
async def db() -> AsyncIterator[Database]:
    url = recreate_database(f"servicekit_test_{os.environ['TEST_RUN_ID']}")
    db = Database(url, OutboxWriter(source="kit"), pool_size=2)
    async with db.engine.begin() as conn:
        await conn.run_sync(create_tables)
        await conn.execute(text("CREATE TABLE notes (body text NOT NULL)"))
    yield db
    await db.dispose()


async def _state(db: Database) -> tuple[list[str], list[str]]:
    async with db.engine.connect() as conn:
        notes = [r[0] for r in await conn.execute(text("SELECT body FROM notes ORDER BY body"))]
        types = [r[0] for r in await conn.execute(text("SELECT event_type FROM outbox ORDER BY id"))]
    return notes, types


async def _write(uow: UnitOfWork, body: str) -> str:
    await uow.session.execute(text("INSERT INTO notes VALUES (:b)"), {"b": body})
    uow.emit(Event(topic="kit.note", type=f"kit.note.{body}", aggregate_id=body, data={"body": body}))
    return body


async def test_one_commit_for_the_change_and_its_events_or_none(db: Database) -> None:
    ctx = RequestContext(db, commit_on=(KeepsBookkeeping,))
    assert await ctx.run(lambda uow: _write(uow, "a")) == "a"

    async def fails(uow: UnitOfWork) -> None:
        await _write(uow, "b")
        raise RuntimeError("after the write")

    async def refuses(uow: UnitOfWork) -> None:
        await _write(uow, "c")
        raise KeepsBookkeeping()

    with pytest.raises(RuntimeError):
        await ctx.run(fails)
    with pytest.raises(KeepsBookkeeping):
        await ctx.run(refuses)
    # `b` rolled back with its event; `c` is a refusal whose bookkeeping commits before it is answered.
    assert await _state(db) == (["a", "c"], ["kit.note.a", "kit.note.c"])


async def test_a_deadlock_victim_runs_again_from_scratch(db: Database) -> None:
    attempts = 0

    async def victim_once(uow: UnitOfWork) -> str:
        nonlocal attempts
        attempts += 1
        await _write(uow, f"d{attempts}")
        if attempts == 1:  # PostgreSQL's own deadlock error, raised by the server
            await uow.session.execute(
                text("DO $$ BEGIN RAISE EXCEPTION 'victim' USING ERRCODE = 'deadlock_detected'; END $$")
            )
        return "done"

    assert await RequestContext(db, retry_deadlocks=True).run(victim_once) == "done"
    notes, types = await _state(db)
    assert attempts == 2 and "d1" not in notes and "d2" in notes and "kit.note.d1" not in types
