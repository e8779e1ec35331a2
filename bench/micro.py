"""What one round trip costs the processes of the system: the unit costs behind `make bench`'s CPU per event.

Each figure is the CPU (`time.process_time()` for this process, /proc for the broker) spent per operation over
a few thousand of them, on the local PostgreSQL and broker:
- a statement through an SQLAlchemy session, through its Core connection, and straight on the psycopg
  connection underneath (the same prepared `SELECT`), and a whole session transaction with one statement;
  the same through asyncpg when it is installed (`uv run --group peers`);
- an offset commit (client and broker), and a second of an idle consumer polling (`fetch_max_wait_ms` 5, the
  local broker's setting, and 500, Apache Kafka's default).

`python -m bench.micro` prints them and writes bench/results/micro.json. Run it on a quiet machine.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import time
import uuid
from datetime import UTC, datetime
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from sqlalchemy import text
from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine

from bench.common import RESULTS, machine
from bench.cpu import broker_cpu_s
from outbox.kafka import bootstrap_from_env, ensure_topics
from testsupport import database_url

STATEMENTS = 3000
TRANSACTIONS = 1000
COMMITS = 2000
IDLE_S = 5.0


def _us(seconds: float, n: int) -> float:
    return round(seconds / n * 1e6, 1)


async def sql_costs(url: str) -> dict[str, float]:
    engine = create_async_engine(url, pool_size=2)
    sessions = async_sessionmaker(engine, expire_on_commit=False)
    query = text("SELECT 1 WHERE 1 = :x")
    figures: dict[str, float] = {}
    async with sessions() as session, session.begin():
        for _ in range(10):  # past the driver's prepare threshold
            await session.execute(query, {"x": 1})
        started = time.process_time()
        for _ in range(STATEMENTS):
            await session.execute(query, {"x": 1})
        figures["session_statement_us"] = _us(time.process_time() - started, STATEMENTS)
        conn = await session.connection()
        started = time.process_time()
        for _ in range(STATEMENTS):
            await conn.execute(query, {"x": 1})
        figures["core_statement_us"] = _us(time.process_time() - started, STATEMENTS)
        if "psycopg" in url:
            raw: Any = (await conn.get_raw_connection()).driver_connection
            started = time.process_time()
            for _ in range(STATEMENTS):
                cursor = await raw.execute("SELECT 1 WHERE 1 = %(x)s", {"x": 1})
                await cursor.fetchall()
            figures["driver_statement_us"] = _us(time.process_time() - started, STATEMENTS)
    started = time.process_time()
    for _ in range(TRANSACTIONS):
        async with sessions() as session, session.begin():
            await session.execute(query, {"x": 1})
    figures["session_transaction_one_statement_us"] = _us(time.process_time() - started, TRANSACTIONS)
    await engine.dispose()
    return figures


async def _started_consumer(bootstrap: str, topic: str, **settings: Any) -> AIOKafkaConsumer:
    """A consumer of `topic` in a group of its own, from the start, committing only when told."""
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=topic,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        **settings,
    )
    await consumer.start()
    return consumer


async def offset_commit_cost(bootstrap: str) -> dict[str, float]:
    topic = f"bench.micro.{uuid.uuid4().hex[:8]}"
    await ensure_topics(bootstrap, [topic])
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await producer.start()
    await producer.send_and_wait(topic, b"x", partition=0)
    await producer.stop()
    consumer = await _started_consumer(bootstrap, topic)
    try:
        while not await consumer.getmany(timeout_ms=1000):
            pass
        tp = TopicPartition(topic, 0)
        broker, started = broker_cpu_s(), time.process_time()
        for n in range(COMMITS):
            await consumer.commit({tp: 1 + n % 2})
        return {
            "offset_commit_client_us": _us(time.process_time() - started, COMMITS),
            "offset_commit_broker_us": _us(broker_cpu_s() - broker, COMMITS),
        }
    finally:
        await consumer.stop()


async def idle_consumer_cost(bootstrap: str, fetch_max_wait_ms: int) -> dict[str, float]:
    topic = f"bench.micro.idle.{uuid.uuid4().hex[:8]}"
    await ensure_topics(bootstrap, [topic])
    consumer = await _started_consumer(bootstrap, topic, fetch_max_wait_ms=fetch_max_wait_ms)
    try:
        await consumer.getmany(timeout_ms=2000)  # joined, positions reset
        broker, started, wall = broker_cpu_s(), time.process_time(), time.monotonic()
        while time.monotonic() - wall < IDLE_S:
            await consumer.getmany(timeout_ms=200)
        elapsed = time.monotonic() - wall
        return {
            f"idle_consumer_fetch_wait_{fetch_max_wait_ms}ms_client_pct_core": round(
                (time.process_time() - started) / elapsed * 100, 1
            ),
            f"idle_consumer_fetch_wait_{fetch_max_wait_ms}ms_broker_pct_core": round(
                (broker_cpu_s() - broker) / elapsed * 100, 1
            ),
        }
    finally:
        await consumer.stop()


async def main() -> None:
    bootstrap = bootstrap_from_env()
    url = database_url("postgres")
    result: dict[str, Any] = {"when": datetime.now(UTC).isoformat()}
    result["psycopg"] = await sql_costs(url)
    if importlib.util.find_spec("asyncpg"):
        result["asyncpg"] = await sql_costs(url.replace("+psycopg", "+asyncpg"))
    result["broker"] = await offset_commit_cost(bootstrap)
    for wait_ms in (5, 500):
        result["broker"] |= await idle_consumer_cost(bootstrap, wait_ms)
    result["machine"] = machine()
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "micro.json").write_text(json.dumps(result, indent=2) + "\n")
    for part in ("psycopg", "asyncpg", "broker"):
        for name, value in result.get(part, {}).items():
            print(f"{part:<8} {name:<58}{value:>10}")
    print(f"\n[bench] written to {RESULTS / 'micro.json'}")


if __name__ == "__main__":
    asyncio.run(main())
