"""The README's front door, as a new user meets it: a fresh clone, `make run` with no `uv` on PATH, the
README's quick-start block and its mail block (a password reset and an email-code login with the codes read
by `make mail` from the local SMTP sink) run as-is through the gateway, twice in a row, with `make stop` and
`make restart` of the indexer's consumer in between, and nothing left behind when the runner stops, however
it stops (SIGTERM, or SIGKILL where no handler runs).

Isolated through the environment: its own ports, databases, consumer groups, Redis prefix and topic
namespace, so it cannot collide with anything else on the machine. It clones the repository's HEAD: commit
what you want it to see.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from testsupport import free_port
from testsupport.broker import poll_until

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
GATEWAY_ERROR = "too many requests from this address"
# What a shell on this machine has (CA bundles, package-index settings...) minus what this test run or its
# `uv run` put there, and minus any service setting: the clone gets only the isolation below.
DROPPED_PREFIXES = (
    "VIRTUAL_ENV",
    "UV_",
    "PYTHON",
    "AUTH_",
    "CONSOLE_",
    "INDEXER_",
    "OUTBOX_",
    "GATEWAY_",
    "PYTEST",
)


def readme_block(name: str) -> str:
    readme = (ROOT / "README.md").read_text()
    block = re.search(rf"<!-- {name}:begin -->\s*```bash\n(.*?)```\s*<!-- {name}:end -->", readme, re.S)
    assert block, f"README.md lost its {name} block"
    return block.group(1)


def path_without_uv() -> str:
    return os.pathsep.join(
        d for d in os.environ["PATH"].split(os.pathsep) if d and not (Path(d) / "uv").exists()
    )


def processes_under(directory: Path) -> list[str]:
    """Every live process whose working directory is inside `directory`: what `make run` there started."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cwd = os.readlink(proc / "cwd")
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
            state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z" and (cwd == str(directory) or cwd.startswith(f"{directory}/")):
            found.append(f"{proc.name} {cmdline}")
    return found


@dataclass
class Clone:
    directory: Path
    env: dict[str, str]
    ports: dict[str, int]
    logs: Path
    runs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.ports[name]}"

    def make_run(self) -> subprocess.Popen[bytes]:
        log = open(self.logs / f"make-run-{len(self.runs)}.log", "wb")  # noqa: SIM115 - the child owns it
        proc = subprocess.Popen(
            ["make", "run"],
            cwd=self.directory,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.runs.append(proc)
        return proc

    def kill_leftover_runs(self) -> None:
        """A `make run` an earlier test left running (it failed half-way): one runner per `.stack` only."""
        for proc in self.runs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=60)
        self.assert_nothing_left()

    def log_tail(self) -> str:
        logs = sorted(self.logs.glob("make-run-*.log"))
        return logs[-1].read_text(errors="replace")[-6000:] if logs else ""

    def gateway_access_log(self) -> list[dict[str, object]]:
        """The gateway's JSON access-log lines in the latest `make run` output (the runner prefixes them)."""
        logs = sorted(self.logs.glob("make-run-*.log"))
        lines = logs[-1].read_text(errors="replace").splitlines() if logs else []
        return [
            json.loads(rest)
            for name, _, rest in (line.partition(" | ") for line in lines)
            if name.strip() == "gateway" and rest.startswith("{")
        ]

    def wait_ready(self, proc: subprocess.Popen[bytes], timeout: float) -> None:
        checks = [
            f"{self.url('gateway')}/gateway/healthz",
            f"{self.url('gateway')}/auth/.well-known/jwks.json",
            f"{self.url('console')}/healthz",
            f"{self.url('indexer')}/healthz",
        ]

        def ready() -> bool:
            if proc.poll() is not None:
                raise AssertionError(f"make run exited with {proc.returncode}:\n{self.log_tail()}")
            try:
                return all(httpx.get(url, timeout=2).status_code == 200 for url in checks)
            except httpx.HTTPError:
                return False

        poll_until(ready, timeout=timeout, what="make run to answer through the gateway", interval=0.5)

    def make(self, *argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["make", "-s", *argv],
            cwd=self.directory,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=120,
        )

    def pid_alive(self, pid: str) -> bool:
        """Whether the process `pid` (one `make run` recorded) still runs (a zombie does not)."""
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            return False
        return state != "Z"

    def runner_pid(self) -> int:
        return int((self.directory / ".stack" / "run" / "runner.pid").read_text().split()[0])

    def assert_nothing_left(self, timeout: float = 30) -> None:
        try:
            poll_until(
                lambda: not processes_under(self.directory), timeout=timeout, what="every process to end"
            )
        except TimeoutError as exc:
            raise AssertionError(f"left behind: {processes_under(self.directory)}") from exc


class OperatorStory:
    """An operator's commands on the clone's `make run`, as the README's verbs table gives them."""

    def __init__(self, clone: Clone) -> None:
        self.clone = clone
        env = clone.env
        self.console_db = f"postgresql://console_app@127.0.0.1:5432/{env['CONSOLE_PGDATABASE']}"
        self.indexer_db = f"postgresql://indexer_app@127.0.0.1:5432/{env['INDEXER_PGDATABASE']}"
        self.group = env["INDEXER_CONSUMER_NAME"]
        self.document = ""

    def outbox(self, *argv: str) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            [str(self.clone.directory / ".venv" / "bin" / "outbox"), *argv],
            cwd=self.clone.directory,
            env=self.clone.env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        print(f"$ outbox {' '.join(argv)}  (exit {done.returncode})\n{done.stdout}{done.stderr}")
        return done

    def create_a_document(self) -> None:
        """A new, disabled document through the gateway, while every process runs: its creation is applied."""
        self.http = httpx.Client(base_url=self.clone.url("gateway"), timeout=30)
        email, password = f"ops-{uuid.uuid4().hex[:8]}@example.com", "correct horse 42 ops"
        self.http.post("/auth/api/register", json={"email": email, "password": password, "name": "Ops"})
        token = self.http.post("/auth/api/login", json={"email": email, "password": password}).json()
        self.http.headers["authorization"] = f"Bearer {token['access_token']}"
        self.dataset = self.http.post(
            "/console/api/datasets", json={"name": f"ops-{uuid.uuid4().hex[:6]}"}
        ).json()["id"]
        created = self.http.post(
            f"/console/api/datasets/{self.dataset}/documents",
            json={"name": "runbook", "text": "what the operator looks for", "enabled": False},
        )
        assert created.status_code == 201, created.text
        self.document = created.json()["id"]
        self.why_shows_it_applied()

    def change_the_document(self) -> str:
        """Enabled, disabled and enabled again; returns the last request's trace id."""
        toggles = [
            self.http.patch(
                f"/console/api/datasets/{self.dataset}/documents/status/{action}/batch",
                params={"document_id": self.document},
            )
            for action in ("enable", "disable", "enable")
        ]
        self.http.close()
        assert [t.status_code for t in toggles] == [200, 200, 200], [t.text for t in toggles]
        trace_id = toggles[-1].headers.get("x-trace-id", "")
        assert re.fullmatch(r"[0-9a-f]{32}", trace_id), toggles[-1].headers
        assert toggles[-1].headers["traceresponse"].startswith(f"00-{trace_id}-")
        return trace_id

    def _why(self) -> subprocess.CompletedProcess[str]:
        return self.outbox(
            "why", self.document, "--database-url", self.console_db, "--consumer-db", self.indexer_db
        )

    def why_names_the_lagging_group(self) -> None:
        def behind() -> bool:
            done = self._why()
            return (
                done.returncode == 0
                and f"consumer group {self.group} is" in done.stdout
                and "behind" in done.stdout
            )

        # The relay publishes within moments; until then `why` names the outbox row instead.
        poll_until(behind, timeout=60, what="outbox why naming the stopped group as behind", interval=1)

    def status_fails_past_max_lag(self) -> None:
        # Waiting for the stopped group: the document's enable, disable and enable again.
        status = self.outbox(
            "status", "--database-url", self.indexer_db, "--group", self.group, "--max-lag", "1"
        )
        assert status.returncode == 1 and "lag" in status.stderr, status.stdout + status.stderr

    def why_shows_it_applied(self) -> None:
        def applied() -> bool:
            done = self._why()
            return done.returncode == 0 and "up to date" in done.stdout

        poll_until(
            applied, timeout=90, what="outbox why showing the document applied after make restart", interval=1
        )

    def trace_shows_the_whole_journey(self, trace_id: str) -> None:
        def whole() -> bool:
            done = self.outbox("trace", "--trace-id", trace_id)
            return done.returncode == 0 and all(
                service in done.stdout for service in ("console", "console-relay", "indexer-consumer")
            )

        # The consumer exports its spans in batches: give it a few seconds after it applied the event.
        poll_until(
            whole, timeout=60, what="outbox trace showing console -> relay -> indexer's consumer", interval=2
        )


@pytest.fixture(scope="module")
def clone(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Clone]:
    if not shutil.which("nginx") and not Path("/usr/sbin/nginx").exists() and os.geteuid() != 0:
        pytest.fail("nginx is missing and cannot be installed without root: install Debian's nginx")
    base = tmp_path_factory.mktemp("quickstart")
    directory = base / "repo"
    subprocess.run(["git", "clone", "-q", str(ROOT), str(directory)], check=True)
    run = uuid.uuid4().hex[:8]
    ports = {name: free_port() for name in ("gateway", "auth", "console", "indexer")}
    databases = {name: f"quickstart_{run}_{name}" for name in ("auth", "console", "indexer")}
    env = {k: v for k, v in os.environ.items() if not k.startswith(DROPPED_PREFIXES)}
    env |= {
        "PATH": path_without_uv(),
        "OUTBOX_TOPIC_PREFIX": f"{os.environ.get('OUTBOX_TOPIC_PREFIX', '')}quickstart-{run}.",
        "GATEWAY_PORT": str(ports["gateway"]),
        "AUTH_PORT": str(ports["auth"]),
        "CONSOLE_PORT": str(ports["console"]),
        "INDEXER_PORT": str(ports["indexer"]),
        "PROMETHEUS_PORT": str(free_port()),
        # `make stack` provisions these (owner and app roles), `make run` connects as the app roles.
        **{f"{name.upper()}_PGDATABASE": db for name, db in databases.items()},
        # No AUTH_JWKS_URL: its default follows AUTH_PORT.
        **{
            f"{name}_METRICS_PORT": str(free_port())
            for name in (
                "AUTH_RELAY",
                "CONSOLE_RELAY",
                "INDEXER_RELAY",
                "CONSOLE_CONSUMER",
                "INDEXER_CONSUMER",
                "AUTH_MAILER",
            )
        },
        "MAIL_SINK_PORT": str(free_port()),
        "MAILER_CONSUMER_NAME": f"quickstart-{run}-mailer",
        "AUTH_REDIS_PREFIX": f"quickstart-{run}:",
        "CONSOLE_CONSUMER_NAME": f"quickstart-{run}-console",
        "INDEXER_CONSUMER_NAME": f"quickstart-{run}-indexer",
        # Small enough to show which address auth counts, large enough for the quick start's own login.
        "AUTH_LOGIN_MAX_FAILURES_PER_ADDRESS": "3",
    }
    c = Clone(directory, env, ports, base)
    try:
        yield c
    finally:
        for proc in c.runs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
        subprocess.run(["make", "down"], cwd=directory, env=env, capture_output=True, timeout=120)


def test_make_run_then_the_readme_quick_start_through_the_gateway(clone: Clone) -> None:
    proc = clone.make_run()
    clone.wait_ready(proc, timeout=600)  # the first run installs uv and the environment

    # The README's blocks as a person pastes them, from the clone's directory (`make mail` reads its .stack),
    # twice: new names each run, so the second run meets no 409, and no wait is unbounded.
    script = readme_block("quickstart").replace("GW=http://localhost:8000", f"GW={clone.url('gateway')}")
    script += readme_block("quickstart-mail")

    def quick_start(run: int) -> str:
        started = time.monotonic()
        done = subprocess.run(
            ["bash", "-c", script],
            capture_output=True,
            text=True,
            timeout=300,
            env=clone.env,
            cwd=clone.directory,
        )
        print(f"quick start run {run}: {time.monotonic() - started:.1f} s (exit {done.returncode})")
        assert done.returncode == 0, done.stdout + done.stderr + clone.log_tail()
        for said in (
            "search finds",
            "search no longer finds",
            "password reset with code",
            "logged in with code",
        ):
            assert said in done.stdout, done.stdout
        assert "Subject: Your password reset code" in done.stdout, done.stdout  # `make mail` showed the mail
        return done.stdout

    first = quick_start(1)

    # The operator's story (issue 24) begins with a document every process has seen.
    story = OperatorStory(clone)
    story.create_a_document()

    # `make stop P=indexer-consumer` stops that process alone; `make restart` brings it back, and the second
    # run's search needs it (it indexes the document).
    pids = {p.stem: p.read_text().split()[0] for p in (clone.directory / ".stack" / "run").glob("*.pid")}
    stopped = clone.make("stop", "P=indexer-consumer")
    assert stopped.returncode == 0 and "stopped indexer-consumer" in stopped.stdout, (
        stopped.stdout + stopped.stderr
    )
    assert "indexer-consumer" in pids and not clone.pid_alive(pids["indexer-consumer"])
    still = {name: pid for name, pid in pids.items() if name != "indexer-consumer"}
    assert all(clone.pid_alive(pid) for pid in still.values()), clone.make("ps").stdout
    assert proc.poll() is None, clone.log_tail()
    assert re.search(r"indexer-consumer\s+stopped", clone.make("ps").stdout)
    # The operator's story (issue 24), continued: the document's changes wait for the stopped consumer;
    # `outbox why` names the group and how far behind it is, `outbox status --max-lag 1` fails; after `make
    # restart` `why` shows the document applied; the last request's trace id finds its whole trace.
    trace_id = story.change_the_document()
    story.why_names_the_lagging_group()
    story.status_fails_past_max_lag()
    restarted = clone.make("restart", "P=indexer-consumer")
    assert restarted.returncode == 0 and "started indexer-consumer" in restarted.stdout, restarted.stderr
    story.why_shows_it_applied()
    story.trace_shows_the_whole_journey(trace_id)

    second = quick_start(2)
    names = [re.search(r"dataset (\S+),", out) for out in (first, second)]
    assert names[0] and names[1] and names[0][1] != names[1][1], (first, second)

    # The gateway's own errors are JSON in the services' shape, and it sets a request id.
    unknown = httpx.get(f"{clone.url('gateway')}/nowhere")
    assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "not_found"
    assert re.fullmatch(r"[0-9a-f]{32}", unknown.headers["x-request-id"])
    echoed = httpx.get(
        f"{clone.url('gateway')}/auth/.well-known/jwks.json", headers={"X-Request-ID": "abc-123"}
    )
    assert echoed.headers["x-request-id"] == "abc-123"
    too_big = httpx.post(f"{clone.url('gateway')}/console/api/datasets", content=b"x" * (1024 * 1024 + 1))
    assert too_big.status_code == 413 and too_big.json()["error"]["code"] == "payload_too_large"
    unsafe = httpx.get(f"{clone.url('gateway')}/auth/.well-known/jwks.json", headers={"X-Request-ID": 'a"b'})
    assert re.fullmatch(r"[0-9a-f]{32}", unsafe.headers["x-request-id"]), unsafe.headers
    oversize = httpx.get(f"{clone.url('gateway')}/auth/.well-known/jwks.json", headers={"X-Pad": "x" * 9216})
    assert oversize.status_code == 431, oversize.text
    assert oversize.json()["error"]["code"] == "request_header_too_large"

    # Console's own trailing-slash redirect never carries the client's Host, and leads back to the gateway.
    moved = httpx.get(f"{clone.url('gateway')}/console/api/datasets/", headers={"Host": "evil.example"})
    assert moved.status_code == 307 and moved.headers["location"] == "/console/api/datasets", moved.headers

    # The quick start searched with q=exactly: the gateway logged the path, never the query string.
    logged = [line["uri"] for line in clone.gateway_access_log()]
    assert "/indexer/api/search" in logged, logged
    assert not [uri for uri in logged if "?" in str(uri)], logged

    # A forged X-Forwarded-For changes nothing: auth counts every attempt against the connection's address
    # (3 allowed here), whether the request came through the gateway or straight to the service.
    def failed_login(base: str, i: int) -> httpx.Response:
        return httpx.post(
            f"{base}/auth/api/login",
            json={"email": f"nobody-{i}@example.com", "password": "wrong password 1"},
            headers={"X-Forwarded-For": f"198.51.100.{i}"},
        )

    assert [failed_login(clone.url("gateway"), i).status_code for i in range(3)] == [401, 401, 401]
    blocked = failed_login(clone.url("gateway"), 3)
    assert blocked.status_code == 429 and GATEWAY_ERROR not in blocked.text, blocked.text  # auth's own 429
    direct = failed_login(clone.url("auth"), 4)
    assert direct.status_code == 429, direct.text

    # `make run`'s Prometheus (127.0.0.1 only) scrapes every API, relay and consumer, with the alert rules.
    prometheus = f"http://127.0.0.1:{clone.env['PROMETHEUS_PORT']}"

    def every_target_up() -> bool:
        with contextlib.suppress(httpx.HTTPError):
            r = httpx.get(f"{prometheus}/api/v1/query", params={"query": "up"}, timeout=5)
            up = {
                (s["metric"]["job"], s["metric"]["service"]): s["value"][1]
                for s in r.json()["data"]["result"]
            }
            return len(up) == 9 and set(up.values()) == {"1"}
        return False

    poll_until(every_target_up, timeout=90, what="Prometheus scraping 3 APIs, 3 relays, 3 consumers")
    rules = httpx.get(f"{prometheus}/api/v1/rules", timeout=5).json()["data"]["groups"][0]["rules"]
    assert "ConsumerGroupLagGrowing" in {r["name"] for r in rules}

    os.kill(clone.runner_pid(), signal.SIGTERM)
    assert proc.wait(timeout=60) is not None
    clone.assert_nothing_left()


def test_a_sigkilled_runner_takes_every_child_with_it_and_make_run_starts_again(clone: Clone) -> None:
    clone.kill_leftover_runs()
    proc = clone.make_run()
    clone.wait_ready(proc, timeout=300)
    os.kill(clone.runner_pid(), signal.SIGKILL)
    proc.wait(timeout=60)
    clone.assert_nothing_left()

    again = clone.make_run()
    clone.wait_ready(again, timeout=300)
    assert httpx.get(f"{clone.url('gateway')}/gateway/healthz").json() == {"status": "ok"}
    subprocess.run(
        ["make", "down"], cwd=clone.directory, env=clone.env, check=True, capture_output=True, timeout=120
    )
    again.wait(timeout=60)
    clone.assert_nothing_left()
