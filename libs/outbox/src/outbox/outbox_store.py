"""The outbox table's statements, shared by the relay and the operator tools: one place, one SQL style.

Identity order is insert order, not commit order: a transaction that inserted row 10 may commit after the
one that inserted row 11. The relay therefore never remembers a "last id seen": it claims whatever is
pending, oldest id first, and orders per aggregate, which holds whatever order commits land in.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, NamedTuple, cast

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

# One statement claims a batch and says, for each claimed row, whether a pending row of its aggregate lies
# between it and its previous claimed row (or before it, for the first): a gap. A row after a gap must wait:
# its predecessor is held by another relay. Rows behind a predecessor that failed are not claimed at all
# until it is published (`blocked`, read through a partial index holding only failed rows), in backoff or
# not: otherwise an aggregate with a batch's worth of rows behind one failing row fills every claim and
# starves all other aggregates, and once the backoff is over the failed row, ready later than its
# successors, never makes it into a claim they fill.
# With `block_on_dead`, a dead-lettered row blocks its aggregate the same way until it is redriven.
# Rows are taken in ready order (`available_at`, then id: a replayed row queues behind what was ready
# before it) and published in id order per aggregate (the gap check holds whatever the claim order).
# The header values are rendered by PostgreSQL (another core) rather than per row in Python.
# `in_flight`: rows this relay claimed in a batch it has not committed yet (claim-ahead, `relay_pipeline`);
# they are locked, hence skipped, and not a gap: the relay itself holds their successors back unless they
# were acknowledged. NOT IN over a subquery is hashed once per claim (`<> ALL(array)` compares each probe
# with every element: +5 ms per 1,000-row claim with 2,000 rows in flight).
# The gap probe comes in two shapes so that no plan can walk the whole table: for an aggregate's first row
# in the claim ("any pending row before it?") the one-sided id range leaves the primary key unattractive and
# the aggregate index serves it; between two claimed rows of one aggregate the range is short. As one
# two-sided range with a lower bound of 0, the planner took the primary key whenever the pending index
# looked expensive (after an ANALYZE with few rows pending and the index full of dead entries), scanning
# the retained history for every probe: measured 150-600 ms claims, p99 ~1 s at 1,000 events/s.
_CLAIM = """
    WITH blocked AS MATERIALIZED (
        SELECT topic, aggregate_id, min(id) AS from_id FROM (
            SELECT topic, aggregate_id, id FROM outbox
            WHERE published_at IS NULL AND dead_at IS NULL AND attempts > 0
            {dead}
        ) b
        GROUP BY topic, aggregate_id
    ), claimed AS (
        SELECT id, event_id, topic, event_type, source, aggregate_id, aggregate_version, prev_version, payload,
               trace_context, occurred_at, attempts
        FROM outbox o
        WHERE published_at IS NULL AND dead_at IS NULL AND available_at <= now()
          AND NOT EXISTS (
              SELECT 1 FROM blocked b
              WHERE b.topic = o.topic AND b.aggregate_id = o.aggregate_id AND b.from_id < o.id
          )
        ORDER BY available_at, id
        LIMIT :limit
        FOR UPDATE SKIP LOCKED
    ), sequenced AS (
        SELECT c.*, lag(c.id, 1, 0::bigint) OVER (PARTITION BY c.topic, c.aggregate_id ORDER BY c.id) AS prev_id
        FROM claimed c
    )
    SELECT s.id, s.event_id::text AS event_id, s.topic, s.event_type, s.source, s.aggregate_id, s.aggregate_version,
           s.prev_version, s.payload::text AS payload_json, s.trace_context->>'traceparent' AS traceparent,
           s.trace_context->>'tracestate' AS tracestate, to_json(s.occurred_at)#>>'{{}}' AS occurred_at, s.attempts,
           CASE WHEN s.prev_id = 0 THEN EXISTS (
               SELECT 1 FROM outbox p
               WHERE p.aggregate_id = s.aggregate_id AND p.topic = s.topic
                 AND p.published_at IS NULL AND p.dead_at IS NULL
                 AND p.id < s.id AND p.id NOT IN (SELECT unnest(CAST(:in_flight AS bigint[])))
           ) ELSE EXISTS (
               SELECT 1 FROM outbox p
               WHERE p.aggregate_id = s.aggregate_id AND p.topic = s.topic
                 AND p.published_at IS NULL AND p.dead_at IS NULL
                 AND p.id < s.id AND p.id > s.prev_id AND p.id NOT IN (SELECT unnest(CAST(:in_flight AS bigint[])))
           ) END AS gap
    FROM sequenced s
    ORDER BY s.id
    """


class ClaimedRow(NamedTuple):
    """One claimed row, its fields in the claim's column order. A plain tuple rather than SQLAlchemy's Row:
    the relay reads a dozen fields of every row, and a Row's attribute access costs ~0.2 µs each (a
    tuple's ~15 ns), a tenth of the relay's per-row budget during a backlog."""

    id: int
    event_id: str
    topic: str
    event_type: str
    source: str
    aggregate_id: str
    aggregate_version: int | None
    prev_version: int | None
    payload_json: str
    traceparent: str | None
    tracestate: str | None
    occurred_at: str
    attempts: int
    gap: bool


_CLAIM_PASSING_DEAD = text(_CLAIM.format(dead=""))
_CLAIM_BLOCKING_DEAD = text(
    _CLAIM.format(
        dead="UNION ALL SELECT topic, aggregate_id, id FROM outbox WHERE dead_at IS NOT NULL AND published_at IS NULL"
    )
)

_MARK_PUBLISHED = text("UPDATE outbox SET published_at = now(), last_error = NULL WHERE id = ANY(:ids)")

_MARK_FAILED = text(
    """
    UPDATE outbox
    SET attempts = attempts + 1,
        last_error = :error,
        available_at = now() + make_interval(secs => :backoff_s),
        dead_at = CASE WHEN attempts + 1 >= :max_attempts THEN now() END
    WHERE id = :id
    RETURNING dead_at IS NOT NULL AS dead
    """
)

# SKIP LOCKED: several relays run the same cleanup; each takes rows no other one is deleting.
_DELETE_PUBLISHED = text(
    """
    DELETE FROM outbox WHERE id IN (
        SELECT id FROM outbox
        WHERE published_at IS NOT NULL AND published_at < now() - make_interval(secs => :retention_s)
        ORDER BY published_at
        LIMIT :limit
        FOR UPDATE SKIP LOCKED
    )
    """
)

_DELETE_DEAD = text(
    """
    DELETE FROM outbox WHERE id IN (
        SELECT id FROM outbox
        WHERE dead_at IS NOT NULL AND dead_at < now() - make_interval(secs => :retention_s)
        ORDER BY id
        LIMIT :limit
        FOR UPDATE SKIP LOCKED
    )
    """
)


@dataclass(frozen=True, slots=True)
class Retention:
    published: timedelta
    dead: timedelta
    batch: int


class OutboxStore:
    """Claim, mark and prune outbox rows. Claims and marks run in the caller's transaction."""

    @staticmethod
    async def claim(
        conn: AsyncConnection, limit: int, *, block_on_dead: bool = False, in_flight: Sequence[int] = ()
    ) -> list[ClaimedRow]:
        """Up to `limit` publishable rows, in ready order, with their gap flags (rows `in_flight` in this
        relay's uncommitted batches do not count as gaps)."""
        statement = _CLAIM_BLOCKING_DEAD if block_on_dead else _CLAIM_PASSING_DEAD
        make = ClaimedRow._make
        result = await conn.execute(statement, {"limit": limit, "in_flight": list(in_flight)})
        return [make(row) for row in result]

    @staticmethod
    async def mark_published(conn: AsyncConnection, ids: list[int]) -> None:
        if ids:
            await conn.execute(_MARK_PUBLISHED, {"ids": ids})

    @staticmethod
    async def mark_failed(
        conn: AsyncConnection, row_id: int, error: str, *, backoff_s: float, max_attempts: int
    ) -> bool:
        """Count a record-level failure against the row; True when that dead-lettered it."""
        result = await conn.execute(
            _MARK_FAILED,
            {"id": row_id, "error": error[:2000], "backoff_s": backoff_s, "max_attempts": max_attempts},
        )
        return bool(result.scalar_one())

    @staticmethod
    async def prune(engine: AsyncEngine, retention: Retention, *, stop: Any = None) -> int:
        """Delete published rows past their retention, then dead rows past theirs, in bounded batches."""
        total = 0
        for statement, window in ((_DELETE_PUBLISHED, retention.published), (_DELETE_DEAD, retention.dead)):
            while True:
                async with engine.begin() as conn:
                    result = await conn.execute(
                        statement, {"retention_s": window.total_seconds(), "limit": retention.batch}
                    )
                deleted = result.rowcount or 0
                total += deleted
                if deleted < retention.batch or (stop is not None and stop()):
                    break
        return total


# -- what operators read and do ---------------------------------------------------------------------------
# Every figure comes from the pending and dead partial indexes (or the planner's row estimate): none scans
# the retained history, which is most of the table.
_BACKLOG = text(
    """
    WITH pending AS (
        SELECT id, topic, aggregate_id, available_at, attempts FROM outbox
        WHERE published_at IS NULL AND dead_at IS NULL
    ), held AS (
        SELECT topic, aggregate_id, min(id) AS from_id, bool_or(dead) AS dead FROM (
            SELECT topic, aggregate_id, id, false AS dead FROM pending WHERE attempts > 0
            UNION ALL
            SELECT topic, aggregate_id, id, true FROM outbox WHERE dead_at IS NOT NULL AND published_at IS NULL
        ) h GROUP BY topic, aggregate_id
    )
    SELECT
        count(*) FILTER (WHERE p.available_at > now()) AS backoff,
        count(*) FILTER (WHERE p.available_at <= now() AND h.from_id < p.id AND NOT h.dead) AS behind_backoff,
        count(*) FILTER (WHERE p.available_at <= now() AND h.from_id < p.id AND h.dead) AS behind_dead,
        count(*) FILTER (WHERE p.available_at <= now()) AS due,
        min(p.available_at) FILTER (WHERE p.available_at <= now()) AS oldest_due,
        (SELECT count(*) FROM outbox WHERE dead_at IS NOT NULL) AS dead,
        (SELECT max(published_at) FROM outbox WHERE published_at IS NOT NULL) AS last_published_at,
        (SELECT greatest(reltuples, 0)::bigint FROM pg_class WHERE oid = 'outbox'::regclass) AS estimated_rows,
        now() AS now
    FROM pending p LEFT JOIN held h ON h.topic = p.topic AND h.aggregate_id = p.aggregate_id
    """
)

_DEAD_SAMPLE = text(
    "SELECT id, event_type, aggregate_id, aggregate_version, attempts, last_error, dead_at FROM outbox "
    "WHERE dead_at IS NOT NULL ORDER BY id LIMIT :limit"
)

# Optional filters as `(:x IS NULL OR column = :x)`: one statement whatever the operator chose.
_SELECTION = """
    published_at IS NOT NULL
    AND (CAST(:topic AS text) IS NULL OR topic = :topic)
    AND (CAST(:event_type AS text) IS NULL OR event_type = :event_type)
    AND (CAST(:aggregate_id AS text) IS NULL OR aggregate_id = :aggregate_id)
    AND (CAST(:since AS timestamptz) IS NULL OR occurred_at >= :since)
    AND (CAST(:until AS timestamptz) IS NULL OR occurred_at < :until)
"""
_COUNT_REPLAYABLE = text(f"SELECT count(*) FROM outbox WHERE {_SELECTION}")
# One bounded chunk per transaction, in id order: a long replay never holds a million row locks, and rows
# written meanwhile queue between its chunks (claims go in ready order).
_REPLAY_CHUNK = text(
    f"""
    UPDATE outbox SET published_at = NULL, attempts = 0, last_error = NULL, available_at = now()
    WHERE id IN (
        SELECT id FROM outbox WHERE {_SELECTION} AND id > :after ORDER BY id LIMIT :limit FOR UPDATE
    )
    RETURNING id
    """
)

# Operator actions wake the relays on the channel they listen on, as a writer's commit does.
_WAKE = text("SELECT pg_notify(:c, '')")

_DEAD_ROWS = text(
    """
    SELECT d.id, d.topic, d.aggregate_id, d.aggregate_version,
           array_remove(array_agg(s.id ORDER BY s.id), NULL) AS published_after
    FROM outbox d
    LEFT JOIN outbox s ON s.topic = d.topic AND s.aggregate_id = d.aggregate_id AND s.id > d.id
                      AND s.published_at IS NOT NULL
    WHERE d.dead_at IS NOT NULL AND (CAST(:ids AS bigint[]) IS NULL OR d.id = ANY(:ids))
    GROUP BY d.id ORDER BY d.id
    """
)
_REDRIVE = text(
    "UPDATE outbox SET dead_at = NULL, attempts = 0, last_error = NULL, available_at = now() "
    "WHERE id = ANY(:ids) AND dead_at IS NOT NULL"
)
# Order-preserving redrive: the successors already published go out again after the redriven row.
_RESEND = text(
    "UPDATE outbox SET published_at = NULL, attempts = 0, last_error = NULL, available_at = now() "
    "WHERE id = ANY(:ids) AND published_at IS NOT NULL"
)


@dataclass(frozen=True, slots=True)
class Backlog:
    """An outbox's pending rows by state. `due`: ready by time, of which `behind_backoff`/`behind_dead`
    wait for a predecessor (one that failed, in backoff or due for its retry; or dead-lettered);
    `backoff`: waiting out a retry delay; `oldest_due_age_s`: how long the longest-waiting due row has been ready (from `available_at`, so a
    replayed row counts from its replay, not from when it first happened)."""

    due: int
    behind_backoff: int
    behind_dead: int
    backoff: int
    dead: int
    oldest_due_age_s: float
    estimated_rows: int
    last_published_at: Any

    @property
    def pending(self) -> int:
        return self.due + self.backoff

    @property
    def ready(self) -> int:
        return self.due - self.behind_backoff - self.behind_dead


@dataclass(frozen=True, slots=True)
class Selection:
    topic: str | None = None
    event_type: str | None = None
    aggregate_id: str | None = None
    since: Any = None
    until: Any = None

    def params(self) -> dict[str, Any]:
        return {
            "topic": self.topic,
            "event_type": self.event_type,
            "aggregate_id": self.aggregate_id,
            "since": self.since,
            "until": self.until,
        }


@dataclass(frozen=True, slots=True)
class DeadRow:
    id: int
    topic: str
    aggregate_id: str
    aggregate_version: int | None
    published_after: list[int]  # ids of this aggregate's rows published after it was dead-lettered


class OutboxAdmin:
    """The operators' statements: backlog, dead rows, replay, redrive. Each in its own transaction."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    async def backlog(self) -> Backlog:
        async with self.engine.connect() as conn:
            row = (await conn.execute(_BACKLOG)).one()
        age = (row.now - row.oldest_due).total_seconds() if row.oldest_due is not None else 0.0
        return Backlog(
            due=row.due,
            behind_backoff=row.behind_backoff,
            behind_dead=row.behind_dead,
            backoff=row.backoff,
            dead=row.dead,
            oldest_due_age_s=max(age, 0.0),
            estimated_rows=row.estimated_rows,
            last_published_at=row.last_published_at,
        )

    async def dead_sample(self, limit: int = 20) -> list[dict[str, Any]]:
        async with self.engine.connect() as conn:
            return [dict(r._mapping) for r in await conn.execute(_DEAD_SAMPLE, {"limit": limit})]

    async def count_replayable(self, selection: Selection) -> int:
        async with self.engine.connect() as conn:
            return int((await conn.execute(_COUNT_REPLAYABLE, selection.params())).scalar_one())

    async def replay(self, selection: Selection, *, chunk: int, wake: str | None) -> int:
        total, after = 0, 0
        while True:
            async with self.engine.begin() as conn:
                ids = list(
                    (
                        await conn.execute(
                            _REPLAY_CHUNK, {**selection.params(), "after": after, "limit": chunk}
                        )
                    ).scalars()
                )
                if wake:  # every chunk: the relays start on it while the next is marked
                    await conn.execute(_WAKE, {"c": wake})
            total += len(ids)
            if len(ids) < chunk:
                return total
            after = max(ids)

    async def dead_rows(self, ids: list[int] | None) -> list[DeadRow]:
        async with self.engine.connect() as conn:
            rows = await conn.execute(_DEAD_ROWS, {"ids": ids})
            return [
                DeadRow(r.id, r.topic, r.aggregate_id, r.aggregate_version, list(r.published_after))
                for r in rows
            ]

    async def redrive(self, ids: list[int], resend: list[int], *, wake: str | None) -> int:
        async with self.engine.begin() as conn:
            result = await conn.execute(_REDRIVE, {"ids": ids})
            if resend:
                await conn.execute(_RESEND, {"ids": resend})
            if wake:
                await conn.execute(_WAKE, {"c": wake})
            return int(cast(Any, result).rowcount or 0)
