"""`make bench`: what one event costs and how fast the outbox goes, on real PostgreSQL and the real broker.

1. Drain: a backlog of N outbox rows (default 200,000 over 1,000 aggregates) published by one relay process,
   then two, then four; events/s = rows after the first batch / (last batch's commit - first batch's
   commit); the topic is then read back: every event exactly once, each aggregate's versions in order.
2. Latency and CPU: a steady offered rate (1,000 events/s for 20 s, then BENCH_RATES) from the load
   generator (bench/load.py: several processes, up to ~10k events/s), published by a relay process and
   applied by an idempotent consumer process; commit -> applied percentiles and CPU µs per event by part
   (relay, consumer, PostgreSQL, broker; bench/cpu.py). The highest rate kept with p99 <= 100 ms is
   reported. Also: polling only, a per-event handler, and both lingers (the relay's claim linger and the
   consumer's batch linger, BENCH_LINGER_MS, default 10) at 1,000 events/s.
3. Consumer scale-out: a backlog on the topic consumed by one consumer process, then by two in one group.
4. Writer cost: 8 tasks for 5 s, each transaction inserts a domain row, with and without one OutboxWriter
   event (SQLAlchemy + psycopg, the services' path), alternated 3 times; tx/s both ways.

Results go to bench/results/latest.json and a table on stdout. Run it on an otherwise quiet machine (the
CPU figures count the whole PostgreSQL server). Environment knobs: BENCH_DRAIN_EVENTS, BENCH_RATE,
BENCH_RATES (default "2000,5000,10000"), BENCH_SECONDS, BENCH_AGGREGATES, BENCH_SCALE_EVENTS, BENCH_RELAYS
(default "1,2,4"), BENCH_LINGER_MS.
"""

from __future__ import annotations

import asyncio
import json
import os
from datetime import UTC, datetime
from typing import Any

from bench.common import DRAIN_EVENTS, PROCESSES, RATE, RESULTS, SCALE_EVENTS, SECONDS, machine
from bench.latency import bench_latency, sustained
from bench.report import print_table
from bench.throughput import bench_consumer_scale_out, bench_drain, bench_writer_cost

EXTRA_RATES = [int(r) for r in os.environ.get("BENCH_RATES", "2000,5000,10000").split(",") if r]
RELAYS = [int(n) for n in os.environ.get("BENCH_RELAYS", "1,2,4").split(",") if n]
LINGER_MS = int(os.environ.get("BENCH_LINGER_MS", "10"))


async def main() -> None:
    drains = {}
    for relays in RELAYS:
        print(f"[bench] drain: {DRAIN_EVENTS} rows backlog, {relays} relay process(es) ...", flush=True)
        drains[str(relays)] = await bench_drain(relays)
    print(f"[bench] latency and CPU: {RATE}/s for {SECONDS}s with NOTIFY ...", flush=True)
    notify = await bench_latency(rate=RATE)
    rates = {}
    for rate in EXTRA_RATES:
        print(f"[bench] latency: {rate}/s for {SECONDS}s with NOTIFY ...", flush=True)
        rates[str(rate)] = await bench_latency(rate=rate)
    print(f"[bench] latency: {RATE}/s for {SECONDS}s, polling only ...", flush=True)
    poll = await bench_latency(rate=RATE, notify=False)
    print(f"[bench] latency: {RATE}/s for {SECONDS}s with NOTIFY, a per-event handler ...", flush=True)
    per_event = await bench_latency(rate=RATE, handler="per-event-guarded")
    print(f"[bench] latency and CPU: {RATE}/s for {SECONDS}s, relay and consumer linger {LINGER_MS} ms ...")
    lingering = await bench_latency(rate=RATE, linger_ms=LINGER_MS)
    print(f"[bench] consumer scale-out: {SCALE_EVENTS} events, 1 then 2 consumer processes ...", flush=True)
    scale = [await bench_consumer_scale_out(1), await bench_consumer_scale_out(2)]
    print("[bench] writer cost: domain row with and without an event ...", flush=True)
    writer_cost = await bench_writer_cost()
    best = sustained([notify, *rates.values()])
    one = drains.get("1", next(iter(drains.values())))
    result: dict[str, Any] = {
        "when": datetime.now(UTC).isoformat(),
        "relay_drain_events_per_s": one["events_per_s"],
        "relay_drain_by_relays_events_per_s": {n: d["events_per_s"] for n, d in drains.items()},
        "cpu_us_per_event_at_1k": notify["cpu_us_per_event"],
        "latency_ms": notify["latency_ms"],
        "rate_events_per_s": notify["rate_events_per_s"],
        "highest_sustained_events_per_s_p99_100ms": best["offered_events_per_s"] if best else None,
        "drain": drains,
        "latency_notify": notify,
        "latency_by_rate": rates,
        "latency_poll_only": poll,
        "latency_per_event_handler": per_event,
        "latency_linger": lingering,
        "consumer_scale_out": scale,
        "writer_cost": writer_cost,
        "machine": machine(),
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "latest.json").write_text(json.dumps(result, indent=2) + "\n")
    print_table(result)
    print(f"\n[bench] written to {RESULTS / 'latest.json'}")


def run() -> None:
    try:
        asyncio.run(main())
    finally:
        for proc in PROCESSES:
            proc.terminate()


if __name__ == "__main__":
    run()
