"""`make compose-check` (and `make test`), without Docker: deploy/compose.yml is fit to leave running. Every
service, with and without the three-broker overlay, has a memory and CPU limit and rotated json-file logs;
every image is an exact version (no floating tag), the app's being the project's version; every Kafka client
bootstraps from every broker; the gateway re-resolves its upstream names through Docker's DNS while the
local gateway (`make run`) needs no resolver; the network's fixed addresses are settings.
"""

from __future__ import annotations

import functools
import re
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from deploy import kafka_acls
from scripts import gateway

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
FILES = {"compose.yml": ["compose.yml"], "+ kafka-cluster": ["compose.yml", "compose.kafka-cluster.yml"]}
# An exact release: 1.2.3 (a leading v, and a -variant such as -bookworm or -slim-bookworm, allowed); PostgreSQL
# numbers its releases major.minor (16.15 is one release, 16 a moving tag).
EXACT = re.compile(r"v?\d+\.\d+\.\d+(-[a-z0-9.-]+)?")
EXACT_POSTGRES = re.compile(r"\d{2,}\.\d+(-[a-z0-9.-]+)?")


def exact(image: str) -> bool:
    repository, _, tag = image.rpartition(":")
    pattern = EXACT_POSTGRES if repository.rsplit("/", 1)[-1] == "postgres" else EXACT
    return bool(repository) and pattern.fullmatch(tag) is not None


def merged(files: list[str]) -> dict[str, Any]:
    return _merged(tuple(files))


@functools.cache  # the merge takes ~0.3 s; no test changes what it returns
def _merged(files: tuple[str, ...]) -> dict[str, Any]:
    return kafka_acls.merge(*(yaml.safe_load((DEPLOY / f).read_text()) for f in files))


def project_version() -> str:
    version: str = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    return version


def limits(service: dict[str, Any]) -> tuple[str | None, float | None]:
    resources = ((service.get("deploy") or {}).get("resources") or {}).get("limits") or {}
    memory = service.get("mem_limit") or resources.get("memory")
    cpus = service.get("cpus") or resources.get("cpus")
    return memory, float(cpus) if cpus is not None else None


def megabytes(size: str) -> float:
    number, unit = re.fullmatch(r"(\d+(?:\.\d+)?)([kmg])b?", str(size).lower()).groups()  # type: ignore[union-attr]
    return float(number) * {"k": 1 / 1024, "m": 1, "g": 1024}[unit]


@pytest.mark.parametrize("files", FILES.values(), ids=FILES.keys())
def test_every_service_has_limits_and_rotated_logs(files: list[str]) -> None:
    services = merged(files)["services"]
    assert len(services) >= 20
    for name, service in services.items():
        memory, cpus = limits(service)
        assert memory and 32 <= megabytes(memory) <= 4096, f"{name}: mem_limit {memory}"
        assert cpus and 0 < cpus <= 4, f"{name}: cpus {cpus}"
        logging = service.get("logging") or {}
        options = logging.get("options") or {}
        assert logging.get("driver") == "json-file", f"{name}: no json-file logging"
        assert megabytes(options.get("max-size", "0k")) > 0 and int(options.get("max-file", 0)) >= 2, name


def test_a_job_has_tighter_limits_than_a_long_running_process() -> None:
    services = merged(["compose.yml"])["services"]
    assert megabytes(limits(services["console-migrate"])[0] or "") < megabytes(
        limits(services["console"])[0] or ""
    )


@pytest.mark.parametrize("files", FILES.values(), ids=FILES.keys())
def test_every_image_is_an_exact_version(files: list[str]) -> None:
    for name, service in merged(files)["services"].items():
        assert exact(service["image"]), f"{name}: {service['image']} is not an exact version"
        base = ((service.get("build") or {}).get("args") or {}).get("BASE_IMAGE")
        if base:
            assert exact(base), f"{name}: BASE_IMAGE {base}"


@pytest.mark.parametrize(
    "image",
    [
        "postgres:16",
        "postgres:16-bookworm",
        "redis:7",
        "redis:7.4-bookworm",
        "nginx:mainline",
        "app:latest",
        "x",
    ],
)
def test_a_floating_tag_is_refused(image: str) -> None:
    assert not exact(image)


def test_the_app_image_is_tagged_with_the_project_version() -> None:
    raw = yaml.safe_load((DEPLOY / "compose.yml").read_text())
    built = {n: s for n, s in merged(["compose.yml"])["services"].items() if "build" in s}
    assert len(built) >= 10
    assert {s["image"] for s in built.values()} == {f"outbox-reference/app:{project_version()}"}
    # APP_VERSION (the Makefile passes pyproject's) and APP_IMAGE (a registry's repository) override it.
    assert (
        raw["x-app"]["image"]
        == "${APP_IMAGE:-outbox-reference/app}:${APP_VERSION:-" + project_version() + "}"
    )
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"^APP_VERSION \?= .*pyproject\.toml", makefile, re.M)
    assert re.search(r"^DC = APP_VERSION=\$\(APP_VERSION\) ", makefile, re.M)


def test_the_cluster_bootstraps_every_client_from_every_broker() -> None:
    services = merged(["compose.yml", "compose.kafka-cluster.yml"])["services"]
    brokers = sorted(n for n, s in services.items() if "KAFKA_NODE_ID" in (s.get("environment") or {}))
    assert brokers == ["kafka", "kafka-2", "kafka-3"]
    clients = {
        n: s["environment"]["KAFKA_BOOTSTRAP"]
        for n, s in services.items()
        if "KAFKA_BOOTSTRAP" in (s.get("environment") or {})
    }
    assert len(clients) >= 8  # the init job, console and indexer APIs, 3 relays, 2 consumers
    for name, bootstrap in clients.items():
        hosts = sorted(address.rsplit(":", 1)[0] for address in bootstrap.split(","))
        assert hosts == brokers, f"{name}: {bootstrap}"
    single = merged(["compose.yml"])["services"]
    assert single["console-relay"]["environment"]["KAFKA_BOOTSTRAP"] == "kafka:9093"


# --- the gateway ----------------------------------------------------------------------------------------------
TEMPLATE = DEPLOY / "gateway" / "gateway.conf.template"
RESOLVER = DEPLOY / "gateway" / "docker-resolver.conf"


def test_the_gateway_resolves_upstreams_per_request_through_dockers_dns() -> None:
    template = TEMPLATE.read_text()
    config = [line.split("#")[0] for line in template.splitlines()]
    assert not any(re.match(r"\s*upstream\s", line) for line in config), (
        "a static upstream block resolves once"
    )
    passes = re.findall(r"proxy_pass\s+([^;]+);", "\n".join(config))
    assert len(passes) >= 9 and all(p.startswith("http://$") for p in passes), passes
    resolver = RESOLVER.read_text()
    assert re.search(r"^resolver 127\.0\.0\.11 valid=\d+s", resolver, re.M)
    gw = merged(["compose.yml"])["services"]["gateway"]
    assert "./gateway/docker-resolver.conf:/etc/nginx/conf.d/docker-resolver.conf:ro" in gw["volumes"]
    assert {gw["environment"][f"{s}_UPSTREAM"] for s in ("AUTH", "CONSOLE", "INDEXER")} == {
        "auth:8001",
        "console:8002",
        "indexer:8003",
    }
    # `make run`'s gateway: addresses only, so it needs (and has) no resolver
    local = gateway.variables()
    assert all(
        re.fullmatch(r"127\.0\.0\.1:\d+", local[f"{s}_UPSTREAM"]) for s in ("AUTH", "CONSOLE", "INDEXER")
    )
    assert "resolver" not in gateway.render(template, local).split("map $request_uri")[1]


def test_nginx_accepts_the_compose_rendering_without_resolving_at_start(tmp_path: Path) -> None:
    """Names that resolve nowhere here (auth, console, indexer): nginx starts anyway, because it looks them
    up per request (a static upstream would fail `nginx -t` with "host not found")."""
    try:  # installs Debian's nginx when root, as `make run` does
        nginx = gateway.ensure_binary()
    except RuntimeError as exc:
        pytest.fail(str(exc))
    env = merged(["compose.yml"])["services"]["gateway"]["environment"]
    values = {k: str(v) for k, v in env.items()} | {"GATEWAY_LISTEN": "127.0.0.1:1"}
    (tmp_path / "conf.d").mkdir()
    (tmp_path / "conf.d" / "docker-resolver.conf").write_text(RESOLVER.read_text())
    (tmp_path / "conf.d" / "gateway.conf").write_text(gateway.render(TEMPLATE.read_text(), values))
    main = "pid nginx.pid; error_log stderr warn; events {} http { include conf.d/*.conf; }\n"
    (tmp_path / "nginx.conf").write_text(main)
    check = subprocess.run(
        [nginx, "-p", str(tmp_path), "-c", str(tmp_path / "nginx.conf"), "-e", "stderr", "-t", "-q"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert check.returncode == 0, check.stderr
    # the same file with a static upstream is refused: the check above is not vacuous
    static = (
        (tmp_path / "conf.d" / "gateway.conf")
        .read_text()
        .replace("http://$auth_upstream", "http://auth:8001")
    )
    (tmp_path / "conf.d" / "gateway.conf").write_text(static)
    check = subprocess.run(
        [nginx, "-p", str(tmp_path), "-c", str(tmp_path / "nginx.conf"), "-e", "stderr", "-t", "-q"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert check.returncode != 0 and "host not found" in check.stderr


def test_the_networks_fixed_addresses_are_settings_and_agree() -> None:
    raw = yaml.safe_load((DEPLOY / "compose.yml").read_text())
    (pool,) = raw["networks"]["default"]["ipam"]["config"]
    assert pool == {
        "subnet": "${COMPOSE_SUBNET:-10.231.0.0/24}",
        "ip_range": "${COMPOSE_IP_RANGE:-10.231.0.128/25}",
    }
    address = raw["services"]["gateway"]["networks"]["default"]["ipv4_address"]
    assert address == "${GATEWAY_ADDRESS:-10.231.0.10}" == raw["x-api-env"]["FORWARDED_ALLOW_IPS"]
