"""The terminal trace view: pure rendering of spans written by the JSON-lines exporter."""

from __future__ import annotations

from outbox.ops.trace_view import render


def span(
    name: str, service: str, span_id: str, parent: str | None, start: int, end: int
) -> dict[str, object]:
    return {
        "trace_id": "t1",
        "span_id": span_id,
        "parent_id": parent,
        "name": name,
        "service": service,
        "start": start,
        "end": end,
        "status": "UNSET",
    }


def test_render_nests_children_under_parents_across_services() -> None:
    spans = [
        span("console.document process", "indexer", "c", "b", 3_000_000, 9_000_000),
        span("PATCH /enable", "console", "a", None, 0, 2_000_000),
        span("console.document publish", "console-relay", "b", "a", 2_500_000, 2_800_000),
        span("unrelated root", "auth", "z", None, 50_000_000, 51_000_000) | {"trace_id": "t2"},
    ]
    text = render(spans, trace_id="t1")
    lines = text.splitlines()
    assert lines[0].startswith("trace t1  3 spans  9.0 ms  services: console, console-relay, indexer")
    assert [line.strip().split("]")[1].strip() for line in lines[1:4]] == [
        "PATCH /enable",
        "console.document publish",
        "console.document process",
    ]
    indents = [len(line) - len(line.lstrip()) for line in lines[1:4]]
    assert indents[0] < indents[1] < indents[2]
    assert "unrelated" not in text
    assert render(spans, trace_id="nope") == "no matching trace"
    assert render(spans, last=1).startswith("trace t2")
