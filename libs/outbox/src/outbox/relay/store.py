"""The outbox table's statements for the relay: claim, mark, prune, keep the planner's figures fresh. The
operator tools' statements are in `outbox_admin_store`; one SQL style for both.

Identity order is insert order, not commit order: a transaction that inserted row 10 may commit after the
one that inserted row 11. The relay therefore never remembers a "last id seen": it claims whatever is
pending, oldest id first, and orders per aggregate, which holds whatever order commits land in.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple, cast

from sqlalchemy import TextClause, text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from outbox.relay.retention import OutboxRetention, Retention
from outbox.relay.shares import SHARE_OF

__all__ = ["ClaimedRow", "OutboxStore", "Retention"]

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
# A held row whose aggregate has a pending row before it that is ready later (`wait` 2: probed for held
# rows only, inside the gap's CASE so that each probe runs once) is moved behind it by the relay
# (`_MOVE_BEHIND`): otherwise such rows, first in ready order, fill every claim.
# The header values are rendered by PostgreSQL (another core) rather than per row in Python.
# `in_flight`: rows this relay claimed in a batch it has not committed yet (claim-ahead, `relay.pipeline`);
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
               trace_context, occurred_at, attempts, available_at
        FROM outbox o
        WHERE published_at IS NULL AND dead_at IS NULL AND available_at <= now() {shares}
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
           CASE WHEN (CASE WHEN s.prev_id = 0 THEN {first_row_gap} ELSE {later_row_gap} END)
                THEN CASE WHEN {behind_later} THEN 2 ELSE 1 END ELSE 0 END AS wait
    FROM sequenced s
    ORDER BY s.id
    """
# For a held row only: a pending row of its aggregate before it that is ready later than it is.
_LATER_PROBE = """EXISTS (
               SELECT 1 FROM outbox p
               WHERE p.aggregate_id = s.aggregate_id AND p.topic = s.topic
                 AND p.published_at IS NULL AND p.dead_at IS NULL
                 AND p.id < s.id AND p.available_at > s.available_at
           )"""
# A pending row of the claimed row's aggregate before it (and after `lower`), not in this relay's flight.
_GAP_PROBE = """EXISTS (
               SELECT 1 FROM outbox p
               WHERE p.aggregate_id = s.aggregate_id AND p.topic = s.topic
                 AND p.published_at IS NULL AND p.dead_at IS NULL
                 AND p.id < s.id {lower} AND p.id NOT IN (SELECT unnest(CAST(:in_flight AS bigint[])))
           )"""


# A claim's rows held back (gap) behind a pending row of their aggregate that is ready *later* than they
# are (`behind_later`): a redriven or replayed row (`available_at = now()`) whose successors were ready
# before it, or a writer whose transaction began before the previous writer's of the aggregate. Left alone
# they come first in ready order and fill every claim, all held back: a batch's worth of them livelocked the
# relay and every other aggregate waited. They move, with their aggregate's later rows, to the latest ready
# time of the rows before them (ties go by id: behind the row they wait for), so the next claims pass them
# and reach it. Rows another relay holds are skipped (it moves its own), never waited for.
_MOVE_BEHIND = text(
    """
    WITH held AS (
        SELECT * FROM unnest(CAST(:topics AS text[]), CAST(:aggregates AS text[]), CAST(:ids AS bigint[]))
            AS h(topic, aggregate_id, id)
    ), late AS MATERIALIZED (
        SELECT h.topic, h.aggregate_id, h.id, ahead.ready_at
        FROM held h CROSS JOIN LATERAL (
            SELECT max(p.available_at) AS ready_at FROM outbox p
            WHERE p.topic = h.topic AND p.aggregate_id = h.aggregate_id
              AND p.published_at IS NULL AND p.dead_at IS NULL AND p.id < h.id
        ) ahead
    ), moving AS (
        SELECT o.id, l.ready_at FROM late l
        JOIN outbox o ON o.topic = l.topic AND o.aggregate_id = l.aggregate_id AND o.id >= l.id
        WHERE o.published_at IS NULL AND o.dead_at IS NULL AND o.available_at < l.ready_at
        FOR UPDATE OF o SKIP LOCKED
    )
    UPDATE outbox o SET available_at = m.ready_at FROM moving m WHERE o.id = m.id
    """
)


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
    # 0: may go as far as its aggregate's order goes; 1: a pending row of its aggregate before it is
    # outside the claim and this relay's flight (a gap: it waits); 2: that row is also ready later than it.
    wait: int

    @property
    def gap(self) -> bool:
        return self.wait > 0

    @property
    def behind_later(self) -> bool:
        """Held behind a pending row of its aggregate that is ready later than it is (`_MOVE_BEHIND`)."""
        return self.wait == 2


def _claim(dead: str, shares: str = "") -> TextClause:
    return text(
        _CLAIM.format(
            dead=dead,
            shares=shares,
            first_row_gap=_GAP_PROBE.format(lower=""),
            later_row_gap=_GAP_PROBE.format(lower="AND p.id > s.prev_id"),
            behind_later=_LATER_PROBE,
        )
    )


_BLOCKING_DEAD = (
    "UNION ALL SELECT topic, aggregate_id, id FROM outbox WHERE dead_at IS NOT NULL AND published_at IS NULL"
)
# With shares (several relays splitting the aggregates, `shares.py`): only rows of this relay's shares.
_IN_SHARES = "AND " + SHARE_OF.format(column="o.aggregate_id", total=":share_total") + " = ANY(:shares)"
_CLAIMS = {
    (block_on_dead, sharing): _claim(_BLOCKING_DEAD if block_on_dead else "", _IN_SHARES if sharing else "")
    for block_on_dead in (False, True)
    for sharing in (False, True)
}

# Stale: more rows inserted, updated or deleted since the last ANALYZE than half of what it counted (an
# outbox never analyzed counts -1 rows: then 1,000 changes). Counters from the statistics system, no scan.
# And how this role may ANALYZE: as the table's owner, or through the owner's `outbox_analyze()` (schema
# step 5) when it connects as a least-privilege role; PostgreSQL would skip the table with a mere warning.
_STALE_STATISTICS = text(
    """
    SELECT s.n_mod_since_analyze > greatest(1000, c.reltuples * 0.5),
           pg_has_role(c.relowner, 'USAGE'),
           coalesce(has_function_privilege(to_regprocedure('outbox_analyze()'), 'EXECUTE'), false)
    FROM pg_stat_user_tables s JOIN pg_class c ON c.oid = s.relid
    WHERE s.relid = 'outbox'::regclass
    """
)
# SKIP_LOCKED: never queue behind a VACUUM/ANALYZE in progress (nor make autovacuum cancel itself for us).
_ANALYZE = text("ANALYZE (SKIP_LOCKED) outbox")
_ANALYZE_AS_OWNER = text("SELECT outbox_analyze()")

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


class OutboxStore:
    """Claim, mark and prune outbox rows. Claims and marks run in the caller's transaction; the retention's
    statements are in `outbox_retention`."""

    def __init__(self) -> None:
        self.retention = OutboxRetention()

    @staticmethod
    async def claim(
        conn: AsyncConnection,
        limit: int,
        *,
        block_on_dead: bool = False,
        in_flight: Sequence[int] = (),
        shares: tuple[int, Sequence[int]] | None = None,
    ) -> list[ClaimedRow]:
        """Up to `limit` publishable rows, in ready order, with their gap flags (rows `in_flight` in this
        relay's uncommitted batches do not count as gaps); with `shares` = (total, held), only rows of
        aggregates in the held shares."""
        params: dict[str, Any] = {"limit": limit, "in_flight": list(in_flight)}
        if shares is not None:
            params["share_total"], held = shares
            params["shares"] = list(held)
        make = ClaimedRow._make
        result = await conn.execute(_CLAIMS[block_on_dead, shares is not None], params)
        return [make(row) for row in result]

    @staticmethod
    async def move_behind_later_rows(conn: AsyncConnection, claimed: Sequence[ClaimedRow]) -> int:
        """Move a claim's rows held behind a later-ready row of their aggregate (and the aggregate's rows
        after them) behind it; returns how many rows moved. A claim without such rows costs nothing."""
        first: dict[tuple[str, str], int] = {}
        for row in claimed:  # in id order: each aggregate's first such row
            if row.behind_later:
                first.setdefault((row.topic, row.aggregate_id), row.id)
        if not first:
            return 0
        params = {
            "topics": [topic for topic, _ in first],
            "aggregates": [aggregate for _, aggregate in first],
            "ids": list(first.values()),
        }
        return int(cast(Any, await conn.execute(_MOVE_BEHIND, params)).rowcount or 0)

    @staticmethod
    async def statistics_stale(conn: AsyncConnection) -> bool:
        return bool((await conn.execute(_STALE_STATISTICS)).scalar())

    @staticmethod
    async def analyze_if_stale(conn: AsyncConnection) -> str:
        """ANALYZE the outbox when its planner figures are stale: "analyzed" when it did (or tried: with the
        table held by maintenance, SKIP_LOCKED returns at once and the next check tries again), "fresh", or
        "not permitted" (neither the owner nor allowed `outbox_analyze()`)."""
        stale, owner, via_function = (await conn.execute(_STALE_STATISTICS)).one()
        if not stale:
            return "fresh"
        if not (owner or via_function):
            return "not permitted"
        await conn.execute(_ANALYZE if owner else _ANALYZE_AS_OWNER)
        await conn.commit()
        return "analyzed"

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

    async def prune(self, engine: AsyncEngine, retention: Retention, *, stop: Any = None) -> int:
        """Delete published rows past their retention, then dead rows past theirs, in bounded batches; then
        a page of quiet aggregates' heads (`outbox_retention`)."""
        return await self.retention.prune(engine, retention, stop=stop)
