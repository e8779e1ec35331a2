"""Test support against real infrastructure: fresh databases, service processes on free ports, polling.

No mocks: a test database is a real PostgreSQL database created for the test session, a service is a real
process serving real HTTP, waiting is polling with a deadline.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar
from urllib.parse import quote

import httpx
import psycopg

from testsupport.ports import free_port

T = TypeVar("T")

PG_HOST = os.environ.get("PGHOST", "127.0.0.1")
PG_PORT = int(os.environ.get("PGPORT", "5432"))
PG_USER = os.environ.get("PGUSER", "postgres")


def database_url(name: str) -> str:
    return f"postgresql+psycopg://{PG_USER}@{PG_HOST}:{PG_PORT}/{name}"


def recreate_database(name: str) -> str:
    """Drop (terminating its sessions) and create a database; returns its SQLAlchemy URL."""
    with psycopg.connect(host=PG_HOST, port=PG_PORT, user=PG_USER, dbname="postgres", autocommit=True) as c:
        c.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        c.execute(f'CREATE DATABASE "{name}"')
    return database_url(name)


@dataclass(frozen=True, slots=True)
class ServiceDatabase:
    """A service's database as deployed: migrations run as `owner_url`, the service's processes connect with
    `app_url` (servicekit.pgroles), tests inspect and tamper with `admin_url` (the superuser)."""

    name: str
    app_role: str
    owner_url: str
    app_url: str
    admin_url: str

    def migrate(self, alembic_ini: Path) -> None:
        run_migrations(alembic_ini, self.owner_url, app_role=self.app_role)


def create_service_database(
    name: str,
    service: str,
    *,
    host: str = PG_HOST,
    port: int = PG_PORT,
    admin_user: str = PG_USER,
    password: str | None = None,
) -> ServiceDatabase:
    """Drop and create `name` the way `make stack` and compose do: owned by `<service>_owner`, reached by
    `<service>_app`. `password`: the administrator's, also given to both roles (a server that wants one)."""
    from psycopg.conninfo import make_conninfo

    from servicekit.pgroles import ServiceRoles, provision

    admin = make_conninfo(host=host, port=port, user=admin_user, dbname="postgres", password=password)
    with psycopg.connect(admin, autocommit=True) as c:
        c.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    roles = ServiceRoles.of(service)
    provision(admin, name, roles, owner_password=password, app_password=password)

    def url(user: str) -> str:
        secret = f":{quote(password, safe='')}" if password else ""
        return f"postgresql+psycopg://{quote(user, safe='')}{secret}@{host}:{port}/{name}"

    return ServiceDatabase(name, roles.app, url(roles.owner), url(roles.app), url(admin_user))


def run_migrations(alembic_ini: Path, url: str, *, app_role: str | None = None) -> None:
    """`alembic upgrade head` for one service against `url` (the service's env.py reads DATABASE_URL), then,
    with `app_role`, that role's grants (DATABASE_APP_ROLE: servicekit.migrations_env)."""
    env = {**os.environ, "DATABASE_URL": url}
    env.pop("DATABASE_APP_ROLE", None)
    if app_role:
        env["DATABASE_APP_ROLE"] = app_role
    done = subprocess.run(
        [sys.executable, "-m", "alembic", "-c", str(alembic_ini), "upgrade", "head"],
        cwd=alembic_ini.parent,
        env=env,
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        raise RuntimeError(
            f"alembic upgrade head ({alembic_ini.parent.name}) failed:\n{(done.stdout + done.stderr)[-3000:]}"
        )


async def wait_until(
    probe: Callable[[], Awaitable[T | None]],
    *,
    timeout: float = 30.0,
    interval: float = 0.05,
    what: str = "condition",
) -> T:
    """Poll `probe` until it returns a truthy value; fail with `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    last: T | None = None
    while time.monotonic() < deadline:
        last = await probe()
        if last:
            return last
        await asyncio.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")


class ServiceProcess:
    """A real OS process (uvicorn, a relay, a consumer) with its output in a log file."""

    def __init__(self, name: str, argv: list[str], *, env: Mapping[str, str], log_dir: Path) -> None:
        self.name = name
        self.argv = argv
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1", **env}
        log_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = log_dir / f"{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> ServiceProcess:
        log = open(self.log_path, "ab")  # noqa: SIM115 - the child owns it
        self.proc = subprocess.Popen(
            self.argv, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        return self

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL: the crash, no cleanup."""
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def terminate(self, timeout: float = 15.0) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        return self.proc.returncode

    def tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return ""


class HttpService(ServiceProcess):
    """A uvicorn app on a free port; `start()` returns once /healthz answers."""

    def __init__(
        self, name: str, app: str, *, env: Mapping[str, str], log_dir: Path, port: int | None = None
    ) -> None:
        self.port = port or free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        argv = [
            sys.executable,
            "-m",
            "uvicorn",
            app,
            "--factory",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
        ]
        super().__init__(name, argv, env=env, log_dir=log_dir)

    def start(self, timeout: float = 30.0) -> HttpService:
        super().start()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.alive:
                raise RuntimeError(f"{self.name} exited during start:\n{self.tail()}")
            try:
                if httpx.get(f"{self.base_url}/healthz", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        self.kill()
        raise RuntimeError(f"{self.name} did not become healthy in {timeout}s:\n{self.tail()}")
