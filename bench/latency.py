"""Commit -> applied latency and CPU per event under a steady offered rate.

A relay process publishes and an idempotent consumer process applies (inbox + version guard, gap-aware,
one batch handler: what a user runs); latency = the consumer's clock_timestamp() when it writes the effect
minus the load generator's clock right after its commit returned (one machine, one clock). CPU per event =
the CPU seconds the relay, the consumer, PostgreSQL and the broker used during the run, over the events
applied (the load generator's own CPU is reported apart: it is not the system under test).
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import time
import uuid
from typing import Any

from sqlalchemy import text

from bench.common import (
    AGGREGATES,
    EFFECT_CONSUMER,
    LOGS,
    SECONDS,
    fresh_database,
    process,
    relay,
    scalar,
)
from bench.cpu import CpuMeter, process_cpu_s
from bench.load import Load, LoadRun
from outbox.kafka import bootstrap_from_env, ensure_topics
from outbox.testing import headers_of, read_topic
from testsupport import ServiceProcess

HANDLERS = {
    "batch-guarded": "batch handler (one INSERT per run), inbox + version guard, gap-aware",
    "batch": "batch handler, inbox, no version guard",
    "per-event-guarded": "per event (one INSERT each), inbox + version guard",
}


async def bench_latency(
    *,
    rate: int,
    notify: bool = True,
    handler: str = "batch-guarded",
    seconds: float = SECONDS,
    linger_ms: int = 0,
) -> dict[str, Any]:
    """`linger_ms`: the relay's claim linger and the consumer's batch linger (fewer, larger transactions)."""
    url, engine = await fresh_database("outbox_bench_latency")
    topic = f"bench.latency.{uuid.uuid4().hex[:8]}"
    group = f"bench-{uuid.uuid4().hex[:8]}"
    await ensure_topics(bootstrap_from_env(), [topic])
    channel_env = {} if notify else {"OUTBOX_NOTIFY_CHANNEL": ""}
    relay_proc = relay(
        url, "bench-latency-relay", OUTBOX_RELAY_CLAIM_LINGER_MS=str(linger_ms), **channel_env
    ).start()
    consumer = process(
        "bench-consumer",
        [sys.executable, str(EFFECT_CONSUMER), url, group, topic, "0", handler],
        OUTBOX_CONSUMER_BATCH_LINGER_MS=str(linger_ms),
    ).start()
    dsn = url.replace("postgresql+psycopg://", "postgresql://")
    # Warm-up: the consumer has joined its group and applies events.
    await (await LoadRun(Load(dsn, topic, 50, 0.2, AGGREGATES, notify, 1, 1), LOGS).start()).join_async()
    deadline = time.monotonic() + 60
    while await scalar(engine, "SELECT count(*) FROM effects") < 10:
        if time.monotonic() > deadline:
            raise RuntimeError(f"consumer never applied the warm-up events:\n{consumer.tail()}")
        await asyncio.sleep(0.1)
    warm = await scalar(engine, "SELECT count(*) FROM effects")
    await asyncio.sleep(1)  # the relay's and consumer's idle state, not the warm-up's tail

    load = Load(dsn, topic, rate, seconds, AGGREGATES, notify)
    meter = CpuMeter({"relay": [_pid(relay_proc)], "consumer": [_pid(consumer)]})
    run = LoadRun(load, LOGS)
    before = meter.snapshot()
    await run.start()
    # From the start line on: the processes' imports and connections before it are not the run's.
    generator_at_start = sum(process_cpu_s(pid) for pid in run.pids)
    generator = 0.0
    while any(w.is_alive() for w in run.workers):
        generator = max(generator, sum(process_cpu_s(pid) for pid in run.pids) - generator_at_start)
        await asyncio.sleep(0.2)
    write_seconds = await run.join_async()
    total = load.total
    # Past the offered rate the system queues: give it time to catch up (up to 120 s plus a second per
    # 1,000 events), then measure what was applied; a backlog left at the deadline is reported, not hidden.
    deadline = time.monotonic() + 120 + total / 1000
    while (applied := await scalar(engine, "SELECT count(*) FROM effects") - warm) < total:
        if time.monotonic() > deadline:
            break
        await asyncio.sleep(0.05)
    caught_up_s = round(time.time() - run.started_at - write_seconds, 1)
    cpu = meter.since(before)
    async with engine.connect() as conn:
        rows = (
            await conn.execute(text("SELECT event_id::text, extract(epoch FROM applied_at) FROM effects"))
        ).all()
    duplicates = await scalar(engine, "SELECT count(*) - count(DISTINCT event_id) FROM effects")
    relay_proc.terminate()
    consumer.terminate()
    await engine.dispose()
    committed = run.committed()
    run.cleanup()
    latencies = sorted((float(at) - committed[eid]) * 1000 for eid, at in rows if eid in committed)
    records = await read_topic(bootstrap_from_env(), topic, expect=total + warm, timeout=60)
    to_broker = sorted(
        r.timestamp - committed[headers_of(r)["ce_id"]] * 1000
        for r in records
        if headers_of(r)["ce_id"] in committed
    )
    q = statistics.quantiles(latencies, n=100, method="inclusive")
    qb = statistics.quantiles(to_broker, n=100, method="inclusive")
    events = max(applied, 1)
    return {
        "events": total,
        "offered_events_per_s": rate,
        "rate_events_per_s": round(total / max(write_seconds, 1e-9)),
        "events_per_transaction": load.per_transaction,
        "latency_ms": {
            "p50": round(q[49], 2),
            "p95": round(q[94], 2),
            "p99": round(q[98], 2),
            "max": round(latencies[-1], 2),
        },
        "commit_to_broker_ms": {"p50": round(qb[49], 2), "p95": round(qb[94], 2), "p99": round(qb[98], 2)},
        "cpu_us_per_event": {part: round(seconds_ * 1e6 / events) for part, seconds_ in cpu.items()},
        "load_generator_cpu_us_per_event": round(generator * 1e6 / events),
        "duplicates_applied": int(duplicates),
        "applied": applied,
        "caught_up_s_after_last_write": caught_up_s,
        "wakeup": "notify+poll" if notify else "poll",
        "linger_ms": linger_ms,
        "consumer_handler": HANDLERS[handler],
        "load_generator": f"psycopg, {load.processes} processes x {load.connections} connections",
    }


def sustained(runs: list[dict[str, Any]], p99_ms: float = 100.0) -> dict[str, Any] | None:
    """The highest offered rate that was kept up (>= 95% achieved, every event applied) with p99 within
    `p99_ms`."""
    kept = [
        r
        for r in runs
        if r["rate_events_per_s"] >= 0.95 * r["offered_events_per_s"]
        and r["applied"] >= r["events"]
        and r["latency_ms"]["p99"] <= p99_ms
    ]
    return max(kept, key=lambda r: r["offered_events_per_s"], default=None)


def _pid(proc: ServiceProcess) -> int:
    assert proc.proc is not None, "started"
    return proc.proc.pid
