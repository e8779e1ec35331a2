"""The writer: records events in the outbox inside the caller's transaction.

The caller owns the transaction. Nothing is published here: if the caller rolls back, the events vanish
with the state change; if it commits, both are durable together. That is the whole point.
"""

from __future__ import annotations

from sqlalchemy import insert, text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from outbox.envelope import Event
from outbox.schema import outbox_table
from outbox.tracing import capture_context

DEFAULT_NOTIFY_CHANNEL = "outbox_pending"


class OutboxWriter:
    """Adds events to the outbox in the session's current transaction.

    `source` is the CloudEvents source (the service name). With `notify_channel` set, the transaction also
    sends a NOTIFY so a listening relay wakes at once; PostgreSQL delivers it only on commit.
    """

    def __init__(self, source: str, *, notify_channel: str | None = DEFAULT_NOTIFY_CHANNEL) -> None:
        self.source = source
        self.notify_channel = notify_channel

    async def add(self, session: AsyncSession | AsyncConnection, *events: Event) -> None:
        """Insert `events` in the transaction open on `session` (an ORM session or a Core connection)."""
        if not events:
            return
        trace_context = capture_context()
        rows = []
        for event in events:
            data = dict(event.data)
            if event.version is not None:
                data.setdefault("version", event.version)
            rows.append(
                {
                    "event_id": event.id,
                    "topic": event.topic,
                    "event_type": event.type,
                    "source": self.source,
                    "aggregate_id": event.aggregate_id,
                    "aggregate_version": event.version,
                    "payload": data,
                    "trace_context": trace_context,
                    "occurred_at": event.time,
                }
            )
        await session.execute(insert(outbox_table), rows)
        if self.notify_channel:
            await session.execute(text("SELECT pg_notify(:channel, '')"), {"channel": self.notify_channel})
