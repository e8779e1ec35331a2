"""One trace from the writer's span through the relay's `send` to the consumer's `process`, on the OpenTelemetry
messaging semantic conventions (names, attributes, links)."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.semconv._incubating.attributes import messaging_attributes as M
from opentelemetry.trace import SpanKind
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from outbox import (
    ConsumerSettings,
    Event,
    EventContext,
    IdempotentConsumer,
    OutboxWriter,
)
from outbox.testing import drain_outbox
from testsupport import wait_until

pytestmark = pytest.mark.usefixtures("clean")


@pytest.fixture(scope="module")
def spans() -> InMemorySpanExporter:
    exporter = InMemorySpanExporter()
    provider = trace.get_tracer_provider()
    if not isinstance(provider, TracerProvider):
        provider = TracerProvider()
        trace.set_tracer_provider(provider)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return exporter


async def test_consumer_continues_the_writers_trace_through_the_relay(
    spans: InMemorySpanExporter,
    engine: AsyncEngine,
    sessions: async_sessionmaker[AsyncSession],
    writer: OutboxWriter,
    topic: str,
    bootstrap: str,
) -> None:
    tracer = trace.get_tracer("test")
    event = Event(topic=topic, type=f"{topic}.enabled", aggregate_id="d1", data={}, version=1)
    with tracer.start_as_current_span("PATCH enable") as request_span:
        async with sessions() as session, session.begin():
            await writer.add(session, event)
    trace_id = request_span.get_span_context().trace_id

    await drain_outbox(engine, bootstrap)

    consumer = IdempotentConsumer(
        f"g-{uuid.uuid4().hex[:8]}",
        [topic],
        sessions,
        ConsumerSettings(session_timeout_ms=6000, request_timeout_ms=10000),
    )
    seen: list[int] = []

    @consumer.handler(f"{topic}.*")
    async def apply(ctx: EventContext) -> None:
        seen.append(trace.get_current_span().get_span_context().trace_id)

    task = asyncio.create_task(consumer.run())
    try:
        await wait_until(lambda: _applied(consumer), timeout=30, what="event applied")
    finally:
        consumer.stop()
        await asyncio.wait_for(task, 30)

    assert seen == [trace_id]  # the handler runs inside the continued trace
    finished = {s.name: s for s in spans.get_finished_spans() if s.context.trace_id == trace_id}
    send, process = finished[f"send {topic}"], finished[f"process {topic}"]
    assert send.parent is not None and send.parent.span_id == request_span.get_span_context().span_id
    assert process.parent is not None and process.parent.span_id == send.context.span_id
    assert [link.context.span_id for link in process.links] == [send.context.span_id]
    assert send.kind is SpanKind.PRODUCER and process.kind is SpanKind.CONSUMER
    assert (
        dict(send.attributes or {}).items()
        >= {
            M.MESSAGING_SYSTEM: "kafka",
            M.MESSAGING_OPERATION_TYPE: "send",
            M.MESSAGING_OPERATION_NAME: "send",
            M.MESSAGING_DESTINATION_NAME: topic,  # the logical name, on both sides, whatever the prefix
            M.MESSAGING_MESSAGE_ID: str(event.id),
            M.MESSAGING_KAFKA_MESSAGE_KEY: "d1",
        }.items()
    )
    assert (send.attributes or {})[M.MESSAGING_DESTINATION_PARTITION_ID].isdigit()
    assert (
        dict(process.attributes or {}).items()
        >= {
            M.MESSAGING_SYSTEM: "kafka",
            M.MESSAGING_OPERATION_TYPE: "process",
            M.MESSAGING_OPERATION_NAME: "process",
            M.MESSAGING_DESTINATION_NAME: topic,
            M.MESSAGING_DESTINATION_PARTITION_ID: send.attributes[M.MESSAGING_DESTINATION_PARTITION_ID],  # type: ignore[index]
            M.MESSAGING_CONSUMER_GROUP_NAME: consumer.name,
            M.MESSAGING_MESSAGE_ID: str(event.id),
            "outbox.outcome": "applied",
        }.items()
    )
    assert M.MESSAGING_KAFKA_OFFSET in (process.attributes or {})


def test_the_librarys_attribute_names_are_the_semantic_conventions() -> None:
    """outbox.telemetry.tracing spells the names itself (it depends on the API only); they must match the package."""
    from outbox.telemetry import tracing

    for name in (
        "MESSAGING_SYSTEM",
        "MESSAGING_OPERATION_TYPE",
        "MESSAGING_OPERATION_NAME",
        "MESSAGING_DESTINATION_NAME",
        "MESSAGING_DESTINATION_PARTITION_ID",
        "MESSAGING_MESSAGE_ID",
        "MESSAGING_CONSUMER_GROUP_NAME",
        "MESSAGING_BATCH_MESSAGE_COUNT",
        "MESSAGING_KAFKA_MESSAGE_KEY",
        "MESSAGING_KAFKA_OFFSET",
    ):
        assert getattr(tracing, name) == getattr(M, name), name
    assert M.MessagingSystemValues.KAFKA.value == tracing.KAFKA


async def _applied(consumer: IdempotentConsumer) -> bool:
    return consumer.stats.applied >= 1


def test_json_logs_carry_the_current_trace_and_span_ids(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], spans: InMemorySpanExporter
) -> None:
    import json
    import logging

    from outbox.telemetry.logs import configure_logging

    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    monkeypatch.setenv("LOG_FORMAT", "json")
    try:
        configure_logging("log-test")
        with trace.get_tracer("test").start_as_current_span("request") as span:
            logging.getLogger("outbox.test").warning("inside %s", "a span")
        logging.getLogger("outbox.test").warning("outside")
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])
    inside, outside = (json.loads(line) for line in capsys.readouterr().err.strip().splitlines()[-2:])
    ctx = span.get_span_context()
    assert (
        inside["message"] == "inside a span"
        and inside["level"] == "WARNING"
        and inside["service"] == "log-test"
    )
    assert (inside["trace_id"], inside["span_id"]) == (f"{ctx.trace_id:032x}", f"{ctx.span_id:016x}")
    assert inside["logger"] == "outbox.test" and outside["trace_id"] == ""
