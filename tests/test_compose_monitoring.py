"""`make compose-check` (and `make test`), without Docker: the watchers deploy/compose.yml runs are configured
right. Prometheus's compose configuration passes `promtool check config` and scrapes every process compose
runs under the jobs the alert rules use; Alertmanager's passes `amtool check-config` (Debian's
prometheus-alertmanager, installed when root like Prometheus; else a structural check alone) and routes to
a receiver that exists; Grafana's provisioning names the compose services and mounts; the dashboard is
well-formed JSON whose every query is valid PromQL (`promtool check rules`) reading a metric of the right
job. Whether those metrics really exist is tests/e2e/test_dashboard_metrics.py's question (a running system).
"""

from __future__ import annotations

import functools
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from deploy import kafka_acls
from scripts import debian, prometheus
from tests import dashboard_queries as dq

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
PROMETHEUS = DEPLOY / "prometheus"
ALERTMANAGER = DEPLOY / "alertmanager" / "alertmanager.yml"
GRAFANA = DEPLOY / "grafana"
JOBS = {"api", "relay", "consumer"}  # what deploy/prometheus/alerts.yml selects on


@functools.cache  # no test changes what it returns
def compose() -> dict[str, Any]:
    return kafka_acls.merge(yaml.safe_load((DEPLOY / "compose.yml").read_text()))


def mounts(service: dict[str, Any]) -> dict[str, str]:
    """container path -> host path (relative to deploy/) of a service's bind mounts."""
    out = {}
    for volume in service.get("volumes", []):
        source, target, *_ = f"{volume}:".split(":")
        if source.startswith("."):
            out[target] = source
    return out


def run(*argv: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, cwd=cwd)


@pytest.fixture(scope="module")
def promtool() -> str:
    return prometheus.ensure_binary("promtool")


def amtool() -> str | None:
    """amtool, from Debian's prometheus-alertmanager (installed when root, its service never started)."""
    if shutil.which("amtool") is None:
        debian.install("prometheus-alertmanager", service="prometheus-alertmanager")
    return shutil.which("amtool")


# --- Prometheus -------------------------------------------------------------------------------------------------
def test_prometheus_compose_config_is_valid_as_mounted(promtool: str, tmp_path: Path) -> None:
    service = compose()["services"]["prometheus"]
    files = mounts(service)
    assert files["/etc/prometheus/prometheus.yml"] == "./prometheus/prometheus.compose.yml"
    assert files["/etc/prometheus/alerts.yml"] == "./prometheus/alerts.yml"  # the one rules file
    for target, source in files.items():  # the container's layout, so rule_files resolves as it will there
        shutil.copy(DEPLOY / source, tmp_path / Path(target).name)
    result = run(promtool, "check", "config", "prometheus.yml", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "--config.file=/etc/prometheus/prometheus.yml" in service["command"]


def test_prometheus_scrapes_every_process_of_compose_under_the_rules_jobs() -> None:
    services = compose()["services"]
    config = yaml.safe_load((PROMETHEUS / "prometheus.compose.yml").read_text())
    scraped: dict[str, tuple[str, int]] = {}  # compose service -> (job, port)
    for job in config["scrape_configs"]:
        for sd in job.get("dns_sd_configs", []):
            assert sd["type"] == "A"
            for name in sd["names"]:
                scraped[name] = (job["job_name"], sd["port"])
    expected = {}
    for name, svc in services.items():
        env = svc.get("environment") or {}
        if "OUTBOX_METRICS_PORT" in env:  # relays and consumers (auth's mail sender is one)
            job = "relay" if name.endswith("-relay") else "consumer"
            expected[name] = (job, int(env["OUTBOX_METRICS_PORT"]))
        if env.get(f"{name.upper()}_HOST") == "0.0.0.0":  # an API: /metrics on its own port
            expected[name] = ("api", int(env[f"{name.upper()}_PORT"]))
    assert set(expected) == {"auth", "console", "indexer"} | {
        f"{s}-relay" for s in ("auth", "console", "indexer")
    } | {"console-consumer", "indexer-consumer", "auth-mailer"}
    assert scraped == expected
    rules = (PROMETHEUS / "alerts.yml").read_text()
    assert {job for job, _ in scraped.values()} == JOBS
    assert all(f'job="{job}"' in rules for job in JOBS)  # the rules select these jobs
    # `service` as locally: the DNS name without its -relay / -consumer suffix
    relabel = {
        c["job_name"]: c["relabel_configs"][0] for c in config["scrape_configs"] if "relabel_configs" in c
    }
    assert relabel["relay"]["regex"] == "(.+)-relay" and relabel["consumer"]["regex"] == "(.+)-consumer"
    assert all(r["target_label"] == "service" for r in relabel.values())


def test_prometheus_alerts_go_to_compose_alertmanager() -> None:
    services = compose()["services"]
    config = yaml.safe_load((PROMETHEUS / "prometheus.compose.yml").read_text())
    (target,) = config["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"]
    host, port = target.split(":")
    assert host in services and f"--web.listen-address=:{port}" in services[host]["command"]


# --- Alertmanager -----------------------------------------------------------------------------------------------
def test_alertmanager_config_passes_amtool_when_available() -> None:
    tool = amtool()
    if tool is None:
        pytest.skip(
            "amtool is not installed (apt-get install prometheus-alertmanager); structural check only"
        )
    result = run(tool, "check-config", ALERTMANAGER.name, cwd=ALERTMANAGER.parent)
    assert result.returncode == 0, result.stdout + result.stderr


def test_alertmanager_routes_to_receivers_that_exist_and_inhibits_real_alerts() -> None:
    config = yaml.safe_load(ALERTMANAGER.read_text())
    receivers = {r["name"] for r in config["receivers"]}
    routes = [config["route"], *config["route"].get("routes", [])]
    assert all(r["receiver"] in receivers for r in routes)
    (webhook,) = next(r for r in config["receivers"] if r["name"] == "webhook")["webhook_configs"]
    assert webhook["url"].startswith("http") and ".invalid" in webhook["url"]  # the documented placeholder
    alerts = {
        r["alert"]
        for g in yaml.safe_load((PROMETHEUS / "alerts.yml").read_text())["groups"]
        for r in g["rules"]
    }
    for rule in config.get("inhibit_rules", []):
        for matcher in rule["source_matchers"] + rule["target_matchers"]:
            name = re.fullmatch(r'alertname=~?"([^"]+)"', matcher)
            assert name and set(name.group(1).split("|")) <= alerts, matcher
    mounted = mounts(compose()["services"]["alertmanager"])
    assert mounted["/etc/alertmanager/alertmanager.yml"] == "./alertmanager/alertmanager.yml"


# --- Grafana ----------------------------------------------------------------------------------------------------
def test_grafana_provisioning_points_at_compose_services_and_mounts() -> None:
    services = compose()["services"]
    grafana = services["grafana"]
    mounted = mounts(grafana)
    assert mounted["/etc/grafana/provisioning"] == "./grafana/provisioning"
    datasources = yaml.safe_load((GRAFANA / "provisioning/datasources/datasources.yml").read_text())
    assert datasources["apiVersion"] == 1
    by_uid = {d["uid"]: d for d in datasources["datasources"]}
    assert by_uid["prometheus"]["type"] == "prometheus" and by_uid["prometheus"]["isDefault"] is True
    for uid, port_flag in (
        ("prometheus", "--web.listen-address=:9090"),
        ("alertmanager", "--web.listen-address=:9093"),
    ):
        assert by_uid[uid]["url"] == f"http://{uid}:{port_flag.rsplit(':', 1)[1]}"
        assert port_flag in services[uid]["command"]
    assert by_uid["jaeger"]["url"] == "http://jaeger:16686"
    providers = yaml.safe_load((GRAFANA / "provisioning/dashboards/outbox.yml").read_text())
    assert providers["apiVersion"] == 1
    (provider,) = providers["providers"]
    assert provider["type"] == "file"
    path = provider["options"]["path"]
    assert mounted[path] == "./grafana/dashboards"
    home = grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert (DEPLOY / "grafana/dashboards" / Path(home).relative_to(path)).is_file()
    # the admin's password is a secret file, never a value
    assert grafana["environment"]["GF_SECURITY_ADMIN_PASSWORD__FILE"] == "/run/secrets/grafana_admin_password"
    assert "GF_SECURITY_ADMIN_PASSWORD" not in grafana["environment"]


@pytest.mark.parametrize("path", dq.dashboards(), ids=lambda p: p.name)
def test_dashboard_json_is_well_formed(path: Path) -> None:
    dashboard = dq.load(path)
    assert dashboard["uid"] and dashboard["title"] and isinstance(dashboard["schemaVersion"], int)
    panels = dq.panels(dashboard)
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), "panel ids are unique"
    cells: set[tuple[int, int]] = set()
    for panel in panels:
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["x"] + grid["w"] <= 24 and grid["h"] > 0, panel["title"]
        covered = {
            (x, y)
            for x in range(grid["x"], grid["x"] + grid["w"])
            for y in range(grid["y"], grid["y"] + grid["h"])
        }
        assert not covered & cells, f"{panel['title']} overlaps another panel"
        cells |= covered
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "prometheus"}, panel["title"]
        refs = [t["refId"] for t in panel["targets"]]
        assert refs and len(refs) == len(set(refs)) and all(t["expr"].strip() for t in panel["targets"])
        assert panel["fieldConfig"]["defaults"].get("unit"), panel["title"]
    for variable in dashboard["templating"]["list"]:
        assert variable["datasource"]["uid"] == "prometheus"


@pytest.mark.parametrize("path", dq.dashboards(), ids=lambda p: p.name)
def test_every_dashboard_query_is_valid_promql(path: Path, promtool: str, tmp_path: Path) -> None:
    queries = dq.queries(dq.load(path))
    rules = {
        "groups": [
            {
                "name": "dashboard",
                "rules": [{"record": f"dashboard:query_{i}", "expr": q.expr} for i, q in enumerate(queries)],
            }
        ]
    }
    (tmp_path / "queries.yml").write_text(yaml.safe_dump(rules))
    result = run(promtool, "check", "rules", "queries.yml", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    # A mangled query must fail: promtool really parses them.
    (tmp_path / "broken.yml").write_text(
        yaml.safe_dump(
            {
                "groups": [
                    {"name": "x", "rules": [{"record": "x:y", "expr": queries[0].expr.replace(")", "", 1)}]}
                ]
            }
        )
    )
    assert run(promtool, "check", "rules", "broken.yml", cwd=tmp_path).returncode != 0


@pytest.mark.parametrize("path", dq.dashboards(), ids=lambda p: p.name)
def test_every_dashboard_query_selects_a_job_the_rules_know(path: Path) -> None:
    """A metric read under the wrong job shows nothing: every selector names api, relay or consumer
    (the live test checks that the job really exports it), except Prometheus's own series."""
    for query in dq.queries(dq.load(path)):
        assert query.selectors, query.panel
        for selector in query.selectors:
            if selector.metric in dq.SYNTHETIC:
                continue
            assert selector.equal("job") in JOBS, f"{query.panel}: {selector}"


def test_the_dashboard_shows_what_an_operator_needs() -> None:
    """Backlog and oldest age per service, publish rate and commit->ack latency, consumer lag and outcomes,
    dead letters and parked events, HTTP rate/errors/latency per route."""
    used = {s.metric for p in dq.dashboards() for q in dq.queries(dq.load(p)) for s in q.selectors}
    assert {
        "outbox_pending_messages",
        "outbox_pending_oldest_age_seconds",
        "messaging_client_sent_messages_total",
        "outbox_relay_commit_to_ack_duration_seconds_bucket",
        "outbox_consumer_group_lag",
        "outbox_consumer_messages_total",
        "outbox_dead_messages",
        "outbox_consumer_parked_messages",
        "http_server_request_duration_seconds_count",
        "http_server_request_duration_seconds_bucket",
    } <= used
    grouped = {label for p in dq.dashboards() for q in dq.queries(dq.load(p)) for label in q.grouping}
    assert {"service", "http_route", "outbox_outcome", "messaging_consumer_group_name"} <= grouped


def test_the_query_parser_finds_metrics_and_rejects_a_nameless_selector() -> None:
    selectors, grouping = dq.parse(
        'histogram_quantile(0.99, sum by (service, le) (rate(a_bucket{job="relay", x=~"1.."}[1m]))) / on (service) b and c'
    )
    assert [s.metric for s in selectors] == ["a_bucket", "b", "c"]
    assert selectors[0].equal("job") == "relay" and selectors[0].matchers[1] == ("x", "=~", "1..")
    assert grouping == {"service", "le"}
    with pytest.raises(ValueError):
        dq.parse('sum({job="api"})')


# --- Jaeger v2 --------------------------------------------------------------------------------------------------
def test_jaeger_v2_receives_otlp_where_the_services_send_it() -> None:
    services = compose()["services"]
    jaeger = services["jaeger"]
    image, tag = jaeger["image"].rsplit(":", 1)
    assert image == "jaegertracing/jaeger" and tag.startswith("2.")
    config_path = jaeger["command"][jaeger["command"].index("--config") + 1]
    config = yaml.safe_load((DEPLOY / mounts(jaeger)[config_path]).read_text())
    otlp = config["receivers"]["otlp"]["protocols"]
    assert otlp["grpc"]["endpoint"] == "0.0.0.0:4317" and otlp["http"]["endpoint"] == "0.0.0.0:4318"
    pipeline = config["service"]["pipelines"]["traces"]
    for kind in ("receivers", "processors", "exporters"):
        assert set(pipeline[kind]) <= set(config[kind]), kind
    assert set(config["service"]["extensions"]) <= set(config["extensions"])
    assert "jaeger_query" in config["extensions"]  # the UI, on its default :16686
    assert jaeger["ports"] == ["127.0.0.1:16686:16686"]
    endpoints = {
        s["environment"]["OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"]
        for s in services.values()
        if "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT" in (s.get("environment") or {})
    }
    assert endpoints == {"http://jaeger:4318/v1/traces"}
