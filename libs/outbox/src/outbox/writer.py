"""The writer: records events in the outbox inside the caller's transaction.

The caller owns the transaction. Nothing is published here: if the caller rolls back, the events vanish
with the state change; if it commits, both are durable together. That is the whole point.

Order. The relay publishes each aggregate's rows in id order, and an id is taken at INSERT, not at commit:
two transactions writing the same aggregate could commit in the opposite order of their ids, and consumers
would then see an order the database never had. So, by default, `add` first takes a transaction-scoped
advisory lock per (topic, aggregate) (in sorted order, so two writers of the same aggregates cannot
deadlock within one `add`): a second writer of that aggregate waits until the first commits, and ids
follow commit order per aggregate. Under that lock the INSERT also records each event's `prev_version`
(the aggregate's previous version in the outbox), which gap-aware consumers use to tell a stale event
from one whose predecessor has not arrived. `lock_aggregates=False` skips the lock for callers that
already serialise writers per aggregate (console locks the document row with SELECT ... FOR UPDATE).
READ COMMITTED (PostgreSQL's default) is assumed: each statement sees what committed before it began.
"""

from __future__ import annotations

import os
from typing import Any

import orjson
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from outbox.envelope import Event, EventTooLarge
from outbox.tracing import capture_context

DEFAULT_NOTIFY_CHANNEL = "outbox_pending"
# Kafka's default max.message.bytes is 1 MiB for a whole record batch; headers and framing need room too.
DEFAULT_MAX_EVENT_BYTES = 1_000_000

_LOCK = text(
    "SELECT count(pg_advisory_xact_lock(hashtextextended(k, 0))) FROM unnest(CAST(:keys AS text[])) AS k"
)

# One constant statement over arrays (prepared once per connection whatever the number of events). An
# event's previous version is the one before it in this call, else the aggregate's last row in the outbox.
_INSERT = """
WITH r AS (
    SELECT * FROM unnest(
        CAST(:event_id AS uuid[]), CAST(:topic AS text[]), CAST(:event_type AS text[]), CAST(:source AS text[]),
        CAST(:aggregate_id AS text[]), CAST(:aggregate_version AS bigint[]), CAST(:payload AS jsonb[]),
        CAST(:trace_context AS jsonb[]), CAST(:occurred_at AS timestamptz[]), CAST(:standalone AS boolean[])
    ) WITH ORDINALITY AS r(event_id, topic, event_type, source, aggregate_id, aggregate_version, payload,
                           trace_context, occurred_at, standalone, ord)
), inserted AS (
    INSERT INTO outbox (event_id, topic, event_type, source, aggregate_id, aggregate_version, prev_version,
                        payload, trace_context, occurred_at)
    SELECT r.event_id, r.topic, r.event_type, r.source, r.aggregate_id, r.aggregate_version,
           CASE WHEN r.aggregate_version IS NOT NULL AND NOT r.standalone THEN coalesce(
               lag(r.aggregate_version) OVER (PARTITION BY r.topic, r.aggregate_id ORDER BY r.ord),
               (SELECT o.aggregate_version FROM outbox o
                WHERE o.topic = r.topic AND o.aggregate_id = r.aggregate_id AND o.aggregate_version IS NOT NULL
                ORDER BY o.id DESC LIMIT 1)
           ) END,
           r.payload, r.trace_context, r.occurred_at
    FROM r ORDER BY r.ord
    RETURNING 1
)
SELECT count(*) {notify} FROM inserted
"""
_INSERT_QUIET = text(_INSERT.format(notify=""))
# The NOTIFY rides the same statement: one round trip; PostgreSQL delivers it only on commit.
_INSERT_NOTIFY = text(_INSERT.format(notify=", pg_notify(:channel, '')"))


def max_event_bytes_from_env() -> int:
    return int(os.environ.get("OUTBOX_MAX_EVENT_BYTES", str(DEFAULT_MAX_EVENT_BYTES)))


class OutboxWriter:
    """Adds events to the outbox in the session's current transaction.

    `source` is the CloudEvents source (the service name). With `notify_channel` set, the transaction also
    sends a NOTIFY so a listening relay wakes at once; PostgreSQL delivers it only on commit.
    `lock_aggregates` (default on): see the module's docstring.
    """

    def __init__(
        self,
        source: str,
        *,
        notify_channel: str | None = DEFAULT_NOTIFY_CHANNEL,
        max_event_bytes: int | None = None,
        lock_aggregates: bool = True,
    ) -> None:
        self.source = source
        self.notify_channel = notify_channel
        self.max_event_bytes = max_event_bytes if max_event_bytes is not None else max_event_bytes_from_env()
        self.lock_aggregates = lock_aggregates

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
        if self.lock_aggregates:
            keys = sorted({f"{e.topic}\x1f{e.aggregate_id}" for e in events})
            await session.execute(_LOCK, {"keys": keys})
        if self.notify_channel:
            await session.execute(_INSERT_NOTIFY, {**columns, "channel": self.notify_channel})
        else:
            await session.execute(_INSERT_QUIET, columns)
