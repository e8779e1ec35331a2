"""One trace from the writer's span through the relay's publish to the consumer's processing."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from outbox import (
    ConsumerSettings,
    Event,
    EventContext,
    IdempotentConsumer,
    OutboxWriter,
)
from outbox.testing import drain_outbox
from servicekit.testing import wait_until

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
    with tracer.start_as_current_span("PATCH enable") as request_span:
        async with sessions() as session, session.begin():
            await writer.add(
                session, Event(topic=topic, type=f"{topic}.enabled", aggregate_id="d1", data={}, version=1)
            )
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
    publish, process = finished[f"{topic} publish"], finished[f"{topic}.enabled process"]
    assert publish.parent is not None and publish.parent.span_id == request_span.get_span_context().span_id
    assert process.parent is not None and process.parent.span_id == publish.context.span_id
    assert process.attributes is not None and process.attributes["outbox.outcome"] == "applied"


async def _applied(consumer: IdempotentConsumer) -> bool:
    return consumer.stats.applied >= 1
