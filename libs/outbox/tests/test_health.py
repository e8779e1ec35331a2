"""Health signals operators and healthchecks can run: `outbox health` (a relay's or consumer's loop still
turning) and `outbox status` exit codes (dead rows, an old backlog)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from outbox.ops.cli import main
from testsupport import ServiceProcess, wait_until

pytestmark = pytest.mark.usefixtures("clean")
OUTBOX = [sys.executable, "-m", "outbox.ops.cli"]


def health(heartbeat: Path, max_age: float) -> subprocess.CompletedProcess[str]:
    argv = [*OUTBOX, "health", "--heartbeat-file", str(heartbeat), "--max-age", str(max_age)]
    return subprocess.run(argv, capture_output=True, text=True, timeout=60)


async def test_health_follows_the_relays_loop_not_just_its_process(database_url: str, tmp_path: Path) -> None:
    heartbeat = tmp_path / "relay.heartbeat"
    assert health(heartbeat, 5).returncode == 1  # no heartbeat yet
    relay = ServiceProcess(
        "relay-health",
        [*OUTBOX, "relay", "--database-url", database_url, "--name", "health"],
        env={"OUTBOX_HEARTBEAT_FILE": str(heartbeat), "OUTBOX_RELAY_IDLE_POLL_MAX_S": "0.2"},
        log_dir=tmp_path,
    ).start()
    try:
        await wait_until(lambda: _exists(heartbeat), timeout=30, what="the relay's first heartbeat")
        ok = health(heartbeat, 5)
        assert ok.returncode == 0 and ok.stdout.startswith("healthy"), ok.stdout + ok.stderr
        assert relay.proc is not None
        os.kill(relay.proc.pid, signal.SIGSTOP)  # the process exists but its loop no longer turns
        await wait_until(lambda: _stale(heartbeat, 2), timeout=30, what="the heartbeat to go stale")
        stuck = health(heartbeat, 2)
        assert stuck.returncode == 1 and "unhealthy" in stuck.stderr
        os.kill(relay.proc.pid, signal.SIGCONT)
        await wait_until(lambda: _fresh(heartbeat, 2), timeout=30, what="the loop to turn again")
    finally:
        relay.terminate()


def test_status_exits_1_on_dead_rows_or_an_old_backlog(
    engine: AsyncEngine, database_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    def status(*flags: str) -> int:
        return main(["status", "--database-url", database_url, "--json", *flags])

    def insert(aggregate: str, column: str, value: str) -> None:
        with psycopg.connect(database_url.replace("postgresql+psycopg://", "postgresql://")) as conn:
            conn.execute(
                "INSERT INTO outbox (event_id, topic, event_type, source, aggregate_id, payload, occurred_at, "
                f"{column}) VALUES (gen_random_uuid(), 'health.t', 'health.t.x', 'test', %s, '{{}}', "
                f"now() - interval '10 minutes', {value})",
                (aggregate,),
            )

    assert status() == 0
    insert("dead", "dead_at", "now()")
    assert status() == 1
    assert "1 dead-lettered row(s)" in capsys.readouterr().err
    assert status("--allow-dead") == 0
    # Age counts from when a row became due (`available_at`), not from `occurred_at` (issue 14, finding 13):
    # an event of 10 minutes ago replayed just now is not an alarm; a row due for 10 minutes is.
    insert("replayed", "available_at", "now()")
    assert status("--allow-dead") == 0
    insert("old", "available_at", "now() - interval '10 minutes'")  # due for 10 minutes already
    assert status("--allow-dead") == 1
    assert "oldest pending event waited" in capsys.readouterr().err
    assert status("--allow-dead", "--max-age", "3600") == 0


async def _exists(path: Path) -> bool:
    return os.path.exists(path)  # noqa: ASYNC240 - a stat in a test probe


async def _stale(path: Path, age: float) -> bool:
    return health(path, age).returncode == 1


async def _fresh(path: Path, age: float) -> bool:
    return health(path, age).returncode == 0
