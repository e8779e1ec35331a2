"""What every part of `make bench` shares: settings, fresh databases, the processes a run starts."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker, create_async_engine

from outbox import Event, OutboxWriter, create_tables
from outbox.kafka import bootstrap_from_env
from outbox.testing import EFFECTS_DDL, headers_of, read_topic
from testsupport import ServiceProcess, recreate_database

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
LOGS = ROOT / ".stack" / "bench-logs"
EFFECT_CONSUMER = ROOT / "libs" / "outbox" / "tests" / "apps" / "effect_consumer.py"

# Long enough for several relays to settle their shares: a 50k backlog drains in ~2 s here, about the time
# the leases take to move to a second relay (`share_rebalance_s`), and two relays then measured 0.9x one.
DRAIN_EVENTS = int(os.environ.get("BENCH_DRAIN_EVENTS", "200000"))
RATE = int(os.environ.get("BENCH_RATE", "1000"))
SECONDS = float(os.environ.get("BENCH_SECONDS", "20"))
AGGREGATES = int(os.environ.get("BENCH_AGGREGATES", "1000"))
EXTRA_RATES = [int(r) for r in os.environ.get("BENCH_RATES", "2000,5000").split(",") if r]
SCALE_EVENTS = int(os.environ.get("BENCH_SCALE_EVENTS", "30000"))
WRITERS = 8
# Every process a run starts, stopped when the run ends however it ends: a relay or consumer left behind
# would reconnect to the next run's database (same name, recreated) and skew its figures.
PROCESSES: list[ServiceProcess] = []


# The drain's progress probe: EXISTS stops at the first pending row of the ready index, where count(*) would
# visit every pending row's heap tuple 20 times a second and take PostgreSQL CPU from the relay under test.
ANY_PENDING = "SELECT EXISTS (SELECT 1 FROM outbox WHERE published_at IS NULL AND dead_at IS NULL)"


def process(name: str, argv: list[str], **env: str) -> ServiceProcess:
    proc = ServiceProcess(name, argv, env={"LOG_LEVEL": "WARNING", **env}, log_dir=LOGS)
    PROCESSES.append(proc)
    return proc


def relay(url: str, name: str, **env: str) -> ServiceProcess:
    return process(
        name, [sys.executable, "-m", "outbox.ops.cli", "relay", "--database-url", url, "--name", name], **env
    )


async def fresh_database(name: str) -> tuple[str, AsyncEngine]:
    url = recreate_database(name)
    engine = create_async_engine(url, pool_size=WRITERS + 2)
    async with engine.begin() as conn:
        await conn.run_sync(create_tables)
        await conn.execute(text(EFFECTS_DDL))
    return url, engine


async def scalar(engine: AsyncEngine, sql: str) -> Any:
    async with engine.connect() as conn:
        return (await conn.execute(text(sql))).scalar_one()


async def write_backlog(
    engine: AsyncEngine, topic: str, events: int, data: Callable[[int], dict[str, Any]]
) -> None:
    """`events` outbox rows over AGGREGATES aggregates, 2,000 per transaction, through OutboxWriter."""
    writer = OutboxWriter("bench", notify_channel=None)
    sessions = async_sessionmaker(engine, expire_on_commit=False)
    for start in range(0, events, 2000):
        async with sessions() as session, session.begin():
            await writer.add(
                session,
                *(
                    Event(
                        topic=topic,
                        type="bench.document.enabled",
                        aggregate_id=f"doc-{i % AGGREGATES}",
                        data=data(i),
                        version=i,
                    )
                    for i in range(start, min(start + 2000, events))
                ),
            )


async def check_topic(topic: str, expect: int) -> tuple[int, int, int]:
    """Read the topic back: events missing, events there twice, records older than their predecessor."""
    records = await read_topic(bootstrap_from_env(), topic, expect=expect, timeout=120)
    ids = [headers_of(r)["ce_id"] for r in records]
    last: dict[bytes | None, int] = {}
    out_of_order = 0
    for record in sorted(records, key=lambda r: (r.partition, r.offset)):
        version = int(headers_of(record)["ce_aggregateversion"])
        if version < last.get(record.key, -1):
            out_of_order += 1
        last[record.key] = max(version, last.get(record.key, -1))
    return expect - len(set(ids)), len(ids) - len(set(ids)), out_of_order


def machine() -> dict[str, Any]:
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        "?",
    )
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT
    ).stdout.strip()
    return {
        "cpus": os.cpu_count(),
        "cpu_model": cpu,
        "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "broker_bootstrap": bootstrap_from_env(),
        "git_commit": commit,
    }
