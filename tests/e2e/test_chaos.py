"""Chaos: a steady stream of document changes from several clients while, in turn, console's relay is
SIGKILLed, the indexer consumer is SIGKILLed, the broker link is cut for seconds, and the broker process
itself is SIGKILLed and restarted (s3 storage: topics, records, offsets survive). Rollbacks are injected
throughout. After quiescence: nothing lost, nothing applied twice, nothing rolled back escaped.

Everything on 127.0.0.1; the system has its own durable broker behind a TCP proxy, so every relay and
consumer connection goes through the proxy.

The durable broker is Tansu on s3 storage (a local moto server), and its fetches slow down with history
(issue 27; measured on a 2-core host, docs/broker.md terms):
- every fetch LISTs each requested partition's record objects (`GET /bucket?list-type=2&prefix=
  .../partitions/N/records/`, no start-after: moto's log of one chaos run holds ~1,300 such lists), so a
  fetch costs moto O(batches ever written to the partition): 5 ms at 13 objects, 26 ms at 125, 95 ms at
  500, 237 ms at 1,000 (boto3 against moto_server, full CPU);
- a fetch returns only what Tansu read before `fetch_max_wait_ms` ran out, not "at least min bytes":
  400 one-record batches over 8 partitions, consumed at a third of one core, came in 140 records per
  fetch with a 1,000 ms wait, 30 with 250 ms, 13 with 100 ms and 1-3 with 10 ms (183 of 400 in 120 s);
  with memory storage all 400 come in the first fetch whatever the wait.
  (`python -m tests.e2e.tansu_s3_probe s3|memory WAIT_MS` reproduces it.)
So on a slow or busy host each fetch's listing eats the wait before it reads a record, and a consumer
applies a few events per second however healthy it is: the failure seen on a 3x slower host (31 events
in 50 s after the consumer restart, a backlog of 508) and every recovery growing with the backlog.
Real Kafka serves a fetch from an offset index, independent of history. The harness answers both halves:
the durable broker's consumers wait 1 s per fetch (4x the work per list), and the load is held while
the two hops are more than `Backpressure.high` events behind (chaos_watch.py), so no fault's backlog
outlives its phase. Each waiting phase prints where the system is (`Watch.snapshot`)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.chaos_audit import audit, render
from tests.e2e.chaos_load import Corpus, LoadStats, client_loop, rollback_loop
from tests.e2e.chaos_watch import Backpressure, Watch
from tests.e2e.client import User
from tests.e2e.infra import Infra
from tests.e2e.system import System, start_system
from testsupport import wait_until
from testsupport.broker import BrokerBehindProxy

FLOW_TIMEOUT_S = 60.0  # each fault must be followed by flowing changes within this long
AUDIT_TIMEOUT_S = 90.0
# The hard limit covers the test's own budget (9 recoveries, 8 outages, the audit) plus start-up, so a slow
# machine fails on the phase that was slow (its message names it), not on a blanket timeout mid-recovery:
# CI on a slower host than the ~85 s seen here once ran past a 300 s limit with every phase still moving.
pytestmark = [pytest.mark.slow, pytest.mark.chaos, pytest.mark.e2e, pytest.mark.timeout(900)]

CLIENTS_PER_USER = 2
DOCS_PER_USER = 12
PACE_S = 0.2  # each client: ~5 changes/s
DOWN_S = 5.0  # how long a killed process (relay, consumer, broker) stays dead
CUT_S = 8.0  # how long the broker link stays cut
ROUNDS = 2  # the fault schedule, twice
FLOW = 40  # changes the indexer must apply after each fault before the next one
# Tansu on s3 storage reads a fetch's records only until the fetch's wait runs out, after listing every
# record object of each partition (see the module docstring): the library's 5 ms wait gets 1-3 records a
# fetch on a slow host. A 1 s wait gets ~140; it costs at most that much delivery latency per idle hop.
DURABLE_BROKER_ENV = {"OUTBOX_CONSUMER_FETCH_MAX_WAIT_MS": "1000"}
REPORT_EVERY_S = 10.0  # a waiting phase prints where the system is this often


@pytest.fixture
def broker(make_broker: Callable[..., BrokerBehindProxy]) -> BrokerBehindProxy:
    return make_broker(durable=True)


@pytest.fixture
def chaos_system(infra: Infra, broker: BrokerBehindProxy, tmp_path: Path) -> Iterator[System]:
    with start_system(
        infra, bootstrap=broker.bootstrap, log_dir=tmp_path / "system", label="chaos", env=DURABLE_BROKER_ENV
    ) as s:
        yield s


@pytest.fixture
async def corpora(chaos_system: System) -> AsyncIterator[list[Corpus]]:
    made = []
    for i in range(2):
        user = await User.signed_up(chaos_system, f"chaos{i}")
        ds = await user.create_dataset()
        docs = [(await user.create_document(ds, f"seed {i} {n}"))["id"] for n in range(DOCS_PER_USER)]
        made.append(Corpus(user, ds, docs))
    yield made
    for c in made:
        await c.user.aclose()


class Faults:
    """The fault schedule's bookkeeping, and a probe that the pipeline flows again after each fault."""

    def __init__(self, system: System, watch: Watch) -> None:
        self.system = system
        self.watch = watch
        self.kills: dict[str, int] = {}
        self.outages: dict[str, float] = {}
        self.recoveries: list[tuple[str, float]] = []  # (after what, seconds until changes flowed again)

    def _outage(self, what: str, since: float) -> None:
        self.outages[what] = round(self.outages.get(what, 0.0) + time.monotonic() - since, 1)

    def figures(self) -> dict[str, Any]:
        return {
            "kills": self.kills,
            "outages": self.outages,
            "outage_s": sum(self.outages.values()),
            "recoveries_s": {what: round(s, 1) for what, s in self.recoveries},
        }

    def _applied(self) -> int:
        group = self.system.groups["indexer-consumer"]
        return int(self.system.scalar("indexer", "SELECT count(*) FROM inbox WHERE consumer = %s", group))

    async def flowing(self, what: str, more: int = FLOW, timeout: float = FLOW_TIMEOUT_S) -> None:
        """The indexer applies `more` new changes and console sees reports again: end to end works."""
        start = self._applied()
        t = time.monotonic()

        reported = t

        async def moved() -> bool:
            nonlocal reported
            if time.monotonic() - reported > REPORT_EVERY_S:
                reported = time.monotonic()
                print(
                    f"[chaos] waiting {reported - t:.0f}s after {what}: {await self.watch.snapshot()}",
                    flush=True,
                )
            return self._applied() >= start + more

        try:
            await wait_until(moved, timeout=timeout, interval=0.2, what=f"changes flowing after {what}")
        except AssertionError as exc:
            raise AssertionError(
                f"{exc}; {await self.watch.snapshot()}; earlier recoveries {self.recoveries}"
            ) from None
        took = time.monotonic() - t
        self.recoveries.append((f"{len(self.recoveries)}:{what}", took))
        print(f"[chaos] flowing after {what} in {took:.1f}s", flush=True)

    async def kill_and_restart(self, name: str) -> None:
        t = time.monotonic()
        self.system.kill(name)
        self.kills[name] = self.kills.get(name, 0) + 1
        await asyncio.sleep(DOWN_S)  # the outage itself
        self.system.start(name)
        self._outage(name, t)
        await self.flowing(f"{name} restart")

    async def cut(self, broker: BrokerBehindProxy) -> None:
        t = time.monotonic()
        broker.proxy.cut("blackhole")
        await asyncio.sleep(CUT_S)  # the outage itself
        broker.proxy.restore()
        self._outage("broker link cut", t)
        await self.flowing("broker link restore")

    async def restart_broker(self, broker: BrokerBehindProxy) -> None:
        t = time.monotonic()
        broker.broker.kill()  # SIGKILL; then the same port and the same s3 bucket
        self.kills["broker"] = self.kills.get("broker", 0) + 1
        await asyncio.sleep(DOWN_S)  # the outage itself
        await asyncio.to_thread(broker.broker.start)
        self._outage("broker restart", t)
        await self.flowing("broker restart")


async def test_no_loss_no_duplicate_no_phantom_under_chaos(
    chaos_system: System, broker: BrokerBehindProxy, corpora: list[Corpus]
) -> None:
    system = chaos_system
    load = LoadStats()
    stop = asyncio.Event()
    watch = Watch(system)
    pressure = Backpressure()
    gate = pressure.open
    workers = [
        asyncio.create_task(
            client_loop(
                c, load, stop, seed=10 * i + k, pace=PACE_S, max_requests=int(180 / PACE_S), gate=gate
            )
        )
        for i, c in enumerate(corpora)
        for k in range(CLIENTS_PER_USER)
    ]
    workers.append(
        asyncio.create_task(
            rollback_loop(system.database_urls["console"], corpora, load, stop, every=1.0, gate=gate)
        )
    )
    workers.append(asyncio.create_task(pressure.run(watch, stop)))
    faults = Faults(system, watch)
    started = time.monotonic()
    try:
        await faults.flowing("start")
        for _ in range(ROUNDS):
            await faults.kill_and_restart("console-relay")
            await faults.kill_and_restart("indexer-consumer")
            await faults.cut(broker)
            await faults.restart_broker(broker)
        await faults.flowing("the storm's tail")
    finally:
        stop.set()
        await asyncio.gather(*workers)
    storm_s = time.monotonic() - started
    assert not system.dead(), f"processes died on their own: {system.dead()}"

    figures = await audit(system, corpora, load, timeout=AUDIT_TIMEOUT_S)
    print(
        f"\nstorm {storm_s:.0f}s; load held {pressure.holds}x for {pressure.held_s:.1f}s in all "
        f"(more than {pressure.high} events not yet applied)\n" + render(figures, load, faults.figures())
    )

    assert figures.quiesced, figures.details["backlog"]
    assert figures.committed > 300 and len(load.phantoms) > 5 and load.http_rollbacks > 0
    assert (figures.lost, figures.duplicated, figures.phantom) == (0, 0, 0)
