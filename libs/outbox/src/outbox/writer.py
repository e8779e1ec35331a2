"""The writer: records events in the outbox inside the caller's transaction.

The caller owns the transaction. Nothing is published here: if the caller rolls back, the events vanish
with the state change; if it commits, both are durable together. That is the whole point.
"""

from __future__ import annotations

import os

import orjson
from sqlalchemy import insert, text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from outbox.envelope import Event, EventTooLarge
from outbox.schema import outbox_table
from outbox.tracing import capture_context

DEFAULT_NOTIFY_CHANNEL = "outbox_pending"
# Kafka's default max.message.bytes is 1 MiB for a whole record batch; headers and framing need room too.
DEFAULT_MAX_EVENT_BYTES = 1_000_000


def max_event_bytes_from_env() -> int:
    return int(os.environ.get("OUTBOX_MAX_EVENT_BYTES", str(DEFAULT_MAX_EVENT_BYTES)))


class OutboxWriter:
    """Adds events to the outbox in the session's current transaction.

    `source` is the CloudEvents source (the service name). With `notify_channel` set, the transaction also
    sends a NOTIFY so a listening relay wakes at once; PostgreSQL delivers it only on commit.
    """

    def __init__(
        self,
        source: str,
        *,
        notify_channel: str | None = DEFAULT_NOTIFY_CHANNEL,
        max_event_bytes: int | None = None,
    ) -> None:
        self.source = source
        self.notify_channel = notify_channel
        self.max_event_bytes = max_event_bytes if max_event_bytes is not None else max_event_bytes_from_env()

    async def add(self, session: AsyncSession | AsyncConnection, *events: Event) -> None:
        """Insert `events` in the transaction open on `session` (an ORM session or a Core connection).

        Raises EventTooLarge, before writing anything, when an event's payload exceeds `max_event_bytes`."""
        if not events:
            return
        trace_context = capture_context()
        rows = []
        for event in events:
            data = dict(event.data)
            if event.version is not None:
                data.setdefault("version", event.version)
            if (size := len(orjson.dumps(data, default=str))) > self.max_event_bytes:
                raise EventTooLarge(event, size, self.max_event_bytes)
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
