"""W3C trace context across the outbox: captured by the writer, carried by the relay, continued by consumers.

`setup_tracing(service)` installs an SDK tracer provider: OTLP over HTTP when `OTEL_EXPORTER_OTLP_ENDPOINT`
(or the traces-specific variable) is set, spans as JSON lines to a file when `OTEL_SPANS_FILE` is set
(the local, backend-free view; `outbox trace` renders it), nothing otherwise.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from opentelemetry import propagate, trace
from opentelemetry.context import Context

TRACER_NAME = "outbox"

# OpenTelemetry messaging semantic conventions (checked against opentelemetry-semantic-conventions by
# libs/outbox/tests/test_tracing.py). Only the API is imported here: the SDK is the `otel` extra.
MESSAGING_SYSTEM = "messaging.system"
MESSAGING_OPERATION_TYPE = "messaging.operation.type"
MESSAGING_OPERATION_NAME = "messaging.operation.name"
MESSAGING_DESTINATION_NAME = "messaging.destination.name"
MESSAGING_DESTINATION_PARTITION_ID = "messaging.destination.partition.id"
MESSAGING_MESSAGE_ID = "messaging.message.id"
MESSAGING_CONSUMER_GROUP_NAME = "messaging.consumer.group.name"
MESSAGING_BATCH_MESSAGE_COUNT = "messaging.batch.message_count"
MESSAGING_KAFKA_MESSAGE_KEY = "messaging.kafka.message.key"
MESSAGING_KAFKA_OFFSET = "messaging.kafka.offset"
KAFKA = "kafka"


def tracer() -> trace.Tracer:
    return trace.get_tracer(TRACER_NAME)


def capture_context() -> dict[str, str]:
    """The current W3C trace context as a carrier (`traceparent`, `tracestate`), empty when none."""
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return carrier


def context_from(carrier: Mapping[str, str]) -> Context:
    return propagate.extract(dict(carrier))


def recording() -> bool:
    """True when a real (SDK) tracer provider is installed; spans are then worth building."""
    return not isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider | trace.NoOpTracerProvider)


def send_attributes(topic: str, message_id: str, key: str) -> dict[str, Any]:
    """A relay's `send {topic}` span. `topic` is the logical name, the same one consumers record."""
    return {
        MESSAGING_SYSTEM: KAFKA,
        MESSAGING_OPERATION_TYPE: "send",
        MESSAGING_OPERATION_NAME: "send",
        MESSAGING_DESTINATION_NAME: topic,
        MESSAGING_MESSAGE_ID: message_id,
        MESSAGING_KAFKA_MESSAGE_KEY: key,
    }


def process_attributes(
    topic: str,
    group: str,
    *,
    partition: int | None = None,
    offset: int | None = None,
    message_id: str | None = None,
) -> dict[str, Any]:
    """A consumer's `process {topic}` span (one message, or a batch without message id and offset)."""
    attributes: dict[str, Any] = {
        MESSAGING_SYSTEM: KAFKA,
        MESSAGING_OPERATION_TYPE: "process",
        MESSAGING_OPERATION_NAME: "process",
        MESSAGING_DESTINATION_NAME: topic,
        MESSAGING_CONSUMER_GROUP_NAME: group,
    }
    if partition is not None:
        attributes[MESSAGING_DESTINATION_PARTITION_ID] = str(partition)
    if offset is not None:
        attributes[MESSAGING_KAFKA_OFFSET] = offset
    if message_id is not None:
        attributes[MESSAGING_MESSAGE_ID] = message_id
    return attributes


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
    """Install a tracer provider for this process, configured from standard OTEL_* variables.

    Needs the SDK (`pip install kafka-txoutbox[otel]`) only when an exporter is configured; without one the
    no-op provider stays and trace context still propagates through the outbox and the Kafka headers."""
    if not tracing_configured():
        return
    try:
        from opentelemetry.sdk.resources import SERVICE_NAME, Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
    except ImportError as exc:
        raise RuntimeError(
            "OTEL_* asks for spans to be exported but the OpenTelemetry SDK is missing: "
            "pip install 'kafka-txoutbox[otel]'"
        ) from exc

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
        from outbox.telemetry.span_file import JsonLinesSpanExporter, env_int

        # Batched off the request path: a span's end only queues it, and a background thread writes what
        # ended in the last OTEL_SPANS_FILE_DELAY_MS (200) in one locked write, instead of a lock, a stat and
        # a write per span on the thread that ended it. Flushed at exit; a process killed outright loses
        # at most that last fraction of a second of spans. The queue is large so bursts are not dropped.
        # OTEL_SPANS_FILE_DELAY_MS=0: each span written as it ends, on the thread that ended it.
        exporter = JsonLinesSpanExporter(spans_file)
        delay_ms = env_int("OTEL_SPANS_FILE_DELAY_MS", 200)
        provider.add_span_processor(
            BatchSpanProcessor(exporter, schedule_delay_millis=delay_ms, max_queue_size=65_536)
            if delay_ms > 0
            else SimpleSpanProcessor(exporter)
        )
    trace.set_tracer_provider(provider)
