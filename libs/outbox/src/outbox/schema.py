"""Tables the library owns. Each service includes `metadata` in its own Alembic migrations.

`outbox`   events waiting for (or retained after) publication; written in the caller's transaction.
`outbox_heads`  each aggregate's last version: the writer's per-aggregate lock and previous version; pruned
                once the aggregate is quiet (see ARCHITECTURE.md, retention).
`inbox`    one row per (consumer, event id) applied: the idempotency record of the consumer.
`consumer_versions`  highest aggregate version a consumer applied: the stale-event guard.
`inbox_parked`  events a gap-aware consumer received before the version they follow; applied once it is.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Column,
    Connection,
    Index,
    Integer,
    MetaData,
    PrimaryKeyConstraint,
    Table,
    Text,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB, TIMESTAMP, UUID

metadata = MetaData()

_PENDING = text("published_at IS NULL AND dead_at IS NULL")

outbox_table = Table(
    "outbox",
    metadata,
    # Identity order is insert order, not commit order: the relay never remembers a "last id seen".
    Column("id", BigInteger, primary_key=True, autoincrement=True),
    Column("event_id", UUID(as_uuid=True), nullable=False),
    Column("topic", Text, nullable=False),
    Column("event_type", Text, nullable=False),
    Column("source", Text, nullable=False),
    Column("aggregate_id", Text, nullable=False),
    Column("aggregate_version", BigInteger, nullable=True),
    # The aggregate's version before this event (the writer reads it under its per-aggregate lock).
    Column("prev_version", BigInteger, nullable=True),
    Column("payload", JSONB, nullable=False),
    Column("trace_context", JSONB, nullable=False, server_default=text("'{}'::jsonb")),
    Column("occurred_at", TIMESTAMP(timezone=True), nullable=False, server_default=func.now()),
    Column("available_at", TIMESTAMP(timezone=True), nullable=False, server_default=func.now()),
    Column("attempts", Integer, nullable=False, server_default=text("0")),
    Column("last_error", Text, nullable=True),
    Column("published_at", TIMESTAMP(timezone=True), nullable=True),
    Column("dead_at", TIMESTAMP(timezone=True), nullable=True),
    Index("ix_outbox_ready", "available_at", "id", postgresql_where=_PENDING),
    Index("ix_outbox_pending_aggregate", "topic", "aggregate_id", "id", postgresql_where=_PENDING),
    Index("ix_outbox_published_at", "published_at", postgresql_where=text("published_at IS NOT NULL")),
    Index("ix_outbox_dead", "id", postgresql_where=text("dead_at IS NOT NULL")),
    Index(
        "ix_outbox_backoff",
        "topic",
        "aggregate_id",
        "id",
        postgresql_where=text("published_at IS NULL AND dead_at IS NULL AND attempts > 0"),
    ),
)

inbox_table = Table(
    "inbox",
    metadata,
    Column("consumer", Text, nullable=False),
    Column("event_id", UUID(as_uuid=True), nullable=False),
    Column("event_type", Text, nullable=False),
    Column("topic", Text, nullable=False),
    Column("partition", Integer, nullable=False),
    Column("offset", BigInteger, nullable=False),
    Column("aggregate_id", Text, nullable=True),
    Column("aggregate_version", BigInteger, nullable=True),
    Column("outcome", Text, nullable=False),  # applied | stale
    Column("processed_at", TIMESTAMP(timezone=True), nullable=False, server_default=func.now()),
    PrimaryKeyConstraint("consumer", "event_id", name="pk_inbox"),
    Index("ix_inbox_processed_at", "processed_at"),
)

consumer_versions_table = Table(
    "consumer_versions",
    metadata,
    Column("consumer", Text, nullable=False),
    Column("topic", Text, nullable=False),
    Column("aggregate_id", Text, nullable=False),
    Column("version", BigInteger, nullable=False),
    # When the guard last moved the version (the version retention prunes quiet rows).
    Column("advanced_at", TIMESTAMP(timezone=True), nullable=False, server_default=func.now()),
    PrimaryKeyConstraint("consumer", "topic", "aggregate_id", name="pk_consumer_versions"),
)


outbox_heads_table = Table(
    "outbox_heads",
    metadata,
    # One row per aggregate: its last version and the one before. The writer upserts it in the event's
    # transaction, which locks the aggregate until commit.
    Column("topic", Text, nullable=False),
    Column("aggregate_id", Text, nullable=False),
    Column("version", BigInteger, nullable=True),
    Column("previous", BigInteger, nullable=True),
    # The last write (the heads retention prunes quiet heads with nothing pending or dead).
    Column("written_at", TIMESTAMP(timezone=True), nullable=False, server_default=func.now()),
    # Published rows of the aggregate up to this id were pruned while an earlier row was unpublished: a
    # redrive of that row knows its successors went out (migrations.V4).
    Column("pruned_published_id", BigInteger, nullable=True),
    PrimaryKeyConstraint("topic", "aggregate_id", name="pk_outbox_heads"),
)

inbox_parked_table = Table(
    "inbox_parked",
    metadata,
    Column("consumer", Text, nullable=False),
    Column("event_id", UUID(as_uuid=True), nullable=False),
    Column("topic", Text, nullable=False),
    Column("aggregate_id", Text, nullable=False),
    Column("version", BigInteger, nullable=False),
    Column("prev_version", BigInteger, nullable=False),
    Column("record", JSONB, nullable=False),  # the Kafka record (headers, key, value), to apply it later
    Column("parked_at", TIMESTAMP(timezone=True), nullable=False, server_default=func.now()),
    PrimaryKeyConstraint("consumer", "event_id", name="pk_inbox_parked"),
    Index("ix_inbox_parked_aggregate", "consumer", "topic", "aggregate_id", "version"),
)


def create_tables(connection: Connection) -> None:
    """Create the library's tables at the latest schema step (tests, scratch databases).

    Alembic migrations call the versioned step instead: `outbox.migrations.v1(op.get_bind())`.
    """
    from outbox.migrations import upgrade_all

    upgrade_all(connection)
