"""`make bench-peers`: libs/outbox and faststream-outbox side by side on the same PostgreSQL and broker.

Three figures, each for both libraries, alternating which goes first, BENCH_PEERS_REPS repetitions (3),
medians reported with the ratios:
1. drain: a backlog of N events over K aggregates published by one relay process (rows left in the table,
   polled every 50 ms, from the first progress to empty); per-key order then checked on the topic. Ours also
   runs with two relay processes (shares of the aggregates, order kept). The peer runs twice: its fastest
   setting (64 workers, order not kept) and its ordered one (1 worker).
2. latency: R events/s committed one per transaction for S seconds; a plain aiokafka consumer in this
   process stamps each record's arrival; commit -> received p50/p99 (one process, one clock).
3. writer cost: 8 concurrent tasks for S seconds, each transaction inserts a domain row plus one event
   through the library's API, against the same transaction without the event; tx/s both ways, per driver.

Results: bench/results/peers.json and a table on stdout. Knobs: BENCH_PEERS_REPS, BENCH_PEERS_DRAIN,
BENCH_PEERS_RATE, BENCH_PEERS_SECONDS, BENCH_PEERS_WRITER_SECONDS.
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer
from faststream_outbox import OutboxBroker
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine

from bench.common import machine
from bench.peers.fso_relay import TABLE, table
from outbox import Event, OutboxWriter, create_tables
from outbox.kafka import bootstrap_from_env, ensure_topics
from testsupport import ServiceProcess, recreate_database

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "bench" / "results"
LOGS = ROOT / ".stack" / "bench-logs"
REPS = int(os.environ.get("BENCH_PEERS_REPS", "3"))
DRAIN = int(os.environ.get("BENCH_PEERS_DRAIN", "50000"))
AGGREGATES = 1000
RATE = int(os.environ.get("BENCH_PEERS_RATE", "500"))
SECONDS = float(os.environ.get("BENCH_PEERS_SECONDS", "10"))
WRITER_SECONDS = float(os.environ.get("BENCH_PEERS_WRITER_SECONDS", "5"))
WRITERS = 8
TEXT = "x" * 120
DOMAIN_DDL = "CREATE TABLE bench_domain (id bigserial PRIMARY KEY, name text NOT NULL, body jsonb NOT NULL)"
DOMAIN_INSERT = text("INSERT INTO bench_domain (name, body) VALUES (:name, CAST(:body AS jsonb))")


def body(i: int) -> dict[str, Any]:
    return {"k": f"doc-{i % AGGREGATES}", "v": i, "i": i, "text": TEXT}


def urls(name: str) -> tuple[str, str]:
    """A fresh database; its URL for psycopg and for asyncpg."""
    url = recreate_database(name)
    return url, url.replace("postgresql+psycopg://", "postgresql+asyncpg://")


@dataclass
class Peer:
    """One library under test: how to create its table, write events, and start its relay."""

    name: str
    driver: str  # the SQLAlchemy URL flavour its writers use by default

    async def create(self, engine: AsyncEngine) -> None:
        async with engine.begin() as conn:
            if self.name == "ours":
                await conn.run_sync(create_tables)
            else:
                await conn.run_sync(lambda c: table().metadata.create_all(c))
            await conn.execute(text(DOMAIN_DDL))

    def writer(self, topic: str, engine: AsyncEngine) -> Callable[[AsyncSession, list[int]], Awaitable[None]]:
        if self.name == "ours":
            ours = OutboxWriter("bench")

            async def add(session: AsyncSession, ids: list[int]) -> None:
                events = [
                    Event(topic=topic, type="bench.doc", aggregate_id=body(i)["k"], data=body(i)) for i in ids
                ]
                await ours.add(session, *events)

            return add
        broker = OutboxBroker(engine, outbox_table=table(), logger=None)

        async def publish(session: AsyncSession, ids: list[int]) -> None:
            if len(ids) == 1:
                await broker.publish(body(ids[0]), queue=topic, session=session)
            else:
                await broker.publish_batch(*(body(i) for i in ids), queue=topic, session=session)

        return publish

    def relay(
        self, psycopg_url: str, asyncpg_url: str, topic: str, workers: int = 1, index: int = 0
    ) -> ServiceProcess:
        if self.name == "ours":
            argv = [
                sys.executable,
                "-m",
                "outbox.ops.cli",
                "relay",
                "--database-url",
                psycopg_url,
                "--name",
                f"peers-{index}",
            ]
        else:
            argv = [sys.executable, "-m", "bench.peers.fso_relay", asyncpg_url, topic, topic, str(workers)]
        env = {"LOG_LEVEL": "WARNING", "PYTHONPATH": str(ROOT)}
        return ServiceProcess(f"{self.name}-relay-{index}", argv, env=env, log_dir=LOGS)

    def pending_sql(self) -> str:
        if self.name == "ours":
            return "SELECT count(*) FROM outbox WHERE published_at IS NULL"
        return f"SELECT count(*) FROM {TABLE}"


OURS = Peer("ours", "psycopg")
FSO = Peer("faststream-outbox", "asyncpg")


async def scalar(engine: AsyncEngine, sql: str) -> int:
    async with engine.connect() as conn:
        return int((await conn.execute(text(sql))).scalar_one())


async def read_values(topic: str, expect: int, timeout: float = 60) -> list[tuple[str, int]]:
    """(key, version) of every record on `topic`, in partition order."""
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap_from_env(), auto_offset_reset="earliest", enable_auto_commit=False
    )
    await consumer.start()
    seen: list[tuple[str, int]] = []
    deadline = time.monotonic() + timeout
    try:
        while len(seen) < expect and time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=500, max_records=10000)
            for records in batch.values():
                for r in records:
                    data = json.loads(r.value)
                    seen.append((data["k"], int(data["v"])))
    finally:
        await consumer.stop()
    return seen


def order_violations(values: list[tuple[str, int]]) -> int:
    highest: dict[str, int] = {}
    violations = 0
    for key, version in values:
        if version < highest.get(key, -1):
            violations += 1
        highest[key] = max(version, highest.get(key, -1))
    return violations


async def drain(peer: Peer, workers: int = 1, relays: int = 1) -> dict[str, Any]:
    """`relays` processes of ours split the aggregates into shares (order kept); the peer's `workers`."""
    psycopg_url, asyncpg_url = urls(f"peers_drain_{uuid.uuid4().hex[:6]}")
    engine = create_async_engine(psycopg_url if peer.name == "ours" else asyncpg_url)
    await peer.create(engine)
    topic = f"peers.drain.{uuid.uuid4().hex[:8]}"
    await ensure_topics(bootstrap_from_env(), [topic])
    add = peer.writer(topic, engine)
    sessions = async_sessionmaker(engine, expire_on_commit=False)
    for start in range(0, DRAIN, 2000):
        async with sessions() as session, session.begin():
            await add(session, list(range(start, min(start + 2000, DRAIN))))
    procs = [peer.relay(psycopg_url, asyncpg_url, topic, workers, n).start() for n in range(relays)]
    try:
        first: tuple[float, int] | None = None
        while (left := await scalar(engine, peer.pending_sql())) > 0:
            if first is None and left < DRAIN:
                first = (time.perf_counter(), left)
            for proc in procs:
                if not proc.alive:
                    raise RuntimeError(f"{peer.name} relay died:\n{proc.tail()}")
            await asyncio.sleep(0.05)
        end = time.perf_counter()
    finally:
        for proc in procs:
            proc.terminate()
        await engine.dispose()
    assert first is not None, "the backlog drained between two polls: raise BENCH_PEERS_DRAIN"
    values = await read_values(topic, DRAIN)
    return {
        "events_per_s": round(first[1] / (end - first[0])),
        "records_on_topic": len(values),
        "order_violations": order_violations(values),
        "workers": workers,
        "relays": relays,
    }


async def latency(peer: Peer) -> dict[str, Any]:
    psycopg_url, asyncpg_url = urls(f"peers_latency_{uuid.uuid4().hex[:6]}")
    engine = create_async_engine(psycopg_url if peer.name == "ours" else asyncpg_url, pool_size=WRITERS + 2)
    await peer.create(engine)
    topic = f"peers.latency.{uuid.uuid4().hex[:8]}"
    await ensure_topics(bootstrap_from_env(), [topic])
    add = peer.writer(topic, engine)
    sessions = async_sessionmaker(engine, expire_on_commit=False)
    proc = peer.relay(psycopg_url, asyncpg_url, topic).start()
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap_from_env(),
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        fetch_max_wait_ms=5,
    )
    await consumer.start()
    committed: dict[int, float] = {}
    received: dict[int, float] = {}
    total = int(RATE * SECONDS)

    async def receive() -> None:
        while len(received) < total + 1:
            batch = await consumer.getmany(timeout_ms=100)
            now = time.perf_counter()
            for records in batch.values():
                for r in records:
                    received.setdefault(int(json.loads(r.value)["i"]), now)

    async def write(worker: int, t0: float) -> None:
        for i in range(worker, total, WRITERS):
            delay = t0 + i / RATE - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            async with sessions() as session, session.begin():
                await add(session, [i])
            committed[i] = time.perf_counter()

    receiver = asyncio.create_task(receive())
    try:
        async with sessions() as session, session.begin():  # warm-up: relay and consumer are live
            await add(session, [total])
        deadline = time.monotonic() + 60
        while total not in received:
            if time.monotonic() > deadline or not proc.alive:
                raise RuntimeError(f"{peer.name}: warm-up event never arrived:\n{proc.tail()}")
            await asyncio.sleep(0.05)
        t0 = time.perf_counter() + 0.1
        await asyncio.gather(*(write(w, t0) for w in range(WRITERS)))
        achieved = total / (time.perf_counter() - t0)
        await asyncio.wait_for(receiver, 120)
    finally:
        receiver.cancel()
        await consumer.stop()
        proc.terminate()
        await engine.dispose()
    ms = sorted((received[i] - committed[i]) * 1000 for i in committed)
    q = statistics.quantiles(ms, n=100, method="inclusive")
    return {"p50": round(q[49], 2), "p99": round(q[98], 2), "achieved_per_s": round(achieved)}


async def writer_cost(peer: Peer, driver: str) -> dict[str, Any]:
    psycopg_url, asyncpg_url = urls(f"peers_writer_{uuid.uuid4().hex[:6]}")
    engine = create_async_engine(psycopg_url if driver == "psycopg" else asyncpg_url, pool_size=WRITERS + 2)
    await peer.create(engine)
    add = peer.writer("peers.writer", engine)
    sessions = async_sessionmaker(engine, expire_on_commit=False)
    result: dict[str, Any] = {"driver": driver}

    async def loop(worker: int, counts: list[int], with_event: bool, stop: float) -> None:
        while time.perf_counter() < stop:
            async with sessions() as session, session.begin():
                await session.execute(DOMAIN_INSERT, {"name": "doc", "body": json.dumps({"w": worker})})
                if with_event:
                    await add(session, [counts[worker]])
            counts[worker] += 1

    for label, with_event in (("without_event_tx_per_s", False), ("with_event_tx_per_s", True)):
        counts = [0] * WRITERS
        started = time.perf_counter()
        stop = started + WRITER_SECONDS
        await asyncio.gather(*(loop(w, counts, with_event, stop) for w in range(WRITERS)))
        result[label] = round(sum(counts) / (time.perf_counter() - started))
    result["event_overhead_pct"] = round(
        100 * (1 - result["with_event_tx_per_s"] / result["without_event_tx_per_s"]), 1
    )
    await engine.dispose()
    return result


def median(runs: list[dict[str, Any]], key: str) -> float:
    return float(statistics.median(r[key] for r in runs))


async def main() -> None:
    runs: dict[str, list[dict[str, Any]]] = {}

    async def measure(label: str, coro: Awaitable[dict[str, Any]]) -> None:
        print(f"[peers] {label} ...", flush=True)
        figures = await coro
        print(f"[peers]   {figures}", flush=True)
        runs.setdefault(label, []).append(figures)

    for rep in range(REPS):
        peers = (OURS, FSO) if rep % 2 == 0 else (FSO, OURS)
        for peer in peers:
            await measure(f"drain/{peer.name}", drain(peer))
            if peer is OURS:
                await measure("drain/ours-2-relays", drain(peer, relays=2))
            if peer is FSO:
                await measure("drain/faststream-outbox-64-workers", drain(peer, workers=64))
        for peer in peers:
            await measure(f"latency/{peer.name}", latency(peer))
        for peer in peers:
            for driver in ("psycopg", "asyncpg"):
                await measure(f"writer/{peer.name}/{driver}", writer_cost(peer, driver))

    summary = {
        "drain_events_per_s": {
            k.split("/", 1)[1]: median(v, "events_per_s") for k, v in runs.items() if k.startswith("drain/")
        },
        "drain_order_violations": {
            k.split("/", 1)[1]: max(r["order_violations"] for r in v)
            for k, v in runs.items()
            if k.startswith("drain/")
        },
        "latency_ms": {
            k.split("/", 1)[1]: {"p50": median(v, "p50"), "p99": median(v, "p99")}
            for k, v in runs.items()
            if k.startswith("latency/")
        },
        "writer_tx_per_s": {
            k.split("/", 1)[1]: {
                "without_event": median(v, "without_event_tx_per_s"),
                "with_event": median(v, "with_event_tx_per_s"),
                "event_overhead_pct": median(v, "event_overhead_pct"),
            }
            for k, v in runs.items()
            if k.startswith("writer/")
        },
    }
    d, lat, w = summary["drain_events_per_s"], summary["latency_ms"], summary["writer_tx_per_s"]
    ratios = {
        "drain_ours_vs_peer_ordered": round(d["ours"] / d["faststream-outbox"], 2),
        "drain_ours_vs_peer_64_workers": round(d["ours"] / d["faststream-outbox-64-workers"], 2),
        # Issue 26's goal: our best ordered setting against the peer's best (unordered) one.
        "drain_ours_best_ordered_vs_peer_best": round(
            max(d["ours"], d["ours-2-relays"])
            / max(d["faststream-outbox"], d["faststream-outbox-64-workers"]),
            2,
        ),
        "latency_p50_peer_over_ours": round(lat["faststream-outbox"]["p50"] / lat["ours"]["p50"], 2),
        "latency_p99_peer_over_ours": round(lat["faststream-outbox"]["p99"] / lat["ours"]["p99"], 2),
        "writer_ours_psycopg_vs_peer_asyncpg": round(
            w["ours/psycopg"]["with_event"] / w["faststream-outbox/asyncpg"]["with_event"], 2
        ),
        "writer_ours_vs_peer_same_driver_psycopg": round(
            w["ours/psycopg"]["with_event"] / w["faststream-outbox/psycopg"]["with_event"], 2
        ),
        "writer_ours_vs_peer_same_driver_asyncpg": round(
            w["ours/asyncpg"]["with_event"] / w["faststream-outbox/asyncpg"]["with_event"], 2
        ),
    }
    result = {
        "when": datetime.now(UTC).isoformat(),
        "settings": {"reps": REPS, "drain": DRAIN, "rate": RATE, "seconds": SECONDS, "writers": WRITERS},
        "summary": summary,
        "ratios": ratios,
        "runs": runs,
        "machine": machine(),
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "peers.json").write_text(json.dumps(result, indent=2) + "\n")
    print(f"\n{'figure (median of ' + str(REPS) + ')':<52}{'ours':>12}{'peer':>12}{'ratio':>8}")
    rows = [
        (
            "drain ev/s (peer: 1 worker, ordered)",
            d["ours"],
            d["faststream-outbox"],
            ratios["drain_ours_vs_peer_ordered"],
        ),
        (
            "drain ev/s (peer: 64 workers, unordered)",
            d["ours"],
            d["faststream-outbox-64-workers"],
            ratios["drain_ours_vs_peer_64_workers"],
        ),
        (
            "drain ev/s, best ordered (ours: 1 or 2 relays) vs best",
            max(d["ours"], d["ours-2-relays"]),
            max(d["faststream-outbox"], d["faststream-outbox-64-workers"]),
            ratios["drain_ours_best_ordered_vs_peer_best"],
        ),
        (
            f"commit->received p50 ms at {RATE}/s",
            lat["ours"]["p50"],
            lat["faststream-outbox"]["p50"],
            ratios["latency_p50_peer_over_ours"],
        ),
        (
            f"commit->received p99 ms at {RATE}/s",
            lat["ours"]["p99"],
            lat["faststream-outbox"]["p99"],
            ratios["latency_p99_peer_over_ours"],
        ),
    ]
    for driver in ("psycopg", "asyncpg"):
        o, p = w[f"ours/{driver}"], w[f"faststream-outbox/{driver}"]
        rows.append(
            (
                f"writer tx/s with event ({driver})",
                o["with_event"],
                p["with_event"],
                round(o["with_event"] / p["with_event"], 2),
            )
        )
        rows.append((f"writer tx/s without event ({driver})", o["without_event"], p["without_event"], None))
        rows.append((f"event overhead % ({driver})", o["event_overhead_pct"], p["event_overhead_pct"], None))
    for label, ours, peer, ratio in rows:
        print(f"{label:<52}{ours:>12}{peer:>12}{'' if ratio is None else ratio:>8}")
    print(f"order violations on the topic: {summary['drain_order_violations']}")
    print(f"\n[peers] written to {RESULTS / 'peers.json'}")


if __name__ == "__main__":
    asyncio.run(main())
