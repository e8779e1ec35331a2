"""Operating the system (issue 10) on real processes: /metrics on each API moves with the flow of events,
`reconcile` finds injected drift and its repair removes it, `rebuild` restores a truncated index (inbox and
guard rows too) while writes continue, resuming after a SIGKILL halfway."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import psycopg
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.client import User
from tests.e2e.infra import Infra
from tests.e2e.system import System, start_system
from testsupport import wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
ROOT = Path(__file__).resolve().parents[2]
WORD = "zebrafinch"


@pytest.fixture(scope="module")
def ops_system(infra: Infra, tmp_path_factory: pytest.TempPathFactory) -> Iterator[System]:
    """A system of its own: these tests empty and corrupt the indexer's tables."""
    env = {"OUTBOX_METRICS_LAG_INTERVAL_S": "0.5"}
    with start_system(
        infra, bootstrap=infra.kafka_bootstrap, log_dir=tmp_path_factory.mktemp("ops"), label="ops", env=env
    ) as s:
        yield s


@pytest.fixture
async def user(ops_system: System) -> AsyncIterator[User]:
    u = await User.signed_up(ops_system, "ops")
    yield u
    await u.aclose()


def metric(system: System, api: str, name: str, **labels: str) -> float | None:
    """Sum of the samples `name` with `labels` on the API's /metrics; None when there is none."""
    r = httpx.get(f"{system.url(api)}/metrics", timeout=30)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain"), r.text
    values = [
        s.value
        for family in text_string_to_metric_families(r.text)
        for s in family.samples
        if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
    ]
    return sum(values) if values else None


async def eventually(system: System, api: str, name: str, check: object, **labels: str) -> None:
    async def probe() -> bool:
        value = await asyncio.to_thread(metric, system, api, name, **labels)
        return value is not None and bool(check(value))  # type: ignore[operator]

    await wait_until(probe, timeout=90, interval=0.3, what=f"{api} {name} {labels}")


async def test_metrics_on_each_api_move_with_events(ops_system: System, user: User) -> None:
    s = ops_system
    for api in ("auth", "console", "indexer"):
        assert metric(s, api, "outbox_pending_messages", outbox_database=api) is not None
    console_group = {"messaging_consumer_group_name": s.groups["console-consumer"]}
    indexer_group = {"messaging_consumer_group_name": s.groups["indexer-consumer"]}
    ds = await user.create_dataset()
    assert (
        metric(s, "auth", "http_server_request_duration_seconds_count", http_request_method="POST") or 0
    ) >= 2
    before = (
        metric(s, "console", "http_server_request_duration_seconds_count", http_request_method="POST") or 0
    )

    # The relay stops: console's backlog and the age of its oldest row grow; then drain to 0.
    s.kill("console-relay")
    doc = (await user.create_document(ds, f"{WORD} metrics"))["id"]
    assert (
        metric(s, "console", "http_server_request_duration_seconds_count", http_request_method="POST") or 0
    ) > before
    await eventually(s, "console", "outbox_pending_messages", lambda v: v >= 1, outbox_database="console")
    await eventually(
        s, "console", "outbox_pending_oldest_age_seconds", lambda v: v > 0, outbox_database="console"
    )
    # The indexer's consumer stops: its group's lag on the indexer's /metrics grows once the relay runs.
    s.kill("indexer-consumer")
    s.start("console-relay")
    await eventually(s, "console", "outbox_pending_messages", lambda v: v == 0, outbox_database="console")
    await eventually(s, "indexer", "outbox_consumer_group_lag", lambda v: v >= 1, **indexer_group)
    s.start("indexer-consumer")
    await eventually(s, "indexer", "outbox_consumer_group_lag", lambda v: v == 0, **indexer_group)
    await eventually(s, "console", "outbox_consumer_group_lag", lambda v: v == 0, **console_group)
    await user.settled(ds, doc, 1, timeout=60)


def projection(system: System, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "scripts/projection.py", *args, *urls(system), "--settle", "1"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )


def urls(system: System) -> list[str]:
    return [
        "--console-url",
        system.database_urls["console"],
        "--indexer-url",
        system.database_urls["indexer"],
    ]


async def test_reconcile_reports_injected_drift_and_repair_removes_it(ops_system: System, user: User) -> None:
    s = ops_system
    ds = await user.create_dataset()
    docs = [(await user.create_document(ds, f"{WORD} reconcile {i}"))["id"] for i in range(4)]
    for doc in docs:
        await user.settled(ds, doc, 1, timeout=60)
    clean = await asyncio.to_thread(projection, s, "reconcile")
    assert clean.returncode == 0 and "no drift" in clean.stdout, clean.stdout + clean.stderr

    orphan = str(uuid.uuid4())
    with_index = s.database_urls["indexer"].replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(with_index) as conn:  # faults injected into the index, as a bad restore would
        conn.execute("DELETE FROM indexed_documents WHERE id = %s", (docs[0],))
        conn.execute("UPDATE indexed_documents SET version = 0 WHERE id = %s", (docs[1],))
        conn.execute("UPDATE indexed_documents SET enabled = false WHERE id = %s", (docs[2],))
        conn.execute(
            "INSERT INTO indexed_documents (id, dataset_id, workspace_id, owner_account_id, name, version, "
            "enabled, archived, deleted, text_sha256, segment_count, updated_at) "
            "SELECT %s, dataset_id, workspace_id, owner_account_id, name, 3, true, false, false, '', 0, now() "
            "FROM indexed_documents WHERE id = %s",
            (orphan, docs[3]),
        )
    assert await user.search(ds, WORD) != sorted(docs)

    found = await asyncio.to_thread(projection, s, "reconcile")
    assert found.returncode == 1, found.stdout + found.stderr
    for doc, kind in zip(
        [*docs[:3], orphan], ["missing", "stale version", "wrong searchability", "orphaned"], strict=True
    ):
        assert any(doc in line and kind in line for line in found.stdout.splitlines()), (kind, found.stdout)

    repaired = await asyncio.to_thread(projection, s, "reconcile", "--repair")
    assert repaired.returncode == 0, repaired.stdout + repaired.stderr
    assert "re-announced 4 documents" in repaired.stdout
    assert sorted(await user.search(ds, WORD)) == sorted(docs)
    assert await user.indexed(orphan) is None or not (await user.indexed(orphan) or {}).get("searchable")
    again = await asyncio.to_thread(projection, s, "reconcile")
    assert again.returncode == 0, again.stdout


async def test_rebuild_restores_a_truncated_index_under_writes_and_resumes_after_sigkill(
    ops_system: System, user: User
) -> None:
    s = ops_system
    ds = await user.create_dataset()
    docs = [
        (await user.create_document(ds, f"{WORD} rebuild {i}", enabled=i % 3 != 0))["id"] for i in range(40)
    ]
    for doc in docs:
        await user.settled(ds, doc, 1, timeout=90)
    # The indexer's database is lost: documents, segments, inbox and version-guard rows all gone, while
    # its consumer's committed offsets say everything was applied (nothing will be redelivered).
    s.rows("indexer", "SELECT 1")  # reachable
    with psycopg.connect(s.dsn("indexer")) as conn:
        conn.execute("TRUNCATE indexed_documents, segments, inbox, consumer_versions")
    assert await user.search(ds, WORD) == []

    stop = asyncio.Event()

    async def keep_writing() -> int:
        writes, rng = 0, random.Random(7)
        while not stop.is_set():
            r = await user.action(ds, rng.choice(["enable", "disable"]), rng.choice(docs))
            assert r.status_code == 200, r.text
            writes += 1
            await asyncio.sleep(0.02)
        return writes

    writer = asyncio.create_task(keep_writing())
    first = await asyncio.create_subprocess_exec(
        *[sys.executable, "scripts/projection.py", "rebuild", *urls(s), "--chunk", "1", "--pause", "0.1"],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
    )

    async def announced() -> int:
        rows = await asyncio.to_thread(s.rows, "console", "SELECT announced FROM snapshot_runs")
        return int(rows[0][0]) if rows else 0

    await wait_until(lambda: _at_least(announced, 10), timeout=60, what="rebuild a quarter done")
    os.kill(first.pid, signal.SIGKILL)
    assert await asyncio.wait_for(first.wait(), 30) == -signal.SIGKILL
    halfway = await announced()
    total = len(await asyncio.to_thread(s.rows, "console", "SELECT id FROM documents"))
    assert 10 <= halfway < total, (halfway, total)

    second = await asyncio.to_thread(projection, s, "rebuild", "--chunk", "5")
    stop.set()
    writes = await writer
    assert second.returncode == 0, second.stdout + second.stderr
    assert f"resuming rebuild-index: {halfway} documents already announced" in second.stdout
    assert "re-snapshot" in second.stdout and "docs/s ETA" in second.stdout  # plain progress lines
    assert writes > 10

    final = await asyncio.to_thread(projection, s, "reconcile")  # writes stopped: no drift may remain
    assert final.returncode == 0, final.stdout
    expected = sorted(
        d["id"] for d in await _console_documents(user, ds) if d["enabled"] and not d["archived"]
    )
    assert sorted(await user.search(ds, WORD)) == expected
    guards = s.scalar("indexer", "SELECT count(*) FROM consumer_versions WHERE aggregate_id = ANY(%s)", docs)
    inbox = s.scalar(
        "indexer",
        "SELECT count(*) FROM inbox WHERE event_type = 'console.document.snapshot' AND aggregate_id = ANY(%s)",
        docs,
    )
    assert guards == len(docs) and inbox >= len(docs)


async def _at_least(probe: object, n: int) -> bool:
    return int(await probe()) >= n  # type: ignore[operator]


async def _console_documents(user: User, ds: str) -> list[dict[str, object]]:
    r = await user.console.get(f"/console/api/datasets/{ds}/documents", params={"limit": 100})
    assert r.status_code == 200, r.text
    return list(r.json()["data"])
