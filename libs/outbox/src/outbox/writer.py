"""The writer: records events in the outbox inside the caller's transaction.

The caller owns the transaction. Nothing is published here: if the caller rolls back, the events vanish
with the state change; if it commits, both are durable together. That is the whole point.

Order. The relay publishes each aggregate's rows in id order, and an id is taken at INSERT, not at commit:
two transactions writing the same aggregate could commit in the opposite order of their ids, and consumers
would then see an order the database never had. So `add` first upserts the aggregate's row in
`outbox_heads` (in sorted order, so two writers of the same aggregates cannot deadlock within one `add`):
the row lock makes a second writer of that aggregate wait until the first commits, so ids follow commit
order per aggregate, and the upsert hands back the aggregate's previous version (read from the latest
committed row even after waiting), stored as the event's `prev_version`; gap-aware consumers use it to
tell a stale event from one whose predecessor has not arrived. All of it, the outbox INSERT and the NOTIFY
are one statement: one round trip per `add`. The upsert also stamps the head's `written_at`: the relay prunes
heads quiet past `OUTBOX_HEADS_RETENTION_HOURS` with nothing pending or dead, never one a writer holds, and
the next write of such an aggregate names no previous version (unknown, never a wrong one).
"""

from __future__ import annotations

import os
from typing import Any

import orjson
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from outbox.envelope import Event, EventTooLarge
from outbox.telemetry.tracing import capture_context

DEFAULT_NOTIFY_CHANNEL = "outbox_pending"
# Kafka's default max.message.bytes is 1 MiB for a whole record batch; headers and framing need room too.
DEFAULT_MAX_EVENT_BYTES = 1_000_000

# One constant statement over arrays (prepared once per connection whatever the number of events). The
# INSERT reads `heads`, so each aggregate's head row is locked (waiting for an earlier writer's commit)
# before the outbox rows take their ids. An event's previous version is the highest before it in this call,
# else the head's: max() skips the unversioned events in between (lag() would return their NULL, and the
# head's older version would stand in for it).
_INSERT = """
WITH r AS (
    SELECT * FROM unnest(
        CAST(:event_id AS uuid[]), CAST(:topic AS text[]), CAST(:event_type AS text[]), CAST(:source AS text[]),
        CAST(:aggregate_id AS text[]), CAST(:aggregate_version AS bigint[]), CAST(:payload AS jsonb[]),
        CAST(:trace_context AS jsonb[]), CAST(:occurred_at AS timestamptz[]), CAST(:standalone AS boolean[])
    ) WITH ORDINALITY AS r(event_id, topic, event_type, source, aggregate_id, aggregate_version, payload,
                           trace_context, occurred_at, standalone, ord)
), heads AS (
    INSERT INTO outbox_heads AS h (topic, aggregate_id, version)
    SELECT topic, aggregate_id, max(aggregate_version) FROM r GROUP BY topic, aggregate_id
    ORDER BY topic, aggregate_id
    ON CONFLICT (topic, aggregate_id) DO UPDATE
        SET version = coalesce(EXCLUDED.version, h.version), previous = h.version, written_at = now()
    RETURNING h.topic, h.aggregate_id, h.previous
), inserted AS (
    INSERT INTO outbox (event_id, topic, event_type, source, aggregate_id, aggregate_version, prev_version,
                        payload, trace_context, occurred_at)
    SELECT r.event_id, r.topic, r.event_type, r.source, r.aggregate_id, r.aggregate_version,
           CASE WHEN r.aggregate_version IS NOT NULL AND NOT r.standalone THEN coalesce(
               max(r.aggregate_version) OVER (PARTITION BY r.topic, r.aggregate_id ORDER BY r.ord
                                              ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING),
               heads.previous
           ) END,
           r.payload, r.trace_context, r.occurred_at
    FROM r JOIN heads ON heads.topic = r.topic AND heads.aggregate_id = r.aggregate_id
    ORDER BY r.ord
    RETURNING 1
)
SELECT count(*) {notify} FROM inserted
"""
_INSERT_QUIET = text(_INSERT.format(notify=""))
# The NOTIFY rides the same statement; PostgreSQL delivers it only on commit.
_INSERT_NOTIFY = text(_INSERT.format(notify=", pg_notify(:channel, '')"))


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

        Events of one aggregate are published in the order they are added. Raises EventTooLarge, before
        writing anything, when an event's payload exceeds `max_event_bytes`."""
        if not events:
            return
        context = orjson.dumps(capture_context()).decode()
        columns: dict[str, list[Any]] = {
            "event_id": [],
            "topic": [],
            "event_type": [],
            "source": [],
            "aggregate_id": [],
            "aggregate_version": [],
            "payload": [],
            "trace_context": [],
            "occurred_at": [],
            "standalone": [],
        }
        for event in events:
            data = dict(event.data)
            if event.version is not None:
                data.setdefault("version", event.version)
            payload = orjson.dumps(data, default=str)
            if len(payload) > self.max_event_bytes:
                raise EventTooLarge(event, len(payload), self.max_event_bytes)
            columns["event_id"].append(event.id)
            columns["topic"].append(event.topic)
            columns["event_type"].append(event.type)
            columns["source"].append(self.source)
            columns["aggregate_id"].append(event.aggregate_id)
            columns["aggregate_version"].append(event.version)
            columns["payload"].append(payload.decode())
            columns["trace_context"].append(context)
            columns["occurred_at"].append(event.time)
            columns["standalone"].append(event.standalone)
        if self.notify_channel:
            await session.execute(_INSERT_NOTIFY, {**columns, "channel": self.notify_channel})
        else:
            await session.execute(_INSERT_QUIET, columns)
