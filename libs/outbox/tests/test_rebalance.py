"""Consumer-group rebalances under load (issue 11 item 4): two consumer processes share a group while events
stream in; one is SIGKILLed mid-batch, a third joins, another leaves gracefully. Every effect exactly once,
each aggregate's versions applied in order, every partition consumed, on the per-event and the batch-handler
paths alike."""

from __future__ import annotations

import asyncio
import signal
import sys
import uuid
from collections import defaultdict
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from outbox import Event, OutboxWriter
from outbox.kafka import ensure_topics
from outbox.testing import wire
from testsupport import ServiceProcess, wait_until

pytestmark = [pytest.mark.usefixtures("clean"), pytest.mark.slow, pytest.mark.timeout(240)]

APPS = Path(__file__).parent / "apps"
AGGREGATES = 40
RATE = 100  # events/s offered while the group changes
SECONDS = 15


@pytest.mark.parametrize("mode", ["per-event", "batch"])
async def test_kill_join_leave_keeps_exactly_once_and_per_aggregate_order(
    engine: AsyncEngine,
    sessions: async_sessionmaker[AsyncSession],
    writer: OutboxWriter,
    database_url: str,
    topic: str,
    bootstrap: str,
    log_dir: Path,
    mode: str,
) -> None:
    await ensure_topics(bootstrap, [wire(topic)])
    group = f"rebalance-{uuid.uuid4().hex[:8]}"

    def consumer(name: str) -> ServiceProcess:
        argv = [sys.executable, str(APPS / "effect_consumer.py"), database_url, group, topic, "0.002", mode]
        return ServiceProcess(f"{mode}-{name}", argv, env={}, log_dir=log_dir)

    relay = ServiceProcess(
        f"{mode}-relay",
        [
            sys.executable,
            "-m",
            "outbox.ops.cli",
            "relay",
            "--database-url",
            database_url,
            "--name",
            "rebalance",
        ],
        env={},
        log_dir=log_dir,
    ).start()
    a, b = consumer("a").start(), consumer("b").start()
    versions: dict[str, int] = defaultdict(int)
    total = RATE * SECONDS

    async def write() -> None:
        for i in range(total):
            aggregate = f"agg-{i % AGGREGATES}"
            versions[aggregate] += 1
            async with sessions() as session, session.begin():
                await writer.add(
                    session,
                    Event(
                        topic=topic,
                        type=f"{topic}.changed",
                        aggregate_id=aggregate,
                        data={"i": i},
                        version=versions[aggregate],
                    ),
                )
            await asyncio.sleep(1 / RATE)

    writing = asyncio.create_task(write())
    c: ServiceProcess | None = None
    try:
        await wait_until(lambda: _effects_at_least(engine, 100), timeout=60, what="both consumers applying")
        a.kill()  # SIGKILL mid-batch: its uncommitted transaction and offsets are lost, its partitions move
        await asyncio.sleep(3)
        c = consumer("c").start()  # a third member joins: partitions are reassigned again
        await asyncio.sleep(4)
        assert b.proc is not None
        b.proc.send_signal(signal.SIGTERM)  # a graceful leave: finishes its batch, commits, leaves the group
        await writing
        await wait_until(lambda: _effects_at_least(engine, total), timeout=120, what="every event applied")
        await asyncio.sleep(2)  # a late duplicate would land now
    finally:
        writing.cancel()
        for process in (a, b, c, relay):
            if process is not None:
                process.terminate()

    async with engine.connect() as conn:
        rows = (
            await conn.execute(
                text("SELECT event_id, aggregate_id, version, consumer FROM effects ORDER BY seq")
            )
        ).all()
        partitions = (
            await conn.execute(
                text("SELECT count(DISTINCT partition) FROM inbox WHERE consumer = :g"), {"g": group}
            )
        ).scalar_one()
    assert len(rows) == total and len({r.event_id for r in rows}) == total  # exactly once
    applied: dict[str, list[int]] = defaultdict(list)
    for r in rows:
        applied[r.aggregate_id].append(r.version)
    assert all(v == sorted(v) and v == list(range(1, len(v) + 1)) for v in applied.values())  # in order
    assert partitions == min(8, AGGREGATES)  # every partition that got events was consumed


async def _effects_at_least(engine: AsyncEngine, n: int) -> bool:
    async with engine.connect() as conn:
        return int((await conn.execute(text("SELECT count(*) FROM effects"))).scalar_one()) >= n
