"""Checks of deploy/compose.yml that need the compose tool and a Docker engine (`make compose-check`,
`make compose-smoke`).

    python deploy/composectl.py check   # validate compose.yml (+ the cluster and local files), build the image
    python deploy/composectl.py smoke   # the whole topology on this machine's stand-ins, end to end, torn down

`check` first refuses any secret left in a compose file (an environment value, an interpolated variable or
default, credentials in a URL or on a command line: deploy/credentials.py) and checks Kafka's security
(deploy/kafka_acls.py: the init job's script is the generated one and, run against stand-in tools, adds
exactly the intended ACLs; every Kafka client is SASL_SSL as its own principal; every broker denies by
default), which needs no compose tool; then validates each combination of files with `compose config` (with
throwaway secret files) and repeats the Kafka checks on what it renders, then builds every service that has a `build:` section and checks the image (entry points import, the CLIs
run, a non-root user, no uv/pip/compiler). It builds against the engine DOCKER_HOST (or the default socket)
names when one answers, else against the local stand-in engine of deploy/local/images.sh with
compose.local.yml's base image.

`smoke` runs deploy/local/images.sh (the engine and the stand-in images), renders compose.yml +
compose.local.yml with random secrets, brings it up with two indexer consumers and two console relays,
waits until every container with a healthcheck is healthy and the jobs completed, runs the README's
quick-start block through the gateway, checks that one trace crosses console, its relay, the indexer's
consumer and relay and console's consumer, checks every container again, and tears everything down, also
on failure (logs are kept in .stack/compose-smoke/ then). docker-compose 1.29 (Debian's) cannot drop the
published ports of compose.yml in an override and refuses published ports with host networking, so the
rendered file leaves `ports:` out of host-network services; nothing else is changed.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import kafka_acls
import yaml
from credentials import generate, secret_findings

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repository, for scripts/debian.py
from scripts import debian

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
BASE = DEPLOY / "compose.yml"
CLUSTER = DEPLOY / "compose.kafka-cluster.yml"
LOCAL = DEPLOY / "compose.local.yml"
IMAGES = DEPLOY / "local" / "images.sh"
SMOKE_DIR = ROOT / ".stack" / "compose-smoke"
PROJECT = "outbox-smoke"
JOBS = {
    *(f"{s}-{job}" for s in ("auth", "console", "indexer") for job in ("db-roles", "migrate")),
    "kafka-init",
}
# compose.local.yml's ports (all on 127.0.0.1): nothing may listen there before the smoke starts.
LOCAL_PORTS = (
    25432,
    25433,
    25434,
    26379,
    29092,
    28000,
    28001,
    28002,
    28003,
    24318,
    29101,
    29102,
    29103,
    29112,
    29113,
)
GATEWAY = "http://127.0.0.1:28000"
METRICS_PORTS = {
    "auth-relay": 29101,
    "console-relay": 29102,
    "indexer-relay": 29103,
    "console-consumer": 29112,
    "indexer-consumer": 29113,
    "auth-mailer": 29114,
}
TRACE_CHAIN = ("console", "console-relay", "indexer-consumer", "indexer-relay", "console-consumer")


def log(message: str) -> None:
    print(f"[compose] {message}", flush=True)


def compose_command() -> list[str]:
    if (
        shutil.which("docker")
        and subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0
    ):
        return ["docker", "compose"]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    if debian.install("docker-compose") and shutil.which("docker-compose"):  # as up.sh installs docker.io
        return ["docker-compose"]
    sys.exit(
        "[compose] neither `docker compose` nor `docker-compose` found (Debian: apt-get install docker-compose)"
    )


def engine_answers(env: dict[str, str]) -> bool:
    return (
        shutil.which("docker") is not None
        and subprocess.run(["docker", "info"], capture_output=True, env=env).returncode == 0
    )


def engine_dir() -> Path:
    return Path(os.environ.get("COMPOSE_DOCKER_DIR", "/var/tmp/outbox-compose-docker"))


def local_engine_up() -> bool:
    return engine_answers({**os.environ, "DOCKER_HOST": f"unix://{engine_dir() / 'docker.sock'}"})


def stop_local_engine() -> None:
    subprocess.run(
        ["bash", str(ROOT / "tests/e2e/docker/down.sh")],
        env={**os.environ, "E2E_DOCKER_DIR": str(engine_dir())},
        check=False,
    )


def local_engine() -> str:
    """Start (or reuse) the stand-in engine and images; its DOCKER_HOST."""
    out = subprocess.run(["bash", str(IMAGES)], check=True, stdout=subprocess.PIPE, text=True)
    return out.stdout.strip().splitlines()[-1]


def write_env(path: Path, extra: dict[str, str] | None = None) -> None:
    """An env file (no secret in it) naming a fresh directory of random secret files beside it."""
    generate(path.parent / "secrets")
    values = {"SECRETS_DIR": str(path.parent / "secrets")} | (extra or {})
    path.write_text("".join(f"{k}={v}\n" for k, v in values.items()))
    path.chmod(0o600)


def host_network_base(directory: Path) -> Path:
    """compose.yml without services' `networks:` (the gateway's fixed address), which host networking
    (compose.local.yml) cannot be combined with and no override can remove in docker-compose 1.29."""
    config = yaml.safe_load(BASE.read_text())
    for service in config["services"].values():
        service.pop("networks", None)
    out = directory / "compose.base-hostnet.yml"
    out.write_text(yaml.safe_dump(config, sort_keys=False))
    return out


def lint_secrets() -> list[str]:
    """Every secret left in a compose file other than as a file (deploy/credentials.py)."""
    failures = []
    for path in (BASE, CLUSTER, LOCAL):
        findings = secret_findings(yaml.safe_load(path.read_text()))
        log(f"{'PASS' if not findings else 'FAIL'} no secret outside secret files: {path.name}")
        for finding in findings:
            log(f"  {path.name}: {finding}")
        failures += [f"{path.name}: {finding}" for finding in findings]
    return failures


class Compose:
    def __init__(
        self, files: list[Path], env_file: Path, env: dict[str, str], project: str = PROJECT
    ) -> None:
        if LOCAL in files:
            files = [host_network_base(env_file.parent) if f == BASE else f for f in files]
        self.base = [*compose_command(), "-p", project, "--env-file", str(env_file)]
        self.base += ["--project-directory", str(DEPLOY)]
        for f in files:
            self.base += ["-f", str(f)]
        self.env = env
        self.project = project

    def run(self, *args: str, check: bool = True, capture: bool = False) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*self.base, *args], check=check, env=self.env, text=True, capture_output=capture, cwd=DEPLOY
        )

    def config(self) -> dict[str, Any]:
        return yaml.safe_load(self.run("config", capture=True).stdout)


def lint_kafka() -> list[str]:
    """Kafka security, without a compose tool: init.sh is what kafka_acls.py generates, running it (against
    stand-in tools) adds exactly the intended ACLs, and the compose files, merged, put every client on
    SASL_SSL as its own principal and lock every broker down (compose.local.yml: PLAINTEXT, said so)."""
    failures = []

    def report(what: str, findings: list[str]) -> None:
        log(f"{'PASS' if not findings else 'FAIL'} kafka: {what}")
        for finding in findings:
            log(f"  {finding}")
        failures.extend(f"kafka: {what}: {finding}" for finding in findings)

    script = DEPLOY / "kafka" / "init.sh"
    report(
        "init.sh is kafka_acls.py's",
        []
        if script.read_text() == kafka_acls.render()
        else ["deploy/kafka/init.sh differs: python deploy/kafka_acls.py > deploy/kafka/init.sh"],
    )
    for prefix in ("", "staging."):
        try:
            grants, _ = kafka_acls.applied(script, prefix)
        except RuntimeError as exc:
            report(f"init.sh runs (prefix {prefix!r})", [str(exc)])
            continue
        report(
            f"the ACLs init.sh adds (prefix {prefix!r}): producers only their topics, consumers only theirs, "
            "only the mailer reads auth.mail",
            kafka_acls.policy_findings(grants),
        )
    base, cluster, local = (yaml.safe_load(f.read_text()) for f in (BASE, CLUSTER, LOCAL))
    report(
        "compose.yml: SASL_SSL clients, each its own principal; brokers deny by default",
        kafka_acls.compose_findings(kafka_acls.merge(base)),
    )
    report(
        "+ compose.kafka-cluster.yml: the same on every broker; every broker in each bootstrap list",
        kafka_acls.compose_findings(kafka_acls.merge(base, cluster)),
    )
    report(
        "+ compose.local.yml: PLAINTEXT stand-in (Tansu), clients without credentials",
        kafka_acls.compose_findings(kafka_acls.merge(base, local), plaintext_allowed=True),
    )
    return failures


# --- check ------------------------------------------------------------------------------------------------


def check(args: argparse.Namespace) -> int:
    started = time.monotonic()
    failures: list[str] = lint_secrets() + lint_kafka()
    with tempfile.TemporaryDirectory() as tmp:
        tmp_dir = Path(tmp)
        env_file = tmp_dir / "check.env"
        write_env(env_file, {"SMOKE_DIR": str(tmp_dir)})
        env = dict(os.environ)
        for files in ([BASE], [BASE, CLUSTER], [BASE, LOCAL]):
            names = " + ".join(f.name for f in files)
            result = Compose(files, env_file, env).run("config", check=False, capture=True)
            ok = result.returncode == 0
            log(f"{'PASS' if ok else 'FAIL'} config: {names}{'' if ok else ': ' + result.stderr.strip()}")
            if not ok:
                failures.append(f"config {names}")
                continue
            # The same Kafka checks on compose's own rendering (its merge, its interpolation).
            findings = kafka_acls.compose_findings(
                yaml.safe_load(result.stdout), plaintext_allowed=LOCAL in files
            )
            log(f"{'PASS' if not findings else 'FAIL'} kafka security as compose renders it: {names}")
            for finding in findings:
                log(f"  {finding}")
            failures += [f"kafka ({names}): {finding}" for finding in findings]

        files = [BASE]
        started_engine = False
        if args.local or not engine_answers(env):
            log(
                "no Docker engine answers here (or --local): building on the stand-in engine (compose.local.yml)"
            )
            started_engine = not local_engine_up()
            env["DOCKER_HOST"] = local_engine()
            files = [BASE, LOCAL]
        compose = Compose(files, env_file, env)
        config = compose.config()
        built = sorted(name for name, svc in config["services"].items() if "build" in svc)
        log(f"building {len(built)} services from the Dockerfile: {', '.join(built)}")
        if compose.run("build", *built, check=False).returncode != 0:
            failures.append("build")
        else:
            images = {config["services"][name]["image"] for name in built}
            for image in sorted(images):
                failures += check_image(image, env, {name: config["services"][name] for name in built})
        if started_engine:
            stop_local_engine()
    log(f"{'PASS' if not failures else 'FAIL'} compose-check in {time.monotonic() - started:.0f} s")
    for failure in failures:
        log(f"  failed: {failure}")
    return 1 if failures else 0


def check_image(image: str, env: dict[str, str], services: dict[str, dict[str, Any]]) -> list[str]:
    def executable(svc: dict[str, Any]) -> str | None:
        argv = svc.get("entrypoint") or svc.get("command")
        return str(argv[0]) if argv else None

    commands = sorted(
        {x for svc in services.values() if svc.get("image") == image and (x := executable(svc))}
    )
    script = f"""
set -e
test "$(id -u)" != 0
for tool in uv pip gcc cc; do if command -v "$tool" >/dev/null; then echo "found $tool"; exit 1; fi; done
for cmd in {" ".join(commands)}; do command -v "$cmd" >/dev/null; done
python -c "import auth.main, console.main, indexer.main, console.consumer, indexer.consumer, outbox.ops.cli"
outbox --help >/dev/null
for s in auth console indexer; do test -f services/$s/alembic.ini; done
alembic --version
# outside local mode auth refuses a default key-encryption key at start-up
if AUTH_ENVIRONMENT=production AUTH_KEY_ENCRYPTION_KEY=changethis python -c "from auth.settings import Settings; Settings()" 2>/dev/null; then
  echo "auth accepted the default key-encryption key"; exit 1
fi
"""
    result = subprocess.run(
        ["docker", "run", "--rm", "--network", "none", "--entrypoint", "sh", image, "-c", script],
        env=env,
        capture_output=True,
        text=True,
    )
    ok = result.returncode == 0
    log(
        f"{'PASS' if ok else 'FAIL'} image {image}: non-root, no uv/pip/compiler, "
        f"commands {', '.join(commands)} present, entry points import, auth refuses the default key"
        f"{'' if ok else ': ' + result.stdout + result.stderr}"
    )
    return [] if ok else [f"image {image}"]


# --- smoke ------------------------------------------------------------------------------------------------


def render_for_host_network(compose: Compose, out: Path) -> None:
    config = compose.config()
    for service in config["services"].values():
        if service.get("network_mode") == "host":
            service.pop("ports", None)
    config.pop("networks", None)  # no service joins it with host networking
    out.write_text(yaml.safe_dump(config, sort_keys=False))


def containers(env: dict[str, str]) -> list[dict[str, Any]]:
    ids = subprocess.run(
        ["docker", "ps", "-aq", "--filter", f"label=com.docker.compose.project={PROJECT}"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    if not ids:
        return []
    return json.loads(
        subprocess.run(
            ["docker", "inspect", *ids], env=env, capture_output=True, text=True, check=True
        ).stdout
    )


def state_of(container: dict[str, Any]) -> tuple[str, str]:
    """(name, 'ok' | 'waiting' | 'failed: why')"""
    name = container["Name"].lstrip("/")
    service = container["Config"]["Labels"].get("com.docker.compose.service", "")
    state = container["State"]
    if service in JOBS:
        if state["Status"] == "exited":
            return name, "ok" if state["ExitCode"] == 0 else f"failed: job exited {state['ExitCode']}"
        return name, "waiting"
    if state["Status"] != "running":
        return name, f"failed: {state['Status']} (exit {state.get('ExitCode')})"
    if container["RestartCount"]:
        return name, f"failed: restarted {container['RestartCount']} times"
    health = (state.get("Health") or {}).get("Status")
    if health is None:
        return name, "failed: no healthcheck"
    if health == "healthy":
        return name, "ok"
    if health == "starting":
        return name, "waiting"
    last = (state["Health"].get("Log") or [{}])[-1]
    return (
        name,
        f"failed: {health} (last probe: exit {last.get('ExitCode')}, {last.get('Output', '').strip()[:200]!r})",
    )


def limits_missing(container: dict[str, Any]) -> list[str]:
    """What of compose.yml's limits the engine did not apply to this container: a memory and a CPU limit,
    json-file logs rotated by size and count."""
    host = container["HostConfig"]
    logs = host.get("LogConfig") or {}
    missing = [] if host.get("Memory") else ["memory limit"]
    missing += [] if host.get("NanoCpus") or host.get("CpuQuota") else ["cpu limit"]
    rotated = logs.get("Type") == "json-file" and {"max-size", "max-file"} <= set(logs.get("Config") or {})
    return missing + ([] if rotated else ["rotated json-file logs"])


def wait_healthy(env: dict[str, str], timeout: float) -> list[tuple[str, str]]:
    deadline = time.monotonic() + timeout
    while True:
        states = [state_of(c) for c in containers(env)]
        if states and all(s == "ok" for _, s in states):
            return states
        if (
            any(s.startswith("failed") and "unhealthy" not in s for _, s in states)
            or time.monotonic() > deadline
        ):
            return states
        time.sleep(2)


def partition_shares(env: dict[str, str], service: str, topic: str) -> dict[str, set[int]]:
    """Each replica's current assignment of `topic`, from the last "newly assigned partitions" log line."""
    shares = {}
    for c in containers(env):
        if c["Config"]["Labels"].get("com.docker.compose.service") != service:
            continue
        name = c["Name"].lstrip("/")
        logs = subprocess.run(["docker", "logs", name], env=env, capture_output=True, text=True)
        lines = [
            line for line in (logs.stdout + logs.stderr).splitlines() if "newly assigned partitions" in line
        ]
        last = lines[-1] if lines else ""
        shares[name] = {int(p) for p in re.findall(rf"topic='{re.escape(topic)}', partition=(\d+)", last)}
    return shares


def quickstart_block() -> str:
    readme = (ROOT / "README.md").read_text()
    block = re.search(
        r"<!-- quickstart:begin -->\s*```bash\n(.*?)```\s*<!-- quickstart:end -->", readme, re.S
    )
    if not block:
        raise SystemExit("[compose] README.md has no quick-start block")
    script, count = re.subn(r"^GW=.*$", f"GW={GATEWAY}", block.group(1), count=1, flags=re.M)
    if count != 1:
        raise SystemExit("[compose] the quick-start block does not set GW=")
    return script


def read_spans(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def wait_for_trace(path: Path, timeout: float) -> tuple[str, list[dict[str, Any]]] | None:
    """The trace of the quick start's enable request (the first PATCH .../documents/status/{action}/batch)
    once it reaches every process of TRACE_CHAIN; at the deadline any trace that does, else None."""
    deadline = time.monotonic() + timeout
    complete: list[tuple[str, list[dict[str, Any]]]] = []
    while True:
        traces: dict[str, list[dict[str, Any]]] = {}
        for span in read_spans(path):
            traces.setdefault(span["trace_id"], []).append(span)
        complete = [(t, ss) for t, ss in traces.items() if set(TRACE_CHAIN) <= {s["service"] for s in ss}]
        status_changes = [
            (min(s["start"] for s in ss), t, ss)
            for t, ss in complete
            if any("/documents/status/" in s["name"] and not s.get("parent_id") for s in ss)
        ]
        if status_changes:
            _, trace_id, spans = min(status_changes, key=lambda x: x[0])
            return trace_id, spans
        if time.monotonic() > deadline:
            return complete[0] if complete else None
        time.sleep(1)


def ports_in_use() -> list[int]:
    taken = []
    for port in LOCAL_PORTS:
        with socket.socket() as s:
            s.settimeout(0.3)
            if s.connect_ex(("127.0.0.1", port)) == 0:
                taken.append(port)
    return taken


def smoke(args: argparse.Namespace) -> int:
    started = time.monotonic()
    phases: list[tuple[str, float]] = []
    results: list[tuple[bool, str]] = []

    def phase(name: str, since: float) -> float:
        now = time.monotonic()
        phases.append((name, now - since))
        return now

    taken = ports_in_use()
    if taken:
        log(f"FAIL ports already in use on 127.0.0.1: {taken} (compose.local.yml's range must be free)")
        return 1
    engine_was_up = local_engine_up()
    t = time.monotonic()
    env = {**os.environ, "DOCKER_HOST": local_engine()}
    t = phase("engine + stand-in images (deploy/local/images.sh)", t)

    if SMOKE_DIR.exists():
        shutil.rmtree(SMOKE_DIR)
    (SMOKE_DIR / "spans").mkdir(parents=True)
    (SMOKE_DIR / "spans").chmod(0o777)  # the sink runs as the image's non-root user
    env_file = SMOKE_DIR / "smoke.env"
    write_env(env_file, {"SMOKE_DIR": str(SMOKE_DIR)})
    rendered = SMOKE_DIR / "compose.rendered.yml"
    render_for_host_network(Compose([BASE, LOCAL], env_file, env), rendered)
    compose = Compose([rendered], env_file, env)
    passed = False
    try:
        compose.run("down", "-v", "--remove-orphans", check=False, capture=True)  # leftovers of a killed run
        log("building the image from the Dockerfile (BASE_IMAGE=compose/python:3.11-bookworm)")
        compose.run("build")
        t = phase("build (every service with build:, one image)", t)
        scale = ["--scale", f"indexer-consumer={args.scale}", "--scale", f"console-relay={args.scale}"]
        log(f"up -d {' '.join(scale)}")
        up = compose.run("up", "-d", *scale, check=False)
        results.append((up.returncode == 0, f"compose up exited {up.returncode}"))
        states = wait_healthy(env, args.timeout)
        healthy = bool(states) and all(s == "ok" for _, s in states)
        t = phase("up until every container is healthy and every job completed", t)
        results.append(
            (healthy, f"{sum(s == 'ok' for _, s in states)}/{len(states)} containers healthy or completed")
        )
        for name, s in states:
            if s != "ok":
                log(f"  {name}: {s}")
        if healthy:
            log("running the README quick-start block through the gateway at " + GATEWAY)
            qs = subprocess.run(
                ["bash", "-c", "set -euo pipefail\n" + quickstart_block()],
                capture_output=True,
                text=True,
                timeout=args.quickstart_timeout,
            )
            print(qs.stdout + qs.stderr, end="", flush=True)
            ok = qs.returncode == 0 and "search finds" in qs.stdout and "search no longer finds" in qs.stdout
            t = phase("README quick start through the gateway", t)
            results.append(
                (ok, f"quick start exited {qs.returncode}: enable reached search, disable left it")
            )

            found = wait_for_trace(SMOKE_DIR / "spans" / "otlp-spans.jsonl", 30)
            if found:
                trace_id, spans = found
                services = sorted({s["service"] for s in spans})
                root = next((s["name"] for s in spans if not s.get("parent_id")), "?")
                outbox = Path(sys.executable).parent / "outbox"
                view = [
                    str(outbox),
                    "trace",
                    str(SMOKE_DIR / "spans" / "otlp-spans.jsonl"),
                    "--trace-id",
                    trace_id,
                ]
                print(subprocess.run(view, capture_output=True, text=True).stdout, end="", flush=True)
                results.append(
                    (True, f"one trace over OTLP ({root}): {len(spans)} spans from {', '.join(services)}")
                )
            else:
                results.append((False, f"no trace crossing {', '.join(TRACE_CHAIN)} in the OTLP sink"))
            t = phase("trace check", t)

            if args.scale > 1:
                shares = partition_shares(env, "indexer-consumer", "console.document")
                split = (
                    len(shares) == args.scale
                    and all(shares.values())
                    and sum(len(p) for p in shares.values()) == len(set().union(*shares.values()))
                )
                results.append(
                    (
                        split,
                        "indexer-consumer replicas split console.document's partitions: "
                        + "; ".join(f"{n}: {sorted(p)}" for n, p in sorted(shares.items())),
                    )
                )

            for service, port in METRICS_PORTS.items():
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=3) as r:
                        ok = r.status == 200 and b"# TYPE" in r.read()
                except OSError:
                    ok = False
                results.append((ok, f"{service} serves /metrics on {port}"))

            running = containers(env)
            unlimited = {
                c["Name"].lstrip("/"): m
                for c in running
                if c["State"]["Status"] == "running" and (m := limits_missing(c))
            }
            results.append(
                (
                    not unlimited,
                    "every running container has its memory and CPU limit and rotated logs, as the engine "
                    f"applied them{'' if not unlimited else ': missing ' + repr(unlimited)}",
                )
            )
            stats = subprocess.run(
                ["docker", "stats", "--no-stream", "--format", "{{.Name}}  {{.MemUsage}}  {{.CPUPerc}}"],
                env=env,
                capture_output=True,
                text=True,
            )
            print("memory in use / limit, CPU after the quick start:\n" + stats.stdout, end="", flush=True)
            states = [state_of(c) for c in running]
            healthy = bool(states) and all(s == "ok" for _, s in states)
            results.append(
                (
                    healthy,
                    f"after the quick start: {sum(s == 'ok' for _, s in states)}/{len(states)} healthy or completed, none restarted",
                )
            )
            for name, s in states:
                log(f"  {name}: {s}")
        passed = all(ok for ok, _ in results)
    finally:
        if not passed:
            with (SMOKE_DIR / "logs.txt").open("w") as f:
                subprocess.run(
                    [*compose.base, "logs", "--no-color"],
                    stdout=f,
                    stderr=subprocess.STDOUT,
                    env=env,
                    cwd=DEPLOY,
                )
            log(f"logs of every container: {(SMOKE_DIR / 'logs.txt').relative_to(ROOT)}")
        t = time.monotonic()
        compose.run("down", "-v", "--remove-orphans", "--timeout", "20", check=False, capture=True)
        left = containers(env)
        results.append((not left, f"torn down: {len(left)} containers left"))
        if not engine_was_up and not args.keep_engine:
            stop_local_engine()
        phase("down -v (and the engine, when this run started it)", t)
        if passed and all(ok for ok, _ in results):
            shutil.rmtree(SMOKE_DIR, ignore_errors=True)

    print("\n=== make compose-smoke ===")
    for name, seconds in phases:
        print(f"  {seconds:6.1f} s  {name}")
    print(f"  {time.monotonic() - started:6.1f} s  total")
    for ok, what in results:
        print(f"  {'PASS' if ok else 'FAIL'}  {what}")
    verdict = all(ok for ok, _ in results)
    print(f"=== {'PASSED' if verdict else 'FAILED'} ===")
    return 0 if verdict else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    c = sub.add_parser("check", help="validate the compose files and build the image")
    c.add_argument(
        "--local", action="store_true", help="build on the stand-in engine even if another answers"
    )
    s = sub.add_parser("smoke", help="the whole topology on this machine's stand-ins, end to end")
    s.add_argument(
        "--scale", type=int, default=2, help="indexer-consumer and console-relay replicas (default 2)"
    )
    s.add_argument("--timeout", type=float, default=300, help="seconds to wait for health (default 300)")
    s.add_argument("--quickstart-timeout", type=float, default=120)
    s.add_argument("--keep-engine", action="store_true", help="leave the stand-in engine running afterwards")
    args = parser.parse_args()
    return check(args) if args.command == "check" else smoke(args)


if __name__ == "__main__":
    sys.exit(main())
