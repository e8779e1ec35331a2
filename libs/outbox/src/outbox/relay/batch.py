"""One claimed batch on its way out: which rows may go (order per aggregate) and the records they become."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from opentelemetry import trace
from opentelemetry.trace import Span, SpanKind, Status, StatusCode

from outbox.envelope import encode_headers
from outbox.relay.failures import PublishFailure, classify_publish_error
from outbox.relay.publisher import Outbound
from outbox.relay.store import ClaimedRow
from outbox.telemetry.tracing import (
    MESSAGING_DESTINATION_PARTITION_ID,
    capture_context,
    context_from,
    send_attributes,
    tracer,
)
from outbox.telemetry.tracing import recording as tracing_recording

Aggregate = tuple[str, str]  # (topic, aggregate id)


def in_aggregate_order(rows: Sequence[ClaimedRow], held: set[Aggregate] | None = None) -> list[ClaimedRow]:
    """The claimed rows that continue their aggregate's pending sequence; after a gap, the rest waits.
    Rows of a `held` aggregate (an earlier batch of this relay did not get its row acked) all wait."""
    blocked: set[Aggregate] = set(held) if held else set()
    keep: list[ClaimedRow] = []
    for row in rows:
        key = (row.topic, row.aggregate_id)
        if row.gap:
            blocked.add(key)
        if key not in blocked:
            keep.append(row)
    return keep


def outbound(rows: Sequence[ClaimedRow], prefix: str) -> tuple[list[Outbound], list[Span], bool]:
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


@dataclass(slots=True)
class Settlement:
    """What the broker made of one batch: rows to mark published, record failures to charge to their row,
    and the first failure that was nobody's row (an outage or a producer fault)."""

    published: list[ClaimedRow] = field(default_factory=list)
    failed: list[tuple[ClaimedRow, BaseException]] = field(default_factory=list)
    outage: BaseException | None = None

    def held(self, claimed: Sequence[ClaimedRow]) -> set[Aggregate]:
        """Aggregates with a claimed row that was not acked: their later rows must wait."""
        acked = {row.id for row in self.published}
        return {(row.topic, row.aggregate_id) for row in claimed if row.id not in acked}


def settle(
    rows: Sequence[ClaimedRow], items: Sequence[Outbound], spans: Sequence[Span], recording: bool
) -> Settlement:
    """Sort each sent row by its outcome and end its span; no database work."""
    out = Settlement()
    for row, item, span in zip(rows, items, spans, strict=True):
        if item.acked:
            out.published.append(row)
            if recording:
                span.set_attribute(MESSAGING_DESTINATION_PARTITION_ID, str(item.partition))
            span.end()
            continue
        error = item.error
        if error is None:  # held back behind a failure in its partition: the next claim sends it
            span.end()
            continue
        span.record_exception(error)
        span.set_status(Status(StatusCode.ERROR, type(error).__name__))
        span.end()
        kind = classify_publish_error(error)
        if kind is PublishFailure.RECORD:
            out.failed.append((row, error))
        elif out.outage is None or kind is PublishFailure.PRODUCER:
            out.outage = error  # a producer fault first, so the producer is replaced
    return out
