"""kafka-txoutbox: transactional outbox for SQLAlchemy 2 + PostgreSQL, relayed to Kafka, consumed idempotently.

Public API:
    Event, OutboxWriter                   record events in the caller's transaction
    Relay, RelaySettings                  publish outbox rows to Kafka in per-aggregate order
    IdempotentConsumer, ConsumerSettings, EventContext, ReceivedEvent
                                          apply each event once in effect (inbox + effect in one transaction)
    Reject, Outcome                       a handler's "never retry this"; what became of a delivered event
    metadata, create_tables               the library's tables, for each service's Alembic migrations
    setup_tracing                         OTEL_* configured tracing for a process
"""

from outbox.consumer import BatchContext, ConsumerSettings, EventContext, IdempotentConsumer
from outbox.envelope import Event, EventTooLarge, MalformedMessage, ReceivedEvent
from outbox.handlers import HandlerCommitted, Outcome, Reject
from outbox.relay import Relay, RelaySettings
from outbox.schema import consumer_versions_table, create_tables, inbox_table, metadata, outbox_table
from outbox.tracing import setup_tracing
from outbox.writer import OutboxWriter

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
