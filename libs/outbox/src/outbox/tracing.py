"""W3C trace context across the outbox: captured by the writer, carried by the relay, continued by consumers.

`setup_tracing(service)` installs an SDK tracer provider: OTLP over HTTP when `OTEL_EXPORTER_OTLP_ENDPOINT`
(or the traces-specific variable) is set, spans as JSON lines to a file when `OTEL_SPANS_FILE` is set
(the local, backend-free view; `outbox trace` renders it), nothing otherwise.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Mapping, Sequence

from opentelemetry import propagate, trace
from opentelemetry.context import Context
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

TRACER_NAME = "outbox"


def tracer() -> trace.Tracer:
    return trace.get_tracer(TRACER_NAME)


def capture_context() -> dict[str, str]:
    """The current W3C trace context as a carrier (`traceparent`, `tracestate`), empty when none."""
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return carrier


def context_from(carrier: Mapping[str, str]) -> Context:
    return propagate.extract(dict(carrier))


def tracing_configured() -> bool:
    """True when OTEL_* variables ask for spans to be exported (so instrumentation is worth its cost)."""
    if os.environ.get("OTEL_SDK_DISABLED", "").lower() == "true":
        return False
    return bool(
        os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
        or os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
        or os.environ.get("OTEL_SPANS_FILE")
    )


def setup_tracing(service_name: str) -> None:
    """Install a tracer provider for this process, configured from standard OTEL_* variables."""
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor

    if isinstance(trace.get_tracer_provider(), TracerProvider):
        return
    otlp = os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or os.environ.get(
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"
    )
    spans_file = os.environ.get("OTEL_SPANS_FILE")
    if not (otlp or spans_file) or os.environ.get("OTEL_SDK_DISABLED", "").lower() == "true":
        return  # no exporter: keep the no-op provider, context still propagates through headers
    provider = TracerProvider(
        resource=Resource.create({SERVICE_NAME: os.environ.get("OTEL_SERVICE_NAME", service_name)})
    )
    if otlp:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    if spans_file:
        provider.add_span_processor(SimpleSpanProcessor(JsonLinesSpanExporter(spans_file)))
    trace.set_tracer_provider(provider)


class JsonLinesSpanExporter(SpanExporter):
    """Appends finished spans as one JSON object per line; several processes may share the file."""

    def __init__(self, path: str) -> None:
        self._path = path
        self._lock = threading.Lock()

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        lines = []
        for span in spans:
            ctx = span.get_span_context()
            assert ctx is not None
            lines.append(
                json.dumps(
                    {
                        "trace_id": f"{ctx.trace_id:032x}",
                        "span_id": f"{ctx.span_id:016x}",
                        "parent_id": f"{span.parent.span_id:016x}" if span.parent else None,
                        "name": span.name,
                        "service": span.resource.attributes.get("service.name"),
                        "kind": span.kind.name,
                        "start": span.start_time,
                        "end": span.end_time,
                        "status": span.status.status_code.name,
                        "attributes": {k: str(v) for k, v in (span.attributes or {}).items()},
                    }
                )
            )
        with self._lock, open(self._path, "a", encoding="utf-8") as fh:
            fh.write("".join(line + "\n" for line in lines))
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        return None

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True
