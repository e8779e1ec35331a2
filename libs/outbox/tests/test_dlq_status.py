"""`outbox dlq` on a poisoned message (list, show, dry run, redrive) and `outbox status --json` with the
consumer groups' lag, through the real command against the real broker and PostgreSQL."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import uuid
from collections.abc import Callable
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from outbox import ConsumerSettings, Event, EventContext, IdempotentConsumer, OutboxWriter
from outbox.testing import drain_outbox, record_effect, wire
from testsupport import wait_until

pytestmark = pytest.mark.usefixtures("clean")
FAST = ConsumerSettings(
    max_attempts=2, retry_initial_s=0.01, retry_max_s=0.05, session_timeout_ms=6000, request_timeout_ms=10000
)


async def outbox_cli(*args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "outbox.ops.cli", *args, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def cli_json(*args: str) -> Any:
    code, out, err = await outbox_cli(*args, "--json")
    assert code == 0, err
    return json.loads(out)


async def test_dead_letter_listed_shown_and_redriven(
    engine: AsyncEngine,
    sessions: async_sessionmaker[AsyncSession],
    writer: OutboxWriter,
    topic: str,
    bootstrap: str,
    database_url: str,
    run_consumer: Callable[[IdempotentConsumer], None],
) -> None:
    group = f"g-{uuid.uuid4().hex[:8]}"
    poisoned = Event(topic=topic, type=f"{topic}.changed", aggregate_id="p", data={"poison": True}, version=1)
    healthy = Event(topic=topic, type=f"{topic}.changed", aggregate_id="h", data={}, version=1)
    async with sessions() as session, session.begin():
        await writer.add(session, poisoned, healthy)
    await drain_outbox(engine, bootstrap)
    cured = asyncio.Event()
    consumer = IdempotentConsumer(group, [topic], sessions, FAST)

    @consumer.handler(f"{topic}.*")
    async def apply(ctx: EventContext) -> None:
        if ctx.event.data.get("poison") and not cured.is_set():
            raise ValueError("cannot apply a poisoned event")
        await record_effect(ctx)

    run_consumer(consumer)
    await wait_until(lambda: _stat(consumer, "dead_lettered", 1), timeout=60, what="poison dead-lettered")
    await wait_until(lambda: _stat(consumer, "applied", 1), timeout=60, what="healthy event applied")

    listed = await cli_json("dlq", "list", "--group", group)
    assert listed["topic"] == wire(f"{group}.dlq") and listed["count"] == 1
    [letter] = listed["dead_letters"]
    assert letter["event_id"] == str(poisoned.id) and letter["original"].startswith(wire(topic) + "[")
    assert "ValueError: cannot apply a poisoned event" in letter["reason"] and letter["dead_lettered_at"]
    shown = await cli_json("dlq", "show", "--group", group, "--id", letter["id"])
    assert json.loads(shown["dead_letters"][0]["value"])["poison"] is True
    code, _, err = await outbox_cli("dlq", "show", "--group", group, "--id", "9:999")
    assert code == 1 and "no dead letter 9:999" in err

    dry = await cli_json("dlq", "redrive", "--group", group)
    assert [d["id"] for d in dry["would_redrive"]] == [letter["id"]]
    assert await _effects(engine, poisoned.id) == 0  # a dry run republished nothing
    cured.set()  # the handler is fixed: redrive now applies it
    done = await cli_json("dlq", "redrive", "--group", group, "--id", letter["id"], "--yes")
    assert done["redriven"] == 1

    async def applied() -> bool:
        return await _effects(engine, poisoned.id) == 1

    await wait_until(applied, timeout=60, what="redriven event applied")

    status = await cli_json("status", "--database-url", database_url)
    assert status["pending"] == 0 and status["dead_lettered"] == 0
    assert status["consumer_groups"][group]["lag"] == 0
    assert f"{wire(topic)}[" in next(iter(status["consumer_groups"][group]["partitions"]))
    code, human, _ = await outbox_cli("status", "--database-url", database_url)
    assert code == 0 and f"group {group}  lag 0" in human and "pending 0" in human


async def _stat(consumer: IdempotentConsumer, name: str, n: int) -> bool:
    return int(getattr(consumer.stats, name)) >= n


async def _effects(engine: AsyncEngine, event_id: uuid.UUID) -> int:
    async with engine.connect() as conn:
        return int(
            (
                await conn.execute(text("SELECT count(*) FROM effects WHERE event_id = :e"), {"e": event_id})
            ).scalar_one()
        )
