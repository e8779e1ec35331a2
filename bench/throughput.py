"""Throughput: the relay's drain (1, 2, 4 relay processes), consumers on a backlog, the writer's cost."""

from __future__ import annotations

import asyncio
import json
import sys
import time
import uuid
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import async_sessionmaker

from bench.common import (
    ANY_PENDING,
    DRAIN_EVENTS,
    EFFECT_CONSUMER,
    SCALE_EVENTS,
    WRITERS,
    check_topic,
    fresh_database,
    process,
    relay,
    scalar,
    write_backlog,
)
from outbox import Event, OutboxWriter
from outbox.kafka import bootstrap_from_env, ensure_topics


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
