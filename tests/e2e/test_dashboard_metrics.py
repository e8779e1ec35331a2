"""The Grafana dashboard (deploy/grafana/dashboards/outbox.json) against what a running system really exports.
Grafana cannot run here, so its queries are checked at the source: a whole system (tests/e2e/system.py: the
three APIs, a relay per service, both consumers) serves a user's journey, then every process's /metrics is
scraped and every metric each dashboard query reads must be exported by a process of the job the query
selects (api, relay, consumer), with every label the query matches on or groups by (Prometheus adds job,
instance and service from the target). A histogram's _bucket/_sum/_count are sample names of the text
format, so they are found as such. `up` and `ALERTS` are Prometheus's own series. The alert rules
(deploy/prometheus/alerts.yml) get the same check.

The metrics are OpenTelemetry instruments, which appear in /metrics only once recorded: the journey makes
each one record, and the scrape waits (polling, no fixed delay) until every query's metric is there or the
timeout names the missing ones.
"""

from __future__ import annotations

import difflib
from collections import defaultdict

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests import dashboard_queries as dq
from tests.e2e.client import User
from tests.e2e.system import System
from testsupport import wait_until

pytestmark = [pytest.mark.e2e]


def job_of(process: str) -> str:
    if process.endswith("-relay"):
        return "relay"
    if process.endswith("-consumer"):
        return "consumer"
    return "api"


def scrape(system: System) -> dict[str, dict[str, set[str]]]:
    """job -> sample name -> every label name seen on it, over all the job's processes."""
    exported: dict[str, dict[str, set[str]]] = defaultdict(lambda: defaultdict(set))
    for process, address in system.metrics.items():
        response = httpx.get(f"http://{address}/metrics", timeout=10)
        assert response.status_code == 200, f"{process}: {response.status_code}"
        for family in text_string_to_metric_families(response.text):
            for sample in family.samples:
                exported[job_of(process)][sample.name] |= set(sample.labels)
    return exported


def problems(exported: dict[str, dict[str, set[str]]], source: str, queries: list[dq.Query]) -> list[str]:
    found = []
    for query in queries:
        readable: set[str] = set(dq.TARGET_LABELS)
        for selector in query.selectors:
            where = f"{source} {query.panel!r}: {selector.metric}"
            if selector.metric in dq.SYNTHETIC:
                labels = dq.SYNTHETIC[selector.metric]
            else:
                job = selector.equal("job") or ""
                names = exported.get(job, {})
                if selector.metric not in names:
                    near = difflib.get_close_matches(selector.metric, list(names), n=2)
                    found.append(f"{where}: no {job!r} process exports it (close: {near})")
                    continue
                labels = names[selector.metric] | dq.TARGET_LABELS
            readable |= labels
            for label, _, _ in selector.matchers:
                if label not in labels:
                    found.append(f"{where}: no label {label!r} (has {sorted(labels)})")
        for label in sorted(query.grouping - readable):
            found.append(f"{source} {query.panel!r}: groups by {label!r}, which none of its metrics has")
    return found


def everything() -> list[tuple[str, list[dq.Query]]]:
    """Every dashboard's queries, and the alert rules' (the same check keeps them on real names too)."""
    sources = [(path.name, dq.queries(dq.load(path))) for path in dq.dashboards()]
    return [*sources, ("alerts.yml", dq.rule_queries())]


async def test_every_dashboard_query_and_alert_rule_reads_metrics_the_system_exports(system: System) -> None:
    user = await User.signed_up(system, "dashboard")
    try:
        ds = await user.create_dataset()
        doc = await user.create_document(ds, "watched from a dashboard")
        await user.settled(ds, doc["id"], 1, timeout=60)  # console -> relay -> indexer -> relay -> console
        await user.search(ds, "dashboard")
    finally:
        await user.aclose()
    assert dq.dashboards(), "no dashboard under deploy/grafana/dashboards"
    latest: list[str] = []

    async def complete() -> bool:
        exported = scrape(system)
        latest[:] = [p for source, queries in everything() for p in problems(exported, source, queries)]
        return not latest

    try:
        await wait_until(complete, timeout=60, interval=1, what="every dashboard metric exported")
    except (AssertionError, TimeoutError) as exc:
        raise AssertionError("\n".join(latest)) from exc
    exported = scrape(system)
    queried = {s.metric for _, queries in everything() for q in queries for s in q.selectors}
    print(
        f"[dashboard] {len(queried)} metrics read by the dashboard and rules, all exported:", sorted(queried)
    )
    assert len(dq.rule_queries()) >= 8
    # Not vacuous: the check tells a near miss (an OpenTelemetry counter without its _total) from the name.
    assert "messaging_client_sent_messages_total" in exported["relay"]
    assert "messaging_client_sent_messages" not in exported["relay"]
    assert "outbox_pending_messages" not in exported["relay"]  # a backlog gauge is the APIs'
