"""On a private PostgreSQL cluster chosen only by PGPORT: the stack script creates the databases there, the
migrations and the services find them there (no *_DATABASE_URL anywhere), `/readyz` reports each
dependency, answers 503 while the database is down and 200 again once it is back, with no restart."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import psycopg
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.infra.postgres import PrivatePostgres
from testsupport import HttpService
from testsupport.broker import poll_until

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def cluster() -> Iterator[PrivatePostgres]:
    pg = PrivatePostgres().init().start()
    yield pg
    pg.remove()


def readyz(service: HttpService) -> httpx.Response:
    return httpx.get(f"{service.base_url}/readyz", timeout=10)


def metrics(service: HttpService) -> dict[tuple[str, str], float]:
    """service_ready per check, and 5xx answers per status, from the service's /metrics (what the
    ServiceNotReady and ApiErrorRatioHigh alerts read)."""
    text = httpx.get(f"{service.base_url}/metrics", timeout=30).text
    found: dict[tuple[str, str], float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == "service_ready":
                found[("ready", s.labels["check"])] = s.value
            elif s.name == "http_server_request_duration_seconds_count":
                status = s.labels.get("http_response_status_code", "")
                if status.startswith("5"):
                    found[("5xx", status)] = found.get(("5xx", status), 0) + s.value
    return found


def test_pgport_reaches_every_part_and_readyz_follows_the_database(
    cluster: PrivatePostgres, tmp_path: Path
) -> None:
    run = uuid.uuid4().hex[:8]
    env = {
        **{k: v for k, v in os.environ.items() if not k.endswith("_DATABASE_URL")},
        "PGHOST": "127.0.0.1",
        "PGPORT": str(cluster.port),
        "PGUSER": "postgres",
        "AUTH_ENVIRONMENT": "local",
        "AUTH_REDIS_PREFIX": f"readyz-{run}:",
    }
    for script in ("stack.py", "migrate.py"):
        argv = [sys.executable, str(ROOT / "scripts" / script), *(["up"] if script == "stack.py" else [])]
        done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stdout + done.stderr
    with psycopg.connect(host="127.0.0.1", port=cluster.port, user="postgres", dbname="console") as conn:
        assert conn.execute("SELECT count(*) FROM alembic_version").fetchone() == (1,)

    logs = tmp_path / "logs"
    auth = HttpService("auth", "auth.main:create_app", env=env, log_dir=logs)
    auth.start()
    env["AUTH_JWKS_URL"] = f"{auth.base_url}/auth/.well-known/jwks.json"
    console = HttpService("console", "console.main:create_app", env=env, log_dir=logs)
    console.start()
    try:
        ready = readyz(console)
        assert ready.status_code == 200, ready.text
        assert ready.json() == {
            "status": "ready",
            "checks": {"database": "ok", "revocation_list": "ok", "signing_keys": "ok"},
        }
        assert readyz(auth).json()["checks"] == {"database": "ok", "redis": "ok", "signing_keys": "ok"}
        assert metrics(console)[("ready", "database")] == 1

        email, password = f"readyz-{run}@example.com", "correct horse 42 readyz"
        httpx.post(
            f"{auth.base_url}/auth/api/register", json={"email": email, "password": password, "name": "R"}
        )
        token = httpx.post(
            f"{auth.base_url}/auth/api/login", json={"email": email, "password": password}
        ).json()
        headers = {"authorization": f"Bearer {token['access_token']}"}
        created = httpx.post(
            f"{console.base_url}/console/api/datasets", json={"name": "on 5433"}, headers=headers
        )
        assert created.status_code == 201, created.text
        with psycopg.connect(host="127.0.0.1", port=cluster.port, user="postgres", dbname="console") as conn:
            assert conn.execute("SELECT name FROM datasets").fetchall() == [("on 5433",)]

        cluster.stop()
        down = readyz(console)
        assert down.status_code == 503, down.text
        assert down.json()["error"]["code"] == "not_ready"
        assert down.json()["error"]["details"]["database"].startswith("failed")
        assert readyz(auth).status_code == 503
        write = httpx.post(
            f"{console.base_url}/console/api/datasets", json={"name": "x"}, headers=headers, timeout=15
        )
        assert write.status_code == 503 and write.json()["error"]["code"] == "unavailable", write.text
        seen = metrics(console)
        assert seen[("ready", "database")] == 0 and seen[("ready", "signing_keys")] == 1
        assert seen[("5xx", "503")] >= 1

        cluster.start()
        poll_until(lambda: readyz(console).status_code == 200, timeout=30, what="console ready again")
        assert metrics(console)[("ready", "database")] == 1
        again = httpx.post(f"{console.base_url}/console/api/datasets", json={"name": "back"}, headers=headers)
        assert again.status_code == 201, again.text
    finally:
        console.terminate()
        auth.terminate()
