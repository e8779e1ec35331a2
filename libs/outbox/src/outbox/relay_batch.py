"""One claimed batch on its way out: which rows may go (order per aggregate) and the records they become."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from opentelemetry import trace
from opentelemetry.trace import Span, SpanKind
from sqlalchemy.engine import Row

from outbox.envelope import encode_headers
from outbox.publisher import Outbound
from outbox.tracing import capture_context, context_from, send_attributes, tracer
from outbox.tracing import recording as tracing_recording


def in_aggregate_order(rows: Sequence[Row[Any]]) -> list[Row[Any]]:
    """The claimed rows that continue their aggregate's pending sequence; after a gap, the rest waits."""
    blocked: set[tuple[str, str]] = set()
    keep: list[Row[Any]] = []
    for row in rows:
        key = (row.topic, row.aggregate_id)
        if row.gap:
            blocked.add(key)
        if key not in blocked:
            keep.append(row)
    return keep


def outbound(rows: Sequence[Row[Any]], prefix: str) -> tuple[list[Outbound], list[Span], bool]:
    """The Kafka records for `rows` (CloudEvents headers, key = aggregate id), with a `send {topic}` span
    each when a recording tracer is installed; without one the writer's context passes through as is."""
    recording = tracing_recording()
    spans: list[Span] = []
    items: list[Outbound] = []
    for row in rows:
        stored_context = {"traceparent": row.traceparent} if row.traceparent else {}
        if row.tracestate:
            stored_context["tracestate"] = row.tracestate
        span: Span = trace.INVALID_SPAN
        trace_context = stored_context
        if recording:
            span = tracer().start_span(
                f"send {row.topic}",
                context=context_from(stored_context),
                kind=SpanKind.PRODUCER,
                attributes={
                    **send_attributes(row.topic, str(row.event_id), row.aggregate_id),
                    "outbox.id": row.id,
                },
            )
            with trace.use_span(span, end_on_exit=False):
                trace_context = capture_context()
        headers = encode_headers(
            event_id=row.event_id,
            event_type=row.event_type,
            source=row.source,
            subject=row.aggregate_id,
            time=row.occurred_at,
            version=row.aggregate_version,
            trace_context=trace_context,
            prev_version=row.prev_version,
        )
        spans.append(span)
        items.append(
            Outbound(
                topic=prefix + row.topic,
                key=row.aggregate_id.encode(),
                value=row.payload_json.encode(),
                headers=headers,
            )
        )
    return items, spans, recording
