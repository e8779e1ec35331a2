"""The whole system as real processes on one infrastructure: auth, console and indexer APIs, a relay per
service, console's and indexer's consumers, each on a fresh database, talking to one broker bootstrap.

    with start_system(infra, bootstrap=infra.kafka_bootstrap, log_dir=tmp) as system:
        system.kill("indexer-consumer"); system.start("indexer-consumer")   # SIGKILL + restart

Each service's database is provisioned as in compose: migrations run as `<service>_owner`, every process of
the service connects as `<service>_app` (no DDL, no TRUNCATE); the tests' own queries use the superuser.
Every process writes its spans to `system.spans_file` (JSON lines, outbox.telemetry.tracing). Consumer groups,
databases and the Redis prefix are unique per system, so systems never share state through the broker
or Redis. On failure, `system.tails()` shows the end of every process's log.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import sys
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psycopg
import redis

from tests.e2e.infra import Infra
from testsupport import HttpService, ServiceProcess, free_port

SERVICES = Path(__file__).resolve().parents[2] / "services"
APIS = {
    "auth": "auth.main:create_app",
    "console": "console.main:create_app",
    "indexer": "indexer.main:create_app",
}
CONSUMERS = {"console-consumer": "console.consumer", "indexer-consumer": "indexer.consumer"}


@dataclass
class System:
    run: str
    infra: Infra
    bootstrap: str
    log_dir: Path
    spans_file: Path
    database_urls: dict[str, str]  # service -> SQLAlchemy URL of its app role (what its processes use)
    admin_urls: dict[str, str]  # service -> the same database as the superuser (the tests' inspection)
    groups: dict[str, str]  # consumer process -> consumer group (= inbox `consumer` value)
    redis_prefix: str
    topic_prefix: str = ""  # what every process prepends to topic names on the wire
    # process -> "127.0.0.1:port" of its Prometheus text: an API's own port (/metrics), a relay's or a
    # consumer's OUTBOX_METRICS_PORT (the port `make run` gives it in the Procfile)
    metrics: dict[str, str] = field(default_factory=dict)
    processes: dict[str, ServiceProcess] = field(default_factory=dict)
    _connections: dict[str, psycopg.Connection[Any]] = field(default_factory=dict, repr=False)

    # -- processes ------------------------------------------------------------------------------------------
    def url(self, api: str) -> str:
        process = self.processes[api]
        assert isinstance(process, HttpService)
        return process.base_url

    def kill(self, name: str) -> None:
        """SIGKILL the process (its whole process group): a crash, no cleanup."""
        self.processes[name].kill()

    def start(self, name: str) -> None:
        """(Re)start a process with the argv and environment it was first started with."""
        process = self.processes[name]
        process.start()

    def stop_all(self) -> None:
        for process in reversed(list(self.processes.values())):
            with contextlib.suppress(Exception):
                process.terminate(timeout=10)

    def dead(self) -> list[str]:
        return [name for name, p in self.processes.items() if not p.alive]

    def tails(self, lines: int = 25) -> str:
        return "\n".join(
            f"----- {name} ({p.log_path}) -----\n{p.tail(lines)}" for name, p in self.processes.items()
        )

    # -- databases ------------------------------------------------------------------------------------------
    def dsn(self, service: str) -> str:
        return self.admin_urls[service].replace("postgresql+psycopg://", "postgresql://")

    def rows(self, service: str, sql: str, *params: Any) -> list[tuple[Any, ...]]:
        """On one kept connection per service (autocommit): tests poll these every fraction of a second,
        and a connection per poll cost each poll a PostgreSQL backend start, which a slow host feels."""
        for attempt in (1, 2):
            conn = self._connections.get(service)
            if conn is None or conn.closed:
                conn = self._connections[service] = psycopg.connect(self.dsn(service), autocommit=True)
            try:
                return conn.execute(sql, params).fetchall()  # type: ignore[arg-type]
            except psycopg.OperationalError:
                self._connections.pop(service, None)
                conn.close()
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def close_connections(self) -> None:
        for conn in self._connections.values():
            conn.close()
        self._connections.clear()

    def scalar(self, service: str, sql: str, *params: Any) -> Any:
        return self.rows(service, sql, *params)[0][0]


def _common_env(infra: Infra, bootstrap: str, spans_file: Path, redis_prefix: str) -> dict[str, str]:
    return {
        **infra.env(),
        "KAFKA_BOOTSTRAP": bootstrap,
        "OTEL_SPANS_FILE": str(spans_file),
        # Small group timeouts: a SIGKILLed member's partitions move within seconds (docs/broker.md).
        "OUTBOX_CONSUMER_SESSION_TIMEOUT_MS": "6000",
        "AUTH_REDIS_URL": infra.redis_url,
        "AUTH_REDIS_PREFIX": redis_prefix,
        "LOG_LEVEL": "INFO",
    }


def _auth_env(url: str) -> dict[str, str]:
    return {
        "AUTH_ENVIRONMENT": "test",
        "AUTH_DATABASE_URL": url,
        "AUTH_KEY_ENCRYPTION_KEY": secrets.token_urlsafe(32),
        "AUTH_ACCESS_TOKEN_TTL_SECONDS": "1800",
        "AUTH_REGISTER_MAX_PER_ADDRESS": "100000",  # every test client registers from 127.0.0.1
        # Cheaper Argon2id: still Argon2id, a quicker suite.
        "AUTH_ARGON2_MEMORY_COST_KIB": "19456",
        "AUTH_ARGON2_TIME_COST": "2",
        "AUTH_ARGON2_PARALLELISM": "1",
    }


@contextlib.contextmanager
def start_system(
    infra: Infra,
    *,
    bootstrap: str,
    log_dir: Path,
    label: str = "e2e",
    env: dict[str, str] | None = None,
) -> Iterator[System]:
    """Fresh databases + migrations, then every process; all stopped (SIGTERM, then SIGKILL) at exit.
    `env` is added to every process's environment."""
    run = f"{label}_{uuid.uuid4().hex[:8]}"
    databases = {service: infra.create_service_database(f"{service}_{run}", service) for service in APIS}
    with ThreadPoolExecutor(len(databases)) as pool:  # three alembic processes at once
        list(pool.map(lambda s: databases[s].migrate(SERVICES / s / "alembic.ini"), databases))
    urls = {service: db.app_url for service, db in databases.items()}
    log_dir.mkdir(parents=True, exist_ok=True)
    spans_file = log_dir / "spans.jsonl"
    system = System(
        run=run,
        infra=infra,
        bootstrap=bootstrap,
        log_dir=log_dir,
        spans_file=spans_file,
        database_urls=urls,
        admin_urls={service: db.admin_url for service, db in databases.items()},
        groups={"console-consumer": f"console-{run}", "indexer-consumer": f"indexer-{run}"},
        redis_prefix=f"{run}:",
    )
    common = {**_common_env(infra, bootstrap, spans_file, system.redis_prefix), **(env or {})}
    # Topics of its own: a new consumer group starts at the earliest offset, so with shared topics this
    # system's consumers would apply every other system's events of the run (a test counting documents
    # would find strangers). The namespace nests inside the run's.
    common.setdefault("OUTBOX_TOPIC_PREFIX", f"{os.environ.get('OUTBOX_TOPIC_PREFIX', '')}{run}.")
    system.topic_prefix = common["OUTBOX_TOPIC_PREFIX"]
    auth_port = free_port()
    common["AUTH_JWKS_URL"] = f"http://127.0.0.1:{auth_port}/auth/.well-known/jwks.json"
    envs = {
        "auth": {**common, **_auth_env(urls["auth"])},
        "console": {
            **common,
            "CONSOLE_DATABASE_URL": urls["console"],
            "CONSOLE_CONSUMER_NAME": system.groups["console-consumer"],
        },
        "indexer": {
            **common,
            "INDEXER_DATABASE_URL": urls["indexer"],
            "INDEXER_CONSUMER_NAME": system.groups["indexer-consumer"],
        },
    }
    procs = system.processes
    try:
        for service, app in APIS.items():
            port = auth_port if service == "auth" else None
            api = procs[service] = HttpService(service, app, env=envs[service], log_dir=log_dir, port=port)
            system.metrics[service] = f"127.0.0.1:{api.port}"
        for service in APIS:
            argv = [sys.executable, "-m", "outbox.ops.cli", "relay", "--database-url", urls[service]]
            name = f"{service}-relay"
            port = free_port()
            system.metrics[name] = f"127.0.0.1:{port}"
            procs[name] = ServiceProcess(
                name,
                [*argv, "--name", service],
                env={**envs[service], "OUTBOX_METRICS_PORT": str(port)},
                log_dir=log_dir,
            )
        for name, module in CONSUMERS.items():
            port = free_port()
            system.metrics[name] = f"127.0.0.1:{port}"
            env = {**envs[name.removesuffix("-consumer")], "OUTBOX_METRICS_PORT": str(port)}
            procs[name] = ServiceProcess(name, [sys.executable, "-m", module], env=env, log_dir=log_dir)
        for process in procs.values():  # all at once (imports dominate start-up), then wait for health
            ServiceProcess.start(process)
        for process in procs.values():
            if isinstance(process, HttpService):
                _wait_healthy(process)
        print(f"[e2e] system {run}: broker {bootstrap}, logs {log_dir}", flush=True)
        yield system
    finally:
        system.stop_all()
        system.close_connections()
        _forget_redis_keys(infra.redis_url, system.redis_prefix)
        for service in APIS:
            with contextlib.suppress(Exception):
                infra.drop_database(f"{service}_{run}")


def _wait_healthy(service: HttpService, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not service.alive:
            raise RuntimeError(f"{service.name} exited during start:\n{service.tail()}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{service.base_url}/healthz", timeout=1).status_code == 200:
                return
        time.sleep(0.1)  # polling interval
    raise RuntimeError(f"{service.name} not healthy within {timeout}s:\n{service.tail()}")


def _forget_redis_keys(url: str, prefix: str) -> None:
    with contextlib.suppress(Exception):
        client = redis.Redis.from_url(url)
        keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
        if keys:
            client.delete(*keys)
        client.close()
