"""Compose's alerting path, run here with Debian's binaries: Prometheus evaluates deploy/prometheus/alerts.yml
(made fast as in test_alerts_live.py) with the `alerting:` block of prometheus.compose.yml, and sends to
Alertmanager running deploy/alertmanager/alertmanager.yml, whose placeholder webhook URL is pointed at a
receiver of the test's (and its group_wait cut to 1 s; nothing else changed). A relay and a consumer
target that nothing serves make OutboxProcessDown fire; the webhook receives it in Alertmanager's format,
routed to the `webhook` receiver, with the rule's labels. Then an API target's outbox backlog grows old and
OutboxOldestPendingTooOld fires for the same service as the down relay: Alertmanager holds it back (the
inhibit rule: the down process is the cause) instead of notifying it.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from scripts import prometheus
from tests.e2e.test_alerts_live import fast_rules
from tests.test_compose_monitoring import amtool
from testsupport import free_port
from testsupport.broker import poll_until

pytestmark = [pytest.mark.e2e]
DEPLOY = Path(__file__).resolve().parents[2] / "deploy"


def stale_api(stale: threading.Event) -> ThreadingHTTPServer:
    """An API's /metrics whose outbox has waited 500 s (alert: 120 s) once `stale` is set, 0 s before: the
    inhibition holds back what arrives while its cause is firing, so the test makes the cause fire first
    (both at once would race: the backlog alert may reach Alertmanager a moment before the down alert)."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            age = b"500" if stale.is_set() else b"0"
            body = b'outbox_pending_oldest_age_seconds{outbox_database="auth"} ' + age + b"\n"
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; version=0.0.4")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def webhook() -> tuple[ThreadingHTTPServer, list[dict[str, Any]]]:
    received: list[dict[str, Any]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, received


@contextlib.contextmanager
def process(argv: list[str], log: Path, ready: str) -> Iterator[subprocess.Popen[bytes]]:
    with open(log, "wb") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)
        try:

            def up() -> bool:
                assert proc.poll() is None, log.read_text()
                with contextlib.suppress(httpx.HTTPError):
                    return httpx.get(ready, timeout=1).status_code == 200
                return False

            poll_until(up, timeout=30, what=ready)
            yield proc
        finally:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def test_a_firing_rule_reaches_the_webhook_through_alertmanager(tmp_path: Path) -> None:
    if amtool() is None:  # installs Debian's prometheus-alertmanager when root
        pytest.fail("Alertmanager is not installed: apt-get install prometheus-alertmanager")
    alertmanager = shutil.which("prometheus-alertmanager") or shutil.which("alertmanager")
    assert alertmanager, "prometheus-alertmanager installed without its binary"
    server, received = webhook()
    stale = threading.Event()
    api = stale_api(stale)
    am_port, prom_port = free_port(), free_port()

    config = yaml.safe_load((DEPLOY / "alertmanager" / "alertmanager.yml").read_text())
    (hook,) = config["receivers"][0]["webhook_configs"]
    hook["url"] = f"http://127.0.0.1:{server.server_port}/alerts"
    config["route"]["group_wait"] = "1s"
    (tmp_path / "alertmanager.yml").write_text(yaml.safe_dump(config))

    compose = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.compose.yml").read_text())
    alerting = compose["alerting"]
    assert alerting["alertmanagers"][0]["static_configs"][0]["targets"] == ["alertmanager:9093"]
    alerting["alertmanagers"][0]["static_configs"][0]["targets"] = [f"127.0.0.1:{am_port}"]
    jobs = {
        "api": {"auth": f"127.0.0.1:{api.server_port}"},
        "relay": {"auth": f"127.0.0.1:{free_port()}"},  # nothing listens: down
        "consumer": {"console": f"127.0.0.1:{free_port()}"},
    }
    text = prometheus.render(jobs, "alerts.yml", scrape_interval="1s", evaluation_interval="1s")
    (tmp_path / "prometheus.yml").write_text(text + yaml.safe_dump({"alerting": alerting}))
    (tmp_path / "alerts.yml").write_text(fast_rules((DEPLOY / "prometheus" / "alerts.yml").read_text()))

    am_argv = [
        alertmanager,
        f"--config.file={tmp_path / 'alertmanager.yml'}",
        f"--storage.path={tmp_path / 'am-data'}",
        f"--web.listen-address=127.0.0.1:{am_port}",
        "--cluster.listen-address=",
    ]
    prom_argv = [
        prometheus.ensure_binary("prometheus"),
        f"--config.file={tmp_path / 'prometheus.yml'}",
        f"--storage.tsdb.path={tmp_path / 'prom-data'}",
        f"--web.listen-address=127.0.0.1:{prom_port}",
    ]
    try:
        with (
            process(am_argv, tmp_path / "alertmanager.log", f"http://127.0.0.1:{am_port}/-/ready"),
            process(prom_argv, tmp_path / "prometheus.log", f"http://127.0.0.1:{prom_port}/-/ready"),
        ):

            def notified() -> bool:
                return any(
                    a["labels"]["alertname"] == "OutboxProcessDown" for n in received for a in n["alerts"]
                )

            poll_until(notified, timeout=60, what="OutboxProcessDown at the webhook")
            stale.set()  # now the backlog grows old behind the down relay

            def suppressed() -> bool:
                r = httpx.get(f"http://127.0.0.1:{am_port}/api/v2/alerts", timeout=5)
                backlog = [a for a in r.json() if a["labels"]["alertname"] == "OutboxOldestPendingTooOld"]
                return bool(backlog) and backlog[0]["status"]["state"] == "suppressed"

            poll_until(suppressed, timeout=60, what="OutboxOldestPendingTooOld held back by the inhibit rule")
            sent = {a["labels"]["alertname"] for n in received for a in n["alerts"]}
            assert "OutboxOldestPendingTooOld" not in sent, sent
    finally:
        server.shutdown()
        api.shutdown()
    notice = next(n for n in received if n["alerts"][0]["labels"]["alertname"] == "OutboxProcessDown")
    assert notice["receiver"] == "webhook" and notice["status"] == "firing"
    labels = notice["alerts"][0]["labels"]
    assert (
        labels["severity"] == "page" and labels["service"] in {"auth", "console"} and labels["job"] != "api"
    )
    assert notice["alerts"][0]["annotations"]["runbook"]
