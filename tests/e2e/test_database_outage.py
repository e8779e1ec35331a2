"""PostgreSQL outages under load (issue 11): the whole system on a private cluster that the test restarts,
then stops for 20 s, while clients change documents and rollbacks are injected. During the outage every API
answer is a 503 in the services' JSON shape, quickly (no 500, no hang); afterwards APIs, relays and consumers
recover by themselves; after quiescence nothing is lost, duplicated or phantom (counted from the databases).
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest

from tests.e2e.chaos_audit import audit, render
from tests.e2e.chaos_load import Corpus, LoadStats, client_loop, rollback_loop
from tests.e2e.client import User
from tests.e2e.infra import Infra
from tests.e2e.infra.postgres import PrivatePostgres
from tests.e2e.system import System, start_system
from testsupport import wait_until

pytestmark = [pytest.mark.slow, pytest.mark.chaos, pytest.mark.e2e, pytest.mark.timeout(420)]

OUTAGE_S = 20.0
PACE_S = 0.2


@pytest.fixture(scope="module")
def cluster() -> Iterator[PrivatePostgres]:
    pg = PrivatePostgres().init().start()
    yield pg
    pg.remove()


@pytest.fixture(scope="module")
def outage_system(
    infra: Infra, cluster: PrivatePostgres, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[System]:
    private = dataclasses.replace(
        infra,
        backend="private-postgres",
        pg_host="127.0.0.1",
        pg_port=cluster.port,
        pg_user="postgres",
        pg_password=None,
    )
    log_dir = tmp_path_factory.mktemp("db-outage")
    with start_system(private, bootstrap=infra.kafka_bootstrap, log_dir=log_dir, label="dbout") as s:
        yield s


@pytest.fixture
async def corpora(outage_system: System) -> AsyncIterator[list[Corpus]]:
    made = []
    for i in range(2):
        user = await User.signed_up(outage_system, f"dbout{i}")
        ds = await user.create_dataset()
        docs = [(await user.create_document(ds, f"seed {i} {n}"))["id"] for n in range(10)]
        made.append(Corpus(user, ds, docs))
    yield made
    for c in made:
        await c.user.aclose()


@dataclasses.dataclass
class Probe:
    """API calls made while the database is down: what each answered, and how fast."""

    statuses: Counter[str] = dataclasses.field(default_factory=Counter)
    codes: Counter[str] = dataclasses.field(default_factory=Counter)
    slowest_s: float = 0.0

    async def run(self, system: System, corpus: Corpus, stop: asyncio.Event) -> None:
        auth = httpx.AsyncClient(base_url=system.url("auth"), headers=corpus.user.console.headers, timeout=30)
        calls = [
            ("console write", lambda: corpus.user.action(corpus.ds, "enable", corpus.docs[0])),
            ("console read", lambda: corpus.user.console.get(f"/console/api/datasets/{corpus.ds}")),
            (
                "indexer search",
                lambda: corpus.user.indexer.get(
                    "/indexer/api/search", params={"dataset_id": corpus.ds, "q": "seed"}
                ),
            ),
            ("auth me", lambda: auth.get("/auth/api/me")),
        ]
        while not stop.is_set():
            for what, call in calls:
                started = time.monotonic()
                try:
                    r = await call()
                    self.statuses[f"{what}: {r.status_code}"] += 1
                    if r.status_code >= 500:
                        self.codes[r.json()["error"]["code"]] += 1
                except httpx.HTTPError as exc:
                    self.statuses[f"{what}: {type(exc).__name__}"] += 1
                self.slowest_s = max(self.slowest_s, time.monotonic() - started)
            await asyncio.sleep(0.25)
        await auth.aclose()


async def test_apis_answer_503_during_a_database_outage_and_everything_recovers_with_nothing_lost(
    outage_system: System, cluster: PrivatePostgres, corpora: list[Corpus]
) -> None:
    system = outage_system
    load = LoadStats()
    stop = asyncio.Event()
    workers = [
        asyncio.create_task(client_loop(c, load, stop, seed=i, pace=PACE_S, max_requests=2000))
        for i, c in enumerate(corpora)
    ]
    workers.append(
        asyncio.create_task(rollback_loop(system.database_urls["console"], corpora, load, stop, every=1.0))
    )
    timeline: dict[str, float] = {}
    probe = Probe()
    try:
        await asyncio.sleep(5)  # traffic flows
        t = time.monotonic()
        await asyncio.to_thread(cluster.restart)  # a quick restart: every pooled connection dies
        timeline["restart_s"] = round(time.monotonic() - t, 1)
        await asyncio.sleep(5)

        await asyncio.to_thread(cluster.stop)
        probing = asyncio.Event()
        prober = asyncio.create_task(probe.run(system, corpora[0], probing))
        await asyncio.sleep(OUTAGE_S)
        probing.set()
        await prober
        down_at = time.monotonic()
        await asyncio.to_thread(cluster.start)

        async def console_ready() -> bool:
            async with httpx.AsyncClient() as c:
                return (await c.get(f"{system.url('console')}/readyz")).status_code == 200

        await wait_until(console_ready, timeout=60, interval=0.2, what="console ready after the outage")
        timeline["api_recovery_s"] = round(time.monotonic() - down_at, 1)
        await asyncio.sleep(10)  # traffic after the outage
    finally:
        stop.set()
        await asyncio.gather(*workers)
    assert not system.dead(), f"processes died instead of recovering: {system.dead()}\n{system.tails()}"

    figures = await audit(system, corpora, load, timeout=120)
    print(
        f"\ndatabase outage: {timeline}; during the outage: {dict(probe.statuses)}; codes {dict(probe.codes)}; "
        f"slowest answer {probe.slowest_s:.2f}s\n"
        + render(
            figures, load, {"kills": {}, "outages": {"database stopped": OUTAGE_S}, "outage_s": OUTAGE_S}
        )
    )

    answered = [key for key in probe.statuses if not key.endswith(": 503")]
    assert probe.statuses and not answered, probe.statuses  # every call during the outage: a 503
    assert set(probe.codes) == {"unavailable"} and probe.slowest_s < 10
    assert figures.quiesced, figures.details["backlog"]
    assert figures.committed > 50 and len(load.phantoms) > 3
    assert (figures.lost, figures.duplicated, figures.phantom) == (0, 0, 0)
