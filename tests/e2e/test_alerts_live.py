"""The alert rules against real processes: a Prometheus (Debian's, as `make run` installs it) scrapes a
running system every second, with deploy/prometheus/alerts.yml made fast (every `for:` and range window
shortened, nothing else changed), all on 127.0.0.1. The alerts are read from Prometheus's HTTP API.

- The indexer's consumer stops while documents are written: ConsumerGroupLagGrowing and OutboxProcessDown
  go pending, then firing, for that group/process only; the consumer starts again and both resolve.
- A dead outbox row: OutboxDeadRows fires; `outbox redrive` publishes the row and the alert resolves.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from scripts import prometheus
from tests.e2e.client import User
from tests.e2e.infra import Infra
from tests.e2e.system import System, start_system
from testsupport import free_port, wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
RULES = Path(__file__).resolve().parents[2] / "deploy" / "prometheus" / "alerts.yml"
FOR = "8s"  # every rule's `for:` here (1m-10m in the real rules)
WINDOW = "15s"  # every range window here ([5m] in the real rules)


def fast_rules(text: str) -> str:
    """The real rules with every `for:` set to FOR and every range window to WINDOW."""
    doc = yaml.safe_load(text)
    for group in doc["groups"]:
        group["interval"] = "1s"
        for rule in group["rules"]:
            if "for" in rule:
                rule["for"] = FOR
            rule["expr"] = re.sub(r"\[\d+[smh]\]", f"[{WINDOW}]", rule["expr"])
    return yaml.safe_dump(doc, sort_keys=False)


def test_fast_rules_change_only_durations() -> None:
    real = yaml.safe_load(RULES.read_text())["groups"][0]["rules"]
    fast = yaml.safe_load(fast_rules(RULES.read_text()))["groups"][0]["rules"]
    assert [r["alert"] for r in fast] == [r["alert"] for r in real]
    lag = next(r for r in fast if r["alert"] == "ConsumerGroupLagGrowing")
    assert f"[{WINDOW}]" in lag["expr"] and "[5m]" not in lag["expr"] and lag["for"] == FOR


class Prometheus:
    def __init__(self, base_url: str, proc: subprocess.Popen[bytes]) -> None:
        self.base_url = base_url
        self.proc = proc

    async def alerts(self, name: str, **labels: str) -> list[dict[str, Any]]:
        async with httpx.AsyncClient(base_url=self.base_url, timeout=5) as http:
            r = await http.get("/api/v1/alerts")
        assert r.status_code == 200, r.text
        return [
            a
            for a in r.json()["data"]["alerts"]
            if a["labels"]["alertname"] == name and all(a["labels"].get(k) == v for k, v in labels.items())
        ]

    async def up(self) -> dict[str, float]:
        async with httpx.AsyncClient(base_url=self.base_url, timeout=5) as http:
            r = await http.get("/api/v1/query", params={"query": "up"})
        assert r.status_code == 200, r.text
        return {
            f"{s['metric']['service']}-{s['metric']['job']}": float(s["value"][1])
            for s in r.json()["data"]["result"]
        }


@contextlib.contextmanager
def run_prometheus(system: System, home: Path) -> Iterator[Prometheus]:
    binary = prometheus.ensure_binary("prometheus")
    jobs = {
        "api": {api: system.metrics[api] for api in ("auth", "console", "indexer")},
        "relay": {api: system.metrics[f"{api}-relay"] for api in ("auth", "console", "indexer")},
        "consumer": {api: system.metrics[f"{api}-consumer"] for api in ("console", "indexer")},
    }
    (home / "alerts.yml").write_text(fast_rules(RULES.read_text()))
    (home / "prometheus.yml").write_text(
        prometheus.render(jobs, "alerts.yml", scrape_interval="1s", evaluation_interval="1s")
    )
    listen = f"127.0.0.1:{free_port()}"
    log = open(home / "prometheus.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        [
            binary,
            f"--config.file={home / 'prometheus.yml'}",
            f"--storage.tsdb.path={home / 'data'}",
            f"--web.listen-address={listen}",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            assert proc.poll() is None, (home / "prometheus.log").read_text()
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"http://{listen}/-/ready", timeout=1).status_code == 200:
                    break
            assert time.monotonic() < deadline, (home / "prometheus.log").read_text()
            time.sleep(0.2)  # polling interval
        yield Prometheus(f"http://{listen}", proc)
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


@pytest.fixture(scope="module")
def alerting(infra: Infra, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[System, Prometheus]]:
    env = {"OUTBOX_METRICS_LAG_INTERVAL_S": "0.5"}
    logs = tmp_path_factory.mktemp("alerts")
    with contextlib.ExitStack() as stack:
        s = stack.enter_context(
            start_system(infra, bootstrap=infra.kafka_bootstrap, log_dir=logs, label="alerts", env=env)
        )
        yield s, stack.enter_context(run_prometheus(s, tmp_path_factory.mktemp("prometheus")))


@pytest.fixture
async def user(alerting: tuple[System, Prometheus]) -> AsyncIterator[User]:
    u = await User.signed_up(alerting[0], "alerts")
    yield u
    await u.aclose()


class Timeline:
    """When each state of an alert was first seen, in seconds since the start."""

    def __init__(self) -> None:
        self.started = time.monotonic()
        self.events: list[tuple[float, str]] = []

    def mark(self, what: str) -> None:
        self.events.append((round(time.monotonic() - self.started, 1), what))
        print(f"[alerts] t+{self.events[-1][0]}s {what}", flush=True)


async def states(
    p: Prometheus, name: str, timeline: Timeline, until: str, timeout: float, **labels: str
) -> set[str]:
    """Poll the alert until its state is `until` ("inactive": not pending nor firing); every state seen."""
    seen: set[str] = set()

    async def probe() -> bool:
        active = await p.alerts(name, **labels)
        assert len(active) <= 1, active
        state = active[0]["state"] if active else "inactive"
        if state not in seen:
            seen.add(state)
            timeline.mark(f"{name} {state}")
        return state == until

    await wait_until(probe, timeout=timeout, interval=0.25, what=f"{name} {labels} {until}")
    return seen


async def test_consumer_stopped_lag_alert_pending_firing_then_resolved(
    alerting: tuple[System, Prometheus], user: User
) -> None:
    s, p = alerting
    group = s.groups["indexer-consumer"]
    everyone = {f"{api}-{job}" for api in ("auth", "console", "indexer") for job in ("api", "relay")}
    everyone |= {"console-consumer", "indexer-consumer"}

    async def all_up() -> bool:
        up = await p.up()
        return set(up) == everyone and all(v == 1 for v in up.values())

    await wait_until(all_up, timeout=60, interval=0.5, what="every API, relay and consumer scraped")
    ds = await user.create_dataset()
    await user.settled(ds, (await user.create_document(ds, "before"))["id"], 1, timeout=60)

    async def quiet() -> bool:  # the settling's own brief lag may have left a pending alert
        return not await p.alerts("ConsumerGroupLagGrowing") and not await p.alerts("OutboxProcessDown")

    await wait_until(quiet, timeout=30, interval=0.5, what="no lag or process-down alert before the stop")

    timeline = Timeline()
    s.processes["indexer-consumer"].terminate(timeout=15)
    timeline.mark("indexer-consumer stopped; writing a document every 0.3 s")
    written = 0

    async def keep_writing() -> None:
        nonlocal written
        while True:
            await user.create_document(ds, f"lag {written}")
            written += 1
            await asyncio.sleep(0.3)

    writer = asyncio.create_task(keep_writing())
    try:
        lag = asyncio.create_task(
            states(p, "ConsumerGroupLagGrowing", timeline, "firing", 120, messaging_consumer_group_name=group)
        )
        down = asyncio.create_task(
            states(p, "OutboxProcessDown", timeline, "firing", 120, job="consumer", service="indexer")
        )
        assert {"pending", "firing"} <= await lag
        assert {"pending", "firing"} <= await down
        # Only the stopped consumer's: console's group and every other process are fine.
        console = s.groups["console-consumer"]
        others = await p.alerts("ConsumerGroupLagGrowing", messaging_consumer_group_name=console)
        assert [a for a in others if a["state"] == "firing"] == []
        assert len(await p.alerts("OutboxProcessDown")) == 1
    finally:
        writer.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await writer
    timeline.mark(f"stopped writing after {written} documents; indexer-consumer started")
    s.start("indexer-consumer")
    resolved = asyncio.gather(
        states(p, "ConsumerGroupLagGrowing", timeline, "inactive", 120, messaging_consumer_group_name=group),
        states(p, "OutboxProcessDown", timeline, "inactive", 120, job="consumer", service="indexer"),
    )
    await resolved
    print(f"[alerts] timeline: {timeline.events}", flush=True)


async def test_dead_outbox_row_fires_and_redrive_resolves(
    alerting: tuple[System, Prometheus], user: User
) -> None:
    s, p = alerting
    ds = await user.create_dataset()
    # The relay stops, a row is written and marked dead as the relay would (the broker refused it).
    s.processes["console-relay"].terminate(timeout=15)
    doc = (await user.create_document(ds, "dead"))["id"]
    dead = s.rows(
        "console",
        "UPDATE outbox SET dead_at = now(), attempts = 1, last_error = 'refused (test)' "
        "WHERE published_at IS NULL AND dead_at IS NULL AND aggregate_id = %s RETURNING id",
        doc,
    )
    assert dead, "the document's outbox row was published already"
    s.start("console-relay")
    timeline = Timeline()
    seen = await states(p, "OutboxDeadRows", timeline, "firing", 60, outbox_database="console")
    assert {"pending", "firing"} <= seen
    redrive = await asyncio.to_thread(
        subprocess.run,
        [
            sys.executable,
            "-m",
            "outbox.ops.cli",
            "redrive",
            "--database-url",
            s.admin_urls["console"],
            "--yes",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "OUTBOX_TOPIC_PREFIX": s.topic_prefix},
    )
    assert redrive.returncode == 0, redrive.stdout + redrive.stderr
    timeline.mark("outbox redrive --yes")
    await states(p, "OutboxDeadRows", timeline, "inactive", 60, outbox_database="console")
    await user.settled(ds, doc, 1, timeout=60)  # the redriven event reached the indexer
    print(f"[alerts] timeline: {timeline.events}", flush=True)
