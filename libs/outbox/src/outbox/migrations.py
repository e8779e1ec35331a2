"""Versioned DDL for the library's tables, for each service's Alembic migrations.

A service's migration calls the step it was written against, e.g. `outbox.migrations.v1(op.get_bind())`,
so a later library release (a `v2` step) never changes what an already-applied migration did. A new step
ships with its own function; the service adds a migration that calls it. `upgrade_all` is for tests.
`schema.metadata` always describes the latest step (a test keeps the two in agreement).
"""

from __future__ import annotations

from sqlalchemy import Connection, text

V1 = (
    """
    CREATE TABLE outbox (
        id BIGSERIAL PRIMARY KEY,
        event_id UUID NOT NULL,
        topic TEXT NOT NULL,
        event_type TEXT NOT NULL,
        source TEXT NOT NULL,
        aggregate_id TEXT NOT NULL,
        aggregate_version BIGINT,
        payload JSONB NOT NULL,
        trace_context JSONB DEFAULT '{}'::jsonb NOT NULL,
        occurred_at TIMESTAMP WITH TIME ZONE DEFAULT now() NOT NULL,
        available_at TIMESTAMP WITH TIME ZONE DEFAULT now() NOT NULL,
        attempts INTEGER DEFAULT 0 NOT NULL,
        last_error TEXT,
        published_at TIMESTAMP WITH TIME ZONE,
        dead_at TIMESTAMP WITH TIME ZONE
    )
    """,
    "CREATE INDEX ix_outbox_pending ON outbox (id) WHERE published_at IS NULL AND dead_at IS NULL",
    "CREATE INDEX ix_outbox_pending_aggregate ON outbox (topic, aggregate_id, id) WHERE published_at IS NULL AND dead_at IS NULL",
    "CREATE INDEX ix_outbox_published_at ON outbox (published_at) WHERE published_at IS NOT NULL",
    "CREATE INDEX ix_outbox_dead ON outbox (id) WHERE dead_at IS NOT NULL",
    # A queue table: every row is updated once and deleted later; vacuum and analyze it often.
    "ALTER TABLE outbox SET (autovacuum_vacuum_scale_factor = 0.02, autovacuum_analyze_scale_factor = 0.02)",
    """
    CREATE TABLE inbox (
        consumer TEXT NOT NULL,
        event_id UUID NOT NULL,
        event_type TEXT NOT NULL,
        topic TEXT NOT NULL,
        partition INTEGER NOT NULL,
        "offset" BIGINT NOT NULL,
        aggregate_id TEXT,
        aggregate_version BIGINT,
        outcome TEXT NOT NULL,
        processed_at TIMESTAMP WITH TIME ZONE DEFAULT now() NOT NULL,
        CONSTRAINT pk_inbox PRIMARY KEY (consumer, event_id)
    )
    """,
    "CREATE INDEX ix_inbox_processed_at ON inbox (processed_at)",
    """
    CREATE TABLE consumer_versions (
        consumer TEXT NOT NULL,
        topic TEXT NOT NULL,
        aggregate_id TEXT NOT NULL,
        version BIGINT NOT NULL,
        CONSTRAINT pk_consumer_versions PRIMARY KEY (consumer, topic, aggregate_id)
    )
    """,
)

V1_DOWN = ("DROP TABLE consumer_versions", "DROP TABLE inbox", "DROP TABLE outbox")

# 2: rows waiting out a backoff after a record-level failure, read by every claim to skip the rows queued
# behind them (tiny: only failed rows are in it).
V2 = (
    "CREATE INDEX ix_outbox_backoff ON outbox (topic, aggregate_id, id) "
    "WHERE published_at IS NULL AND dead_at IS NULL AND attempts > 0",
)

V2_DOWN = ("DROP INDEX ix_outbox_backoff",)

# 3: gap-aware ordering and fair claims.
# - `prev_version`: the aggregate's version before this event, written under the writer's per-aggregate lock
#   (`ce_prevversion` on the wire); a consumer tells "stale" from "missing" with it.
# - claims in ready order (`available_at`, then id): a replayed or redriven row waits its turn behind rows
#   that were ready before it instead of jumping ahead of every newer row (or the reverse).
# - `outbox_heads`: one row per aggregate, its last version; the writer's upsert of it locks the aggregate
#   until commit (so ids follow commit order per aggregate) and returns the previous version.
# - `inbox_parked`: events a consumer received before a version they depend on; released when it arrives.
V3 = (
    "ALTER TABLE outbox ADD COLUMN prev_version BIGINT",
    "DROP INDEX ix_outbox_pending",
    "CREATE INDEX ix_outbox_ready ON outbox (available_at, id) WHERE published_at IS NULL AND dead_at IS NULL",
    """
    CREATE TABLE outbox_heads (
        topic TEXT NOT NULL,
        aggregate_id TEXT NOT NULL,
        version BIGINT,
        previous BIGINT,
        CONSTRAINT pk_outbox_heads PRIMARY KEY (topic, aggregate_id)
    )
    """,
    """
    CREATE TABLE inbox_parked (
        consumer TEXT NOT NULL,
        event_id UUID NOT NULL,
        topic TEXT NOT NULL,
        aggregate_id TEXT NOT NULL,
        version BIGINT NOT NULL,
        prev_version BIGINT NOT NULL,
        record JSONB NOT NULL,
        parked_at TIMESTAMP WITH TIME ZONE DEFAULT now() NOT NULL,
        CONSTRAINT pk_inbox_parked PRIMARY KEY (consumer, event_id)
    )
    """,
    "CREATE INDEX ix_inbox_parked_aggregate ON inbox_parked (consumer, topic, aggregate_id, version)",
)

V3_DOWN = (
    "DROP TABLE inbox_parked",
    "DROP TABLE outbox_heads",
    "DROP INDEX ix_outbox_ready",
    "CREATE INDEX ix_outbox_pending ON outbox (id) WHERE published_at IS NULL AND dead_at IS NULL",
    "ALTER TABLE outbox DROP COLUMN prev_version",
)

# 4: retention of the per-aggregate state (none of it grew bounded before).
# - `outbox_heads.written_at`: the aggregate's last write; a head quiet past the heads retention with nothing
#   pending or dead is pruned (its next event then names no predecessor: unknown, never a wrong one).
# - `outbox_heads.pruned_published_id`: the highest id of the aggregate's published rows that the retention
#   pruned while an earlier row of it was unpublished (dead, or pending again): a redrive of that row still
#   knows its successors went out before it.
# - `consumer_versions.advanced_at`: when the guard last moved the version; rows quiet past the version
#   retention (never below the inbox's) are pruned.
V4 = (
    "ALTER TABLE outbox_heads ADD COLUMN written_at TIMESTAMP WITH TIME ZONE DEFAULT now() NOT NULL",
    "ALTER TABLE outbox_heads ADD COLUMN pruned_published_id BIGINT",
    "ALTER TABLE consumer_versions ADD COLUMN advanced_at TIMESTAMP WITH TIME ZONE DEFAULT now() NOT NULL",
)

V4_DOWN = (
    "ALTER TABLE consumer_versions DROP COLUMN advanced_at",
    "ALTER TABLE outbox_heads DROP COLUMN pruned_published_id",
    "ALTER TABLE outbox_heads DROP COLUMN written_at",
)

# 5: `outbox_analyze()`, for relays that connect as a role that does not own the outbox (least privilege):
# ANALYZE needs ownership (or MAINTAIN, PostgreSQL 17+), and without it PostgreSQL skips the table with a
# warning, so a backlog's claims would run on an empty table's statistics (outbox_store.py). The function
# runs as its owner, the migrating role, and does that one thing; the table's schema is fixed when it is
# created and the search path pinned, so a caller can slip nothing in. Nobody but the owner may call it until
# granted (servicekit.pgroles grants the service's app role).
V5 = (
    """
    DO $$ BEGIN
      EXECUTE format($f$
        CREATE FUNCTION outbox_analyze() RETURNS void LANGUAGE plpgsql SECURITY DEFINER
        SET search_path = pg_catalog, pg_temp
        AS $body$ BEGIN ANALYZE (SKIP_LOCKED) %I.outbox; END $body$ $f$, current_schema());
    END $$
    """,
    "REVOKE ALL ON FUNCTION outbox_analyze() FROM PUBLIC",
)

V5_DOWN = ("DROP FUNCTION outbox_analyze()",)

STEPS = {1: (V1, V1_DOWN), 2: (V2, V2_DOWN), 3: (V3, V3_DOWN), 4: (V4, V4_DOWN), 5: (V5, V5_DOWN)}
LATEST = max(STEPS)


def _run(connection: Connection, statements: tuple[str, ...]) -> None:
    for statement in statements:
        connection.execute(text(statement))


def v1(connection: Connection) -> None:
    """Create outbox, inbox and consumer_versions as of library schema version 1."""
    _run(connection, V1)


def v1_downgrade(connection: Connection) -> None:
    _run(connection, V1_DOWN)


def v2(connection: Connection) -> None:
    """Schema version 2: the index of rows in backoff (the relay's claim skips what waits behind them)."""
    _run(connection, V2)


def v2_downgrade(connection: Connection) -> None:
    _run(connection, V2_DOWN)


def v3(connection: Connection) -> None:
    """Schema version 3: previous versions (gap-aware consumers), ready-order claims, parked events."""
    _run(connection, V3)


def v3_downgrade(connection: Connection) -> None:
    _run(connection, V3_DOWN)


def v4(connection: Connection) -> None:
    """Schema version 4: what the retention of heads, consumer versions and redrive decisions needs."""
    _run(connection, V4)


def v4_downgrade(connection: Connection) -> None:
    _run(connection, V4_DOWN)


def v5(connection: Connection) -> None:
    """Schema version 5: `outbox_analyze()`, the relay's ANALYZE for a role that does not own the outbox."""
    _run(connection, V5)


def v5_downgrade(connection: Connection) -> None:
    _run(connection, V5_DOWN)


def upgrade_all(connection: Connection) -> None:
    for version in sorted(STEPS):
        _run(connection, STEPS[version][0])


def downgrade_all(connection: Connection) -> None:
    for version in sorted(STEPS, reverse=True):
        _run(connection, STEPS[version][1])
