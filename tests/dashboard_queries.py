"""The PromQL of the Grafana dashboard (deploy/grafana/dashboards/outbox.json), taken apart: which metrics each
query reads, with which label matchers, and which labels it groups by. Used by the fast checks
(tests/test_compose_monitoring.py) and by the live one (tests/e2e/test_dashboard_metrics.py).

A small tokenizer rather than a PromQL parser: the queries are checked for syntax by `promtool check rules`
(each one as a recording rule), so here only names need finding. Strings, label blocks and durations are
whole tokens; an identifier followed by `(` is a function or aggregation; keywords are skipped; any other
identifier is a metric name (with the label block that follows it, if any).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DASHBOARDS = Path(__file__).resolve().parent.parent / "deploy" / "grafana" / "dashboards"
RULES = Path(__file__).resolve().parent.parent / "deploy" / "prometheus" / "alerts.yml"
# Grafana's own variables and the dashboard's `service` variable, as a query run by Grafana would see them.
VARIABLES = {"$__rate_interval": "1m", "$__interval": "15s", "$__range": "1h", "$service": ".*"}
# Series Prometheus makes itself (no process exports them): their label names.
SYNTHETIC = {
    "up": {"job", "instance", "service"},
    "ALERTS": {"alertname", "alertstate", "severity", "job", "instance", "service"},
}
# Labels every scraped series gets from its target (deploy/prometheus/*.yml).
TARGET_LABELS = {"job", "instance", "service"}

KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless", "bool"}
KEYWORDS |= {"offset", "atan2"}
_TOKEN = re.compile(
    r'"(?:\\.|[^"\\])*"'  # a string
    r'|\{(?:[^}"]|"(?:\\.|[^"\\])*")*\}'  # a label block
    r"|\[[^\]]*\]"  # a range or subquery duration
    r"|[A-Za-z_:][A-Za-z0-9_:]*"  # an identifier
    r"|\d+(?:\.\d+)?(?:[eE][+-]?\d+)?"  # a number
    r"|\S"
)
_MATCHER = re.compile(r'([A-Za-z_][A-Za-z0-9_]*)\s*(=~|!~|!=|=)\s*"((?:\\.|[^"\\])*)"')
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)")


@dataclass(frozen=True)
class Selector:
    metric: str
    matchers: tuple[tuple[str, str, str], ...] = ()  # (label, operator, value)

    def equal(self, label: str) -> str | None:
        """The value `label` must equal in this selector, if it has such a matcher."""
        return next((v for name, op, v in self.matchers if name == label and op == "="), None)


@dataclass
class Query:
    panel: str
    expr: str
    selectors: list[Selector] = field(default_factory=list)
    grouping: set[str] = field(default_factory=set)


def load(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    """Every panel, the ones nested in collapsed rows too."""
    out: list[dict[str, Any]] = []
    for panel in dashboard.get("panels", []):
        out.append(panel)
        out.extend(panel.get("panels", []))
    return out


def substitute(expr: str) -> str:
    for name in sorted(VARIABLES, key=len, reverse=True):  # $__rate_interval before $__range...
        expr = expr.replace(name, VARIABLES[name])
    return expr


def parse(expr: str) -> tuple[list[Selector], set[str]]:
    grouping = {label.strip() for clause in _GROUPING.findall(expr) for label in clause.split(",")}
    grouping.discard("")
    tokens = [m.group(0) for m in _TOKEN.finditer(_GROUPING.sub(" ", expr))]
    selectors: list[Selector] = []
    for i, token in enumerate(tokens):
        after = tokens[i + 1] if i + 1 < len(tokens) else ""
        if token.startswith("{"):
            before = tokens[i - 1] if i else ""
            if not re.fullmatch(r"[A-Za-z_:][A-Za-z0-9_:]*", before) or before in KEYWORDS:
                raise ValueError(f"a selector without a metric name in {expr!r}")
            continue
        if not re.fullmatch(r"[A-Za-z_:][A-Za-z0-9_:]*", token) or token in KEYWORDS or after == "(":
            continue
        block = after if after.startswith("{") else ""
        selectors.append(Selector(token, tuple(_MATCHER.findall(block))))
    return selectors, grouping


def queries(dashboard: dict[str, Any]) -> list[Query]:
    out = []
    for panel in panels(dashboard):
        for target in panel.get("targets", []):
            expr = substitute(target["expr"])
            selectors, grouping = parse(expr)
            out.append(Query(panel["title"], expr, selectors, grouping))
    return out


def dashboards() -> list[Path]:
    return sorted(DASHBOARDS.glob("*.json"))


def rule_queries() -> list[Query]:
    """The alert rules' expressions (deploy/prometheus/alerts.yml), named by their alert."""
    import yaml  # only this function reads YAML

    doc = yaml.safe_load(RULES.read_text())
    out = []
    for group in doc["groups"]:
        for rule in group["rules"]:
            selectors, grouping = parse(rule["expr"])
            out.append(Query(f"alert {rule['alert']}", rule["expr"], selectors, grouping))
    return out
