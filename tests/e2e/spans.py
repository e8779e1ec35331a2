"""Reading the spans every process of a system wrote (OTEL_SPANS_FILE, one JSON object per line)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

Span = dict[str, Any]


def load(path: Path) -> list[Span]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def find(spans: list[Span], predicate: Callable[[Span], bool]) -> list[Span]:
    return [s for s in spans if predicate(s)]


def in_trace(spans: list[Span], trace_id: str) -> list[Span]:
    return [s for s in spans if s["trace_id"] == trace_id]


def describe(spans: list[Span]) -> str:
    """One line per span, in start order: service, kind, name, span id <- parent id."""
    return "\n".join(
        f"{s['service']:>18} {s['kind']:<8} {s['name']:<55} {s['span_id']} <- {s['parent_id']}"
        for s in sorted(spans, key=lambda s: s["start"])
    )
