"""The e2e infrastructure: PostgreSQL, Redis and a Kafka-protocol broker, from one of two back ends.

    E2E_BACKEND=local   this machine's PostgreSQL and Redis + a dedicated Tansu broker process
    E2E_BACKEND=docker  testcontainers: PostgresContainer, KafkaContainer (apache/kafka), RedisContainer
    E2E_BACKEND=auto    (default) docker when a Docker engine answers, local otherwise; says which it picked

Both yield the same `Infra`, so one set of tests runs on either.

Docker knobs (defaults suit a machine with Docker and public images):
    E2E_PG_IMAGE (postgres:16), E2E_REDIS_IMAGE (redis:7), E2E_KAFKA_IMAGE (apache/kafka:3.8.0; an image
    whose name contains "tansu" runs the Tansu broker instead), E2E_DOCKER_NETWORK=bridge|host (host: every
    container on host networking at free 127.0.0.1 ports, for engines run with --bridge=none).
Local knobs: PGHOST/PGPORT/PGUSER/PGPASSWORD, E2E_REDIS_URL, E2E_KAFKA_BOOTSTRAP (reuse a running broker
instead of starting one).
"""

from __future__ import annotations

import contextlib
import os
import re
import socket
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import psycopg

from testsupport.broker import TansuBroker, kafka_api_versions_ok, poll_until
from testsupport.ports import free_port
from testsupport.processes import ServiceDatabase, create_service_database


@dataclass
class Infra:
    backend: str
    pg_host: str
    pg_port: int
    pg_user: str
    pg_password: str | None
    redis_url: str
    kafka_bootstrap: str
    details: dict[str, str] = field(default_factory=dict)

    def _auth(self) -> str:
        pw = f":{quote(self.pg_password, safe='')}" if self.pg_password else ""
        return f"{quote(self.pg_user, safe='')}{pw}"

    def pg_dsn(self, dbname: str = "postgres") -> str:
        """libpq URL (psycopg, psql)."""
        return f"postgresql://{self._auth()}@{self.pg_host}:{self.pg_port}/{dbname}"

    def database_url(self, dbname: str) -> str:
        """SQLAlchemy URL (psycopg 3 driver), the shape services and the relay take."""
        return f"postgresql+psycopg://{self._auth()}@{self.pg_host}:{self.pg_port}/{dbname}"

    def create_database(self, name: str) -> str:
        """Drop (terminating its sessions) and create a database; returns its SQLAlchemy URL."""
        if not re.fullmatch(r"[A-Za-z0-9_]+", name):
            raise ValueError(f"database name {name!r}: letters, digits and _ only")
        with psycopg.connect(self.pg_dsn(), autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.database_url(name)

    def create_service_database(self, name: str, service: str) -> ServiceDatabase:
        """A service's database as deployed: owned by `<service>_owner` (migrations), reached by
        `<service>_app` (the service's processes); with this server's password for both where it wants one."""
        if not re.fullmatch(r"[A-Za-z0-9_]+", name):
            raise ValueError(f"database name {name!r}: letters, digits and _ only")
        return create_service_database(
            name,
            service,
            host=self.pg_host,
            port=self.pg_port,
            admin_user=self.pg_user,
            password=self.pg_password,
        )

    def drop_database(self, name: str) -> None:
        with psycopg.connect(self.pg_dsn(), autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def env(self) -> dict[str, str]:
        """Environment for processes started against this infrastructure (services, relays, consumers)."""
        env = {
            "PGHOST": self.pg_host,
            "PGPORT": str(self.pg_port),
            "PGUSER": self.pg_user,
            "REDIS_URL": self.redis_url,
            "KAFKA_BOOTSTRAP": self.kafka_bootstrap,
        }
        if self.pg_password:
            env["PGPASSWORD"] = self.pg_password
        return env


def docker_reachable() -> bool:
    try:
        import docker  # type: ignore[import-untyped]

        client = docker.from_env(timeout=3)
        try:
            return bool(client.ping())
        finally:
            client.close()
    except Exception:
        return False


def choose_backend() -> str:
    wanted = os.environ.get("E2E_BACKEND", "auto").strip().lower() or "auto"
    if wanted not in ("auto", "local", "docker"):
        raise ValueError(f"E2E_BACKEND={wanted!r}: expected local, docker or auto")
    if wanted == "auto":
        picked = "docker" if docker_reachable() else "local"
        reason = "a Docker engine answers" if picked == "docker" else "no Docker engine answers"
        print(f"[e2e] E2E_BACKEND=auto picked {picked} ({reason})", flush=True)
        return picked
    print(f"[e2e] E2E_BACKEND={wanted}", flush=True)
    return wanted


@contextlib.contextmanager
def start_infra(backend: str | None = None) -> Iterator[Infra]:
    backend = backend or choose_backend()
    cm = _local() if backend == "local" else _docker()
    with cm as infra:
        print(
            f"[e2e] backend={infra.backend} postgresql={infra.pg_host}:{infra.pg_port} "
            f"redis={infra.redis_url} kafka={infra.kafka_bootstrap} {infra.details}",
            flush=True,
        )
        yield infra


# -- local ----------------------------------------------------------------------------------------------------
def _port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


@contextlib.contextmanager
def _local() -> Iterator[Infra]:
    host = os.environ.get("PGHOST", "127.0.0.1")
    port = int(os.environ.get("PGPORT", "5432"))
    if not _port_open(host, port):
        raise RuntimeError(f"local backend: PostgreSQL does not answer on {host}:{port} (`make stack`)")
    redis_url = os.environ.get("E2E_REDIS_URL", "redis://127.0.0.1:6379/0")
    reuse = os.environ.get("E2E_KAFKA_BOOTSTRAP")
    broker: TansuBroker | None = None
    if reuse:
        bootstrap = reuse
    else:
        broker = TansuBroker(name="e2e-session-broker").start()
        bootstrap = broker.bootstrap
    try:
        yield Infra(
            backend="local",
            pg_host=host,
            pg_port=port,
            pg_user=os.environ.get("PGUSER", "postgres"),
            pg_password=os.environ.get("PGPASSWORD") or None,
            redis_url=redis_url,
            kafka_bootstrap=bootstrap,
            details={"broker": "tansu (dedicated, memory)" if broker else f"reused {reuse}"},
        )
    finally:
        if broker is not None:
            broker.stop()


# -- docker (testcontainers) ----------------------------------------------------------------------------------
def _host_network() -> bool:
    return os.environ.get("E2E_DOCKER_NETWORK", "bridge").strip().lower() == "host"


def _host_mode(container: Any) -> Any:
    """Host networking: no port mapping, the container's port *is* the host port, on 127.0.0.1."""
    container.with_kwargs(network_mode="host")
    container.ports = {}  # docker refuses port bindings with host networking
    container.get_container_host_ip = lambda: "127.0.0.1"
    container.get_exposed_port = lambda port: int(port)
    return container


@contextlib.contextmanager
def _docker() -> Iterator[Infra]:
    # Ryuk (the reaper container) is an image we may not be able to pull; we remove our containers ourselves.
    os.environ.setdefault("TESTCONTAINERS_RYUK_DISABLED", "true")
    from testcontainers.community.postgres import PostgresContainer
    from testcontainers.community.redis import RedisContainer

    host_net = _host_network()
    pg_image = os.environ.get("E2E_PG_IMAGE", "postgres:16")
    redis_image = os.environ.get("E2E_REDIS_IMAGE", "redis:7")
    kafka_image = os.environ.get("E2E_KAFKA_IMAGE", "apache/kafka:3.8.0")

    with contextlib.ExitStack() as stack:
        pg_port = free_port() if host_net else 5432
        pg = PostgresContainer(
            pg_image, port=pg_port, username="postgres", password="postgres", driver="psycopg"
        )
        if host_net:
            _host_mode(pg)
            pg.with_env("PGPORT", str(pg_port))
            pg.with_command(f"postgres -p {pg_port} -c listen_addresses=127.0.0.1")
        stack.enter_context(pg)

        redis_port = free_port() if host_net else 6379
        rd = RedisContainer(redis_image, port=redis_port)
        if host_net:
            _host_mode(rd)
            rd.with_command(f"redis-server --bind 127.0.0.1 --port {redis_port} --save '' --appendonly no")
        stack.enter_context(rd)

        bootstrap = stack.enter_context(_kafka_container(kafka_image, host_net))

        yield Infra(
            backend="docker",
            pg_host=pg.get_container_host_ip(),
            pg_port=int(pg.get_exposed_port(pg_port)),
            pg_user="postgres",
            pg_password="postgres",
            redis_url=f"redis://{rd.get_container_host_ip()}:{rd.get_exposed_port(redis_port)}/0",
            kafka_bootstrap=bootstrap,
            details={
                "images": f"{pg_image}, {redis_image}, {kafka_image}",
                "network": "host" if host_net else "bridge",
            },
        )


@contextlib.contextmanager
def _kafka_container(image: str, host_net: bool) -> Iterator[str]:
    """A single-node Kafka-protocol broker container advertising 127.0.0.1:<free port>.

    apache/kafka (KRaft, configured through its KAFKA_* environment) or, where no Kafka image can be had,
    an image of the Tansu binary (same protocol). Under bridge networking the advertised port is bound
    on the host explicitly, so clients outside the container reach what the broker advertises.
    """
    from testcontainers.core.container import DockerContainer

    if image.startswith("confluentinc/"):
        from testcontainers.community.kafka import KafkaContainer

        with KafkaContainer(image).with_kraft() as kafka:
            yield kafka.get_bootstrap_server()
        return

    port = free_port()
    c = DockerContainer(image)
    if host_net:
        _host_mode(c)
        listen_host, listen_port = "127.0.0.1", port
    else:
        listen_host, listen_port = "0.0.0.0", 9092
        c.with_bind_ports(9092, port)
    if "tansu" in image:
        c.with_command(
            f"broker --listener-url tcp://{listen_host}:{listen_port} "
            f"--advertised-listener-url tcp://127.0.0.1:{port}"
        )
    else:
        controller = free_port() if host_net else 9093
        c.with_envs(
            KAFKA_NODE_ID="1",
            KAFKA_PROCESS_ROLES="broker,controller",
            KAFKA_LISTENERS=(
                f"PLAINTEXT://{listen_host}:{listen_port},CONTROLLER://{listen_host}:{controller}"
            ),
            KAFKA_ADVERTISED_LISTENERS=f"PLAINTEXT://127.0.0.1:{port}",
            KAFKA_CONTROLLER_LISTENER_NAMES="CONTROLLER",
            KAFKA_LISTENER_SECURITY_PROTOCOL_MAP="CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
            KAFKA_CONTROLLER_QUORUM_VOTERS=f"1@127.0.0.1:{controller}" if host_net else "1@localhost:9093",
            KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR="1",
            KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR="1",
            KAFKA_TRANSACTION_STATE_LOG_MIN_ISR="1",
            KAFKA_GROUP_INITIAL_REBALANCE_DELAY_MS="0",
            KAFKA_NUM_PARTITIONS="4",
        )
    with c:
        poll_until(
            lambda: kafka_api_versions_ok("127.0.0.1", port),
            timeout=90,
            what=f"{image} on 127.0.0.1:{port}",
            interval=0.1,
        )
        yield f"127.0.0.1:{port}"
