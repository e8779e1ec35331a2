"""deploy/prometheus: the alert rules pass `promtool check rules` and their unit tests (alerts_test.yml:
series in, alerts out), the committed configuration is what scripts/prometheus.py generates and is valid.
promtool comes with Prometheus: installed here the way `make run` installs it (Debian's package when root);
where it cannot be, these tests fail and say what to install. Under a second once installed."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml

from scripts import prometheus

DEPLOY = Path(__file__).resolve().parent.parent / "deploy" / "prometheus"


@pytest.fixture(scope="module")
def promtool() -> str:
    return prometheus.ensure_binary("promtool")


def run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, cwd=DEPLOY)


def test_rules_are_valid(promtool: str) -> None:
    result = run(promtool, "check", "rules", "alerts.yml")
    assert result.returncode == 0, result.stdout + result.stderr


def test_rules_unit_tests_pass(promtool: str) -> None:
    result = run(promtool, "test", "rules", "alerts_test.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout + result.stderr


def test_every_alert_has_summary_runbook_and_both_kinds_of_case() -> None:
    rules = [r for g in yaml.safe_load((DEPLOY / "alerts.yml").read_text())["groups"] for r in g["rules"]]
    assert len(rules) >= 7
    cases = yaml.safe_load((DEPLOY / "alerts_test.yml").read_text())["tests"]
    firing: set[str] = set()
    silent: set[str] = set()
    for case in cases:
        for check in case["alert_rule_test"]:
            (firing if check["exp_alerts"] else silent).add(check["alertname"])
    for rule in rules:
        name = rule["alert"]
        assert rule["annotations"]["summary"] and rule["annotations"]["runbook"], name
        assert name in firing and name in silent, f"{name}: needs a firing and a not-firing case"


def test_the_committed_configuration_is_the_generated_one(promtool: str) -> None:
    assert (DEPLOY / "prometheus.yml").read_text() == prometheus.render(prometheus.targets({}), "alerts.yml")
    result = run(promtool, "check", "config", "prometheus.yml")
    assert result.returncode == 0, result.stdout + result.stderr


def test_targets_follow_the_procfile_variables() -> None:
    jobs = prometheus.targets({"CONSOLE_PORT": "18002", "INDEXER_CONSUMER_METRICS_PORT": "19113"})
    assert jobs["api"]["console"] == "127.0.0.1:18002"
    assert jobs["consumer"]["indexer"] == "127.0.0.1:19113"
    assert jobs["relay"]["auth"] == "127.0.0.1:9101"
    procfile = (DEPLOY.parent.parent / "Procfile").read_text()
    for ports in prometheus.JOBS.values():
        for variable, default in ports.values():
            if variable.endswith("_METRICS_PORT"):
                assert f"OUTBOX_METRICS_PORT=${{{variable}:-{default}}}" in procfile, variable
