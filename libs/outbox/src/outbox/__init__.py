"""kafka-txoutbox: transactional outbox for SQLAlchemy 2 + PostgreSQL, relayed to Kafka, consumed idempotently.

Public API (`from outbox import …`):
    Event, OutboxWriter                   record events in the caller's transaction
    EventTooLarge                         an event over the broker's message size, refused at `add`
    Relay, RelaySettings                  publish outbox rows to Kafka in per-aggregate order
    IdempotentConsumer, ConsumerSettings  apply each event once in effect (inbox + effect in one transaction)
    EventContext, BatchContext            what a handler (one event) or a batch handler (a run of events) gets
    ReceivedEvent, MalformedMessage       a delivered event; a record that is not one (dead-lettered)
    Reject, HandlerCommitted, Outcome     a handler's "never retry this"; a handler that tried to commit;
                                          what became of a delivered event
    metadata, create_tables               the library's tables, for each service's Alembic migrations
    outbox_table, inbox_table, consumer_versions_table
                                          the tables themselves, for tests and tools
    setup_tracing                         OTEL_* configured tracing for a process

Also public: `outbox.kafka` (bootstrap, topic prefix, topic creation), `outbox.telemetry` (tracing, metrics,
logs), `outbox.migrations` (the schema steps) and `outbox.testing`. The layout by role (relay/, consumer/,
ops/, telemetry/, kafka/) is described in ARCHITECTURE.md.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

# The public names load on first use (PEP 562): `outbox health`, a probe run every few seconds, must not pay
# for importing SQLAlchemy, aiokafka and OpenTelemetry (~2 s of CPU on a loaded host).
_EXPORTS = {
    "BatchContext": "outbox.consumer.runner",
    "ConsumerSettings": "outbox.consumer.runner",
    "EventContext": "outbox.consumer.runner",
    "IdempotentConsumer": "outbox.consumer.runner",
    "Event": "outbox.envelope",
    "EventTooLarge": "outbox.envelope",
    "MalformedMessage": "outbox.envelope",
    "ReceivedEvent": "outbox.envelope",
    "HandlerCommitted": "outbox.consumer.handlers",
    "Outcome": "outbox.consumer.handlers",
    "Reject": "outbox.consumer.handlers",
    "Relay": "outbox.relay.runner",
    "RelaySettings": "outbox.relay.runner",
    "consumer_versions_table": "outbox.schema",
    "create_tables": "outbox.schema",
    "inbox_table": "outbox.schema",
    "metadata": "outbox.schema",
    "outbox_table": "outbox.schema",
    "setup_tracing": "outbox.telemetry.tracing",
    "OutboxWriter": "outbox.writer",
}

if TYPE_CHECKING:
    from outbox.consumer.handlers import HandlerCommitted, Outcome, Reject
    from outbox.consumer.runner import BatchContext, ConsumerSettings, EventContext, IdempotentConsumer
    from outbox.envelope import Event, EventTooLarge, MalformedMessage, ReceivedEvent
    from outbox.relay.runner import Relay, RelaySettings
    from outbox.schema import consumer_versions_table, create_tables, inbox_table, metadata, outbox_table
    from outbox.telemetry.tracing import setup_tracing
    from outbox.writer import OutboxWriter


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'outbox' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


__all__ = [
    "BatchContext",
    "ConsumerSettings",
    "Event",
    "EventContext",
    "EventTooLarge",
    "HandlerCommitted",
    "IdempotentConsumer",
    "MalformedMessage",
    "OutboxWriter",
    "Outcome",
    "ReceivedEvent",
    "Reject",
    "Relay",
    "RelaySettings",
    "consumer_versions_table",
    "create_tables",
    "inbox_table",
    "metadata",
    "outbox_table",
    "setup_tracing",
]
