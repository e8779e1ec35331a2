"""`make bench`: relay drain rate and commit -> applied latency, on real PostgreSQL and the real broker.

1. Drain: a backlog of N outbox rows (default 50,000 over 1,000 aggregates) published by one relay
   process, then by two; events/s = rows after the first batch / (last batch's commit - first batch's
   commit); the topic is then read back: every event exactly once, each aggregate's versions in order.
2. Latency: a steady stream (default 1,000 events/s for 20 s) committed by writer tasks, published by a
   relay process, applied by an idempotent consumer process (inbox + version guard, gap-aware, one batch
   handler: what a user runs); latency = the consumer's clock_timestamp() when it writes the effect minus
   the writer's clock right after its commit returned (one machine, one clock). Runs: NOTIFY wake-ups at
   1,000, 2,000 and 5,000 events/s offered; polling only; a per-event handler (one INSERT per event).
3. Consumer scale-out: a backlog of events on the topic consumed by one consumer process, then by two in
   one group (events/s from the first effect to the last).
4. Writer cost: 8 tasks for 5 s, each transaction inserts a domain row, with and without one
   OutboxWriter event (SQLAlchemy + psycopg, the services' path), alternated 3 times; tx/s both ways.

Results go to bench/results/latest.json and a table on stdout. Environment knobs: BENCH_DRAIN_EVENTS,
BENCH_RATE, BENCH_RATES (extra rates, default "2000,5000"), BENCH_SECONDS, BENCH_AGGREGATES,
BENCH_SCALE_EVENTS.
"""

from __future__ import annotations

import asyncio
import json
import os
import platform
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
from psycopg.types.json import Jsonb
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker, create_async_engine

from outbox import Event, OutboxWriter, create_tables
from outbox.kafka import bootstrap_from_env, ensure_topics
from outbox.testing import EFFECTS_DDL, headers_of, read_topic
from testsupport import ServiceProcess, recreate_database

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
LOGS = ROOT / ".stack" / "bench-logs"
EFFECT_CONSUMER = ROOT / "libs" / "outbox" / "tests" / "apps" / "effect_consumer.py"

DRAIN_EVENTS = int(os.environ.get("BENCH_DRAIN_EVENTS", "50000"))
RATE = int(os.environ.get("BENCH_RATE", "1000"))
SECONDS = float(os.environ.get("BENCH_SECONDS", "20"))
AGGREGATES = int(os.environ.get("BENCH_AGGREGATES", "1000"))
EXTRA_RATES = [int(r) for r in os.environ.get("BENCH_RATES", "2000,5000").split(",") if r]
SCALE_EVENTS = int(os.environ.get("BENCH_SCALE_EVENTS", "30000"))
WRITERS = 8
# The load generator is not the system under test: by default it commits each event in its own transaction
# with plain psycopg (the same INSERT and NOTIFY as OutboxWriter), because SQLAlchemy's async layer costs
# ~0.7 ms of CPU per transaction and would take a core of the two. BENCH_WRITER=outbox uses OutboxWriter.
RAW_WRITERS = os.environ.get("BENCH_WRITER", "raw") == "raw"
RAW_INSERT = (
    "INSERT INTO outbox (event_id, topic, event_type, source, aggregate_id, aggregate_version, payload, occurred_at) "
    "VALUES (%s, %s, %s, %s, %s, %s, %s, %s)"
)


def raw_row(event: Event) -> tuple[Any, ...]:
    data = {**event.data, "version": event.version}
    return (
        event.id,
        event.topic,
        event.type,
        "bench",
        event.aggregate_id,
        event.version,
        Jsonb(data),
        event.time,
    )


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


async def bench_drain(relays: int = 1) -> dict[str, Any]:
    url, engine = await fresh_database("outbox_bench_drain")
    topic = f"bench.drain.{uuid.uuid4().hex[:8]}"
    await ensure_topics(bootstrap_from_env(), [topic])
    payload = {"dataset_id": str(uuid.uuid4()), "name": "doc", "enabled": True, "text": "x" * 120}
    await write_backlog(engine, topic, DRAIN_EVENTS, lambda i: payload)
    procs = [relay(url, f"bench-drain-relay-{n}") for n in range(relays)]
    started = time.perf_counter()
    for proc in procs:
        proc.start()
    while await scalar(engine, ANY_PENDING):
        for proc in procs:
            if not proc.alive:
                raise RuntimeError(f"relay died:\n{proc.tail()}")
        await asyncio.sleep(0.05)
    elapsed = time.perf_counter() - started
    for proc in procs:
        proc.terminate()
    # Timed by the database: published_at is each batch's transaction time, so rows after the first batch
    # over first-to-last batch time excludes the relay process's start-up (imports, connections, metadata).
    async with engine.connect() as conn:
        after_first, span = (
            await conn.execute(
                text(
                    "SELECT count(*) FILTER (WHERE published_at > (SELECT min(published_at) FROM outbox)),"
                    " extract(epoch FROM max(published_at) - min(published_at)) FROM outbox"
                )
            )
        ).one()
    await engine.dispose()
    lost, duplicated, out_of_order = await check_topic(topic, DRAIN_EVENTS)
    return {
        "relay_processes": relays,
        "events": DRAIN_EVENTS,
        "seconds": round(float(span), 3),
        "events_per_s": round(after_first / float(span)),
        "wall_seconds_including_start_up": round(elapsed, 3),
        "topic_check": {"lost": lost, "duplicated": duplicated, "out_of_order": out_of_order},
    }


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


async def bench_latency(*, notify: bool, handler: str = "batch-guarded", rate: int = RATE) -> dict[str, Any]:
    name = "outbox_bench_latency"
    url, engine = await fresh_database(name)
    topic = f"bench.latency.{uuid.uuid4().hex[:8]}"
    group = f"bench-{uuid.uuid4().hex[:8]}"
    await ensure_topics(bootstrap_from_env(), [topic])
    channel_env = {} if notify else {"OUTBOX_NOTIFY_CHANNEL": ""}
    relay_proc = relay(url, "bench-latency-relay", **channel_env).start()
    consumer = process(
        "bench-consumer", [sys.executable, str(EFFECT_CONSUMER), url, group, topic, "0", handler]
    ).start()
    writer = OutboxWriter("bench", notify_channel="outbox_pending" if notify else None)
    sessions = async_sessionmaker(engine, expire_on_commit=False)
    committed: dict[str, float] = {}
    total = int(rate * SECONDS)

    # Warm-up: wait until the consumer has joined its group and applies events.
    async with sessions() as session, session.begin():
        await writer.add(session, Event(topic=topic, type="bench.warmup", aggregate_id="warmup", data={}))
    deadline = time.monotonic() + 60
    while not await scalar(engine, "SELECT count(*) FROM effects"):
        if time.monotonic() > deadline:
            raise RuntimeError(f"consumer never applied the warm-up event:\n{consumer.tail()}")
        await asyncio.sleep(0.1)

    t0 = time.perf_counter() + 0.2
    wall0 = time.time() - time.perf_counter()

    async def write(worker: int) -> None:
        for i in range(worker, total, WRITERS):
            due = t0 + i / rate
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            event = Event(
                topic=topic,
                type="bench.document.enabled",
                aggregate_id=f"doc-{i % AGGREGATES}",
                data={"i": i},
                version=i,
            )
            if RAW_WRITERS:
                conn = connections[worker]
                async with conn.transaction():
                    await conn.execute(RAW_INSERT, raw_row(event))
                    if notify:
                        await conn.execute("SELECT pg_notify('outbox_pending', '')")
            else:
                async with engine.begin() as sa_conn:
                    await writer.add(sa_conn, event)
            committed[str(event.id)] = wall0 + time.perf_counter()

    dsn = url.replace("postgresql+psycopg://", "postgresql://")
    connections = (
        [await psycopg.AsyncConnection.connect(dsn, autocommit=True) for _ in range(WRITERS)]
        if RAW_WRITERS
        else []
    )
    started = time.perf_counter()
    await asyncio.gather(*(write(w) for w in range(WRITERS)))
    for c in connections:
        await c.close()
    write_seconds = time.perf_counter() - started
    # Past the offered rate the system queues: give it time to catch up (up to 120 s plus a second per
    # 1,000 events), then measure what was applied; a backlog left at the deadline is reported, not hidden.
    deadline = time.monotonic() + 120 + total / 1000
    while (applied_so_far := await scalar(engine, "SELECT count(*) FROM effects")) < total + 1:
        if time.monotonic() > deadline:
            break
        await asyncio.sleep(0.1)
    drained_after_s = round(time.perf_counter() - started - write_seconds, 1)
    async with engine.connect() as conn:
        rows = (
            await conn.execute(text("SELECT event_id::text, extract(epoch FROM applied_at) FROM effects"))
        ).all()
    duplicates = await scalar(engine, "SELECT count(*) - count(DISTINCT event_id) FROM effects")
    relay_proc.terminate()
    consumer.terminate()
    await engine.dispose()
    latencies = sorted((float(applied) - committed[eid]) * 1000 for eid, applied in rows if eid in committed)
    records = await read_topic(bootstrap_from_env(), topic, expect=total + 1, timeout=60)
    to_broker = sorted(
        r.timestamp - committed[headers_of(r)["ce_id"]] * 1000
        for r in records
        if headers_of(r)["ce_id"] in committed
    )
    qb = statistics.quantiles(to_broker, n=100, method="inclusive")
    q = statistics.quantiles(latencies, n=100, method="inclusive")
    return {
        "events": total,
        "offered_events_per_s": rate,
        "rate_events_per_s": round(total / write_seconds),
        "latency_ms": {
            "p50": round(q[49], 2),
            "p95": round(q[94], 2),
            "p99": round(q[98], 2),
            "max": round(latencies[-1], 2),
        },
        "commit_to_broker_ms": {"p50": round(qb[49], 2), "p95": round(qb[94], 2), "p99": round(qb[98], 2)},
        "duplicates_applied": int(duplicates),
        "applied": applied_so_far - 1,
        "caught_up_s_after_last_write": drained_after_s,
        "wakeup": "notify+poll" if notify else "poll",
        "consumer_handler": {
            "batch-guarded": "batch handler (one INSERT per run), inbox + version guard, gap-aware",
            "batch": "batch handler, inbox, no version guard",
        }.get(handler, "per event (one INSERT each), inbox + version guard"),
        "load_generator": "psycopg, one event per transaction"
        if RAW_WRITERS
        else "OutboxWriter, one event per transaction",
    }


async def bench_consumer_scale_out(consumers: int) -> dict[str, Any]:
    """A backlog already on the topic, consumed by `consumers` processes in one group."""
    url, engine = await fresh_database("outbox_bench_scale")
    topic = f"bench.scale.{uuid.uuid4().hex[:8]}"
    await ensure_topics(bootstrap_from_env(), [topic])
    await write_backlog(engine, topic, SCALE_EVENTS, lambda i: {"i": i})
    drain = relay(url, "bench-scale-relay").start()
    while await scalar(engine, ANY_PENDING):
        if not drain.alive:
            raise RuntimeError(f"relay died:\n{drain.tail()}")
        await asyncio.sleep(0.1)
    drain.terminate()
    group = f"bench-{uuid.uuid4().hex[:8]}"
    procs = [
        process(
            f"bench-scale-consumer-{n}",
            [sys.executable, str(EFFECT_CONSUMER), url, group, topic, "0", "batch-guarded"],
        ).start()
        for n in range(consumers)
    ]
    deadline = time.monotonic() + 300
    while await scalar(engine, "SELECT count(*) FROM effects") < SCALE_EVENTS:
        if time.monotonic() > deadline:
            raise RuntimeError("the consumers did not apply the backlog within 300 s")
        await asyncio.sleep(0.1)
    for proc in procs:
        proc.terminate()
    async with engine.connect() as conn:
        span, duplicates = (
            await conn.execute(
                text(
                    "SELECT extract(epoch FROM max(applied_at) - min(applied_at)), count(*) - count(DISTINCT event_id) "
                    "FROM effects"
                )
            )
        ).one()
    await engine.dispose()
    return {
        "consumer_processes": consumers,
        "events": SCALE_EVENTS,
        "events_per_s": round(SCALE_EVENTS / float(span)),
        "duplicates_applied": int(duplicates),
    }


async def bench_writer_cost(rounds: int = 3, seconds: float = 5.0) -> dict[str, Any]:
    """tx/s of a domain-row transaction with and without one OutboxWriter event (the services' path)."""
    _url, engine = await fresh_database("outbox_bench_writer")
    async with engine.begin() as conn:
        await conn.execute(text(DOMAIN_DDL))
    sessions = async_sessionmaker(engine, expire_on_commit=False)
    writer = OutboxWriter("bench")
    totals = {False: 0.0, True: 0.0}

    async def loop(worker: int, with_event: bool, stop: float, counts: list[int]) -> None:
        i = 0
        while time.perf_counter() < stop:
            async with sessions() as session, session.begin():
                await session.execute(
                    DOMAIN_INSERT, {"name": "doc", "body": json.dumps({"w": worker, "i": i})}
                )
                if with_event:
                    await writer.add(
                        session,
                        Event(
                            topic="bench.writer",
                            type="bench.writer.created",
                            aggregate_id=f"doc-{worker}-{i}",
                            data={"i": i},
                            version=1,
                        ),
                    )
            counts[worker] += 1
            i += 1

    for _ in range(rounds):
        for with_event in (False, True):
            counts = [0] * WRITERS
            started = time.perf_counter()
            await asyncio.gather(*(loop(w, with_event, started + seconds, counts) for w in range(WRITERS)))
            totals[with_event] += sum(counts) / (time.perf_counter() - started)
    await engine.dispose()
    without, with_ = totals[False] / rounds, totals[True] / rounds
    return {
        "driver": "psycopg via SQLAlchemy async (the services' path)",
        "writers": WRITERS,
        "without_event_tx_per_s": round(without),
        "with_event_tx_per_s": round(with_),
        "event_overhead_pct": round(100 * (without / with_ - 1), 1),
    }


DOMAIN_DDL = "CREATE TABLE bench_domain (id bigserial PRIMARY KEY, name text NOT NULL, body jsonb NOT NULL)"
DOMAIN_INSERT = text("INSERT INTO bench_domain (name, body) VALUES (:name, CAST(:body AS jsonb))")


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


async def main() -> None:
    print(f"[bench] drain: {DRAIN_EVENTS} rows backlog, one relay process ...", flush=True)
    drain = await bench_drain(1)
    print(f"[bench] drain: {DRAIN_EVENTS} rows backlog, two relay processes ...", flush=True)
    drain2 = await bench_drain(2)
    print(f"[bench] latency: {RATE}/s for {SECONDS}s with NOTIFY ...", flush=True)
    notify = await bench_latency(notify=True)
    rates = {}
    for rate in EXTRA_RATES:
        print(f"[bench] latency: {rate}/s for {SECONDS}s with NOTIFY ...", flush=True)
        rates[str(rate)] = await bench_latency(notify=True, rate=rate)
    print(f"[bench] latency: {RATE}/s for {SECONDS}s, polling only ...", flush=True)
    poll = await bench_latency(notify=False)
    print(f"[bench] latency: {RATE}/s for {SECONDS}s with NOTIFY, a per-event handler ...", flush=True)
    per_event = await bench_latency(notify=True, handler="per-event-guarded")
    print(f"[bench] consumer scale-out: {SCALE_EVENTS} events, 1 then 2 consumer processes ...", flush=True)
    scale = [await bench_consumer_scale_out(1), await bench_consumer_scale_out(2)]
    print("[bench] writer cost: domain row with and without an event ...", flush=True)
    writer_cost = await bench_writer_cost()
    runs = [notify, *rates.values()]
    sustained = max(
        (
            r
            for r in runs
            if r["rate_events_per_s"] >= 0.95 * r["offered_events_per_s"] and r["latency_ms"]["p99"] < 1000
        ),
        key=lambda r: r["rate_events_per_s"],
        default=notify,
    )
    result = {
        "when": datetime.now(UTC).isoformat(),
        "relay_drain_events_per_s": drain["events_per_s"],
        "relay_drain_two_relays_events_per_s": drain2["events_per_s"],
        "latency_ms": notify["latency_ms"],
        "rate_events_per_s": notify["rate_events_per_s"],
        "highest_sustained_events_per_s": sustained["rate_events_per_s"],
        "drain": drain,
        "drain_two_relays": drain2,
        "latency_notify": notify,
        "latency_by_rate": rates,
        "latency_poll_only": poll,
        "latency_per_event_handler": per_event,
        "consumer_scale_out": scale,
        "writer_cost": writer_cost,
        "machine": machine(),
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "latest.json").write_text(json.dumps(result, indent=2) + "\n")
    print()
    print(f"{'measure':<46}{'value':>14}")
    for label, d in (("one relay", drain), ("two relays", drain2)):
        print(f"{'relay drain, ' + label + ' (events/s)':<46}{d['events_per_s']:>14}")
        print(f"{'  topic: lost/duplicated/out of order':<46}{tuple(d['topic_check'].values())!s:>14}")
    labelled = [("notify " + str(RATE), notify)] + [("notify " + k, v) for k, v in rates.items()]
    labelled += [("poll only " + str(RATE), poll), ("per-event " + str(RATE), per_event)]
    for label, r in labelled:
        lat = r["latency_ms"]
        print(f"{'achieved rate (' + label + ', events/s)':<46}{r['rate_events_per_s']:>14}")
        for k in ("p50", "p95", "p99", "max"):
            print(f"{'  commit->applied ' + k + ' ms':<46}{lat[k]:>14}")
        for k in ("p50", "p99"):
            print(f"{'  of which commit->broker ' + k + ' ms':<46}{r['commit_to_broker_ms'][k]:>14}")
        print(f"{'  duplicates applied':<46}{r['duplicates_applied']:>14}")
        print(
            f"{'  applied / caught up s after the last write':<46}{(r['applied'], r['caught_up_s_after_last_write'])!s:>14}"
        )
    print(f"{'highest sustained rate (events/s)':<46}{sustained['rate_events_per_s']:>14}")
    for sc in scale:
        print(
            f"{'consumers x' + str(sc['consumer_processes']) + ' on a backlog (events/s)':<46}{sc['events_per_s']:>14}"
        )
    print(
        f"{'writer tx/s without / with an event':<46}{(writer_cost['without_event_tx_per_s'], writer_cost['with_event_tx_per_s'])!s:>14}"
    )
    print(f"{'  event overhead %':<46}{writer_cost['event_overhead_pct']:>14}")
    print(f"\n[bench] written to {RESULTS / 'latest.json'}")


def run() -> None:
    try:
        asyncio.run(main())
    finally:
        for proc in PROCESSES:
            proc.terminate()


if __name__ == "__main__":
    run()
