"""A terminal view of traces written by `OTEL_SPANS_FILE` (JSON lines): one tree per trace.

outbox trace spans.jsonl [--trace-id ID] [--last N]
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path
from typing import Any


def load_spans(path: Path) -> list[dict[str, Any]]:
    spans = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            spans.append(json.loads(line))
    return spans


def render(spans: Iterable[dict[str, Any]], *, trace_id: str | None = None, last: int = 5) -> str:
    by_trace: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for span in spans:
        by_trace[span["trace_id"]].append(span)
    if trace_id:
        chosen = [trace_id] if trace_id in by_trace else []
    else:
        chosen = sorted(by_trace, key=lambda t: min(s["start"] for s in by_trace[t]))[-last:]
    out: list[str] = []
    for tid in chosen:
        members = by_trace[tid]
        t0 = min(s["start"] for s in members)
        t1 = max(s["end"] for s in members)
        services = sorted({str(s.get("service")) for s in members})
        out.append(
            f"trace {tid}  {len(members)} spans  {(t1 - t0) / 1e6:.1f} ms  services: {', '.join(services)}"
        )
        ids = {s["span_id"] for s in members}
        children: dict[str | None, list[dict[str, Any]]] = defaultdict(list)
        for s in members:
            parent = s.get("parent_id")
            children[parent if parent in ids else None].append(s)

        _walk(children, None, 0, t0, out)
        out.append("")
    if not chosen:
        out.append("no matching trace")
    return "\n".join(out)


def _walk(
    children: dict[str | None, list[dict[str, Any]]], parent: str | None, depth: int, t0: int, out: list[str]
) -> None:
    for s in sorted(children.get(parent, []), key=lambda s: s["start"]):
        offset = (s["start"] - t0) / 1e6
        duration = (s["end"] - s["start"]) / 1e6
        flag = "  !" if s.get("status") == "ERROR" else ""
        out.append(
            f"  {'  ' * depth}+{offset:8.1f} ms {duration:8.1f} ms  [{s.get('service')}] {s['name']}{flag}"
        )
        _walk(children, s["span_id"], depth + 1, t0, out)
