"""The load generator: offers a steady event rate into an outbox, up to ~10k events/s on 2 cores.

It is not the system under test, so it is cheap: plain psycopg (the same INSERT as OutboxWriter, NOTIFY
per transaction when wake-ups are on), several processes with several connections each, and, past ~200
transactions/s per connection, several events per transaction (as a service committing a bulk change would).
Each event's commit time (wall clock, taken right after COMMIT returns) goes to a file per process, for
commit -> applied latency.
"""

from __future__ import annotations

import asyncio
import math
import multiprocessing
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

INSERT = (
    "INSERT INTO outbox (event_id, topic, event_type, source, aggregate_id, aggregate_version, payload, occurred_at) "
    "VALUES (%s, %s, %s, %s, %s, %s, %s, %s)"
)
MAX_TX_PER_CONNECTION = 200


@dataclass(frozen=True)
class Load:
    dsn: str
    topic: str
    rate: int  # events/s offered
    seconds: float
    aggregates: int
    notify: bool
    processes: int = 2
    connections: int = 4  # per process

    @property
    def per_transaction(self) -> int:
        streams = self.processes * self.connections
        return max(1, math.ceil(self.rate / (streams * MAX_TX_PER_CONNECTION)))

    @property
    def total(self) -> int:
        return int(self.rate * self.seconds)


def _stream(load: Load, worker: int, stream: int) -> list[int]:
    """The event numbers one connection writes: every n-th of the run, n = all connections."""
    streams = load.processes * load.connections
    return list(range(worker * load.connections + stream, load.total, streams))


async def _worker(load: Load, worker: int, ready: Any) -> str:
    connections = [
        await psycopg.AsyncConnection.connect(load.dsn, autocommit=True) for _ in range(load.connections)
    ]
    lines: list[str] = []
    # Every process connected and imported: they (and the parent) pass the barrier together and start
    # 0.2 s later, whatever the spawn took on a busy machine.
    await asyncio.to_thread(ready.wait)
    start_at = time.time() + 0.2

    async def write(stream: int) -> None:
        conn = connections[stream]
        numbers = _stream(load, worker, stream)
        for first in range(0, len(numbers), load.per_transaction):
            chunk = numbers[first : first + load.per_transaction]
            delay = start_at + chunk[-1] / load.rate - time.time()
            if delay > 0:
                await asyncio.sleep(delay)
            now = datetime.now(UTC)
            rows = []
            ids = []
            for i in chunk:
                event_id = uuid.uuid4()
                ids.append(event_id)
                rows.append(
                    (
                        event_id,
                        load.topic,
                        "bench.document.enabled",
                        "bench",
                        f"doc-{i % load.aggregates}",
                        i,
                        Jsonb({"i": i, "version": i}),
                        now,
                    )
                )
            async with conn.transaction():
                async with conn.cursor() as cur:
                    await cur.executemany(INSERT, rows)
                if load.notify:
                    await conn.execute("SELECT pg_notify('outbox_pending', '')")
            committed = time.time()
            lines.extend(f"{event_id} {committed:.6f}\n" for event_id in ids)

    await asyncio.gather(*(write(s) for s in range(load.connections)))
    for conn in connections:
        await conn.close()
    return "".join(lines)


def _worker_main(load: Load, worker: int, out: str, ready: Any) -> None:
    Path(out).write_text(asyncio.run(_worker(load, worker, ready)))


class LoadRun:
    """`await start()` the processes (it returns when they begin, together), `join_async()`, then
    `committed()`."""

    def __init__(self, load: Load, scratch: Path) -> None:
        self.load = load
        self.files = [scratch / f"load-{uuid.uuid4().hex[:8]}-{w}.txt" for w in range(load.processes)]
        context = multiprocessing.get_context("spawn")
        self.ready = context.Barrier(load.processes + 1)
        self.started_at = 0.0
        self.workers = [
            context.Process(target=_worker_main, args=(load, w, str(self.files[w]), self.ready), daemon=True)
            for w in range(load.processes)
        ]

    async def start(self) -> LoadRun:
        for worker in self.workers:
            worker.start()
        await asyncio.to_thread(self.ready.wait, 120)
        self.started_at = time.time() + 0.2
        return self

    @property
    def pids(self) -> list[int]:
        return [w.pid for w in self.workers if w.pid is not None]

    def join(self) -> float:
        """Waits for every process; returns the seconds from the agreed start to the last commit."""
        for worker in self.workers:
            worker.join()
            if worker.exitcode != 0:
                raise RuntimeError(f"load generator process exited with {worker.exitcode}")
        return max(self.committed().values(), default=self.started_at) - self.started_at

    async def join_async(self) -> float:
        """`join()` without blocking the event loop."""
        return await asyncio.to_thread(self.join)

    def committed(self) -> dict[str, float]:
        found: dict[str, float] = {}
        for path in self.files:
            if path.exists():
                for line in path.read_text().splitlines():
                    event_id, when = line.split()
                    found[event_id] = float(when)
        return found

    def cleanup(self) -> None:
        for path in self.files:
            path.unlink(missing_ok=True)
