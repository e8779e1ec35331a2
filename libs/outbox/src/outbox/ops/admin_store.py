"""The outbox table's statements for operators: backlog figures by state, dead rows, replay, redrive.
The relay's statements are in `outbox_store`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, cast

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

# Every figure comes from the pending and dead partial indexes (or the planner's row estimate): none scans
# the retained history, which is most of the table. `ahead_ready_at`: the latest ready time of the pending
# rows before each one in its aggregate. A due row ready earlier than that waits for a row that comes after
# it in ready order (a redrive or replay); the relay's claim that reaches it moves it behind (`outbox_store`).
# Only `outbox status` asks for it: the window sorts every pending row (measured 3x the query's time on a
# 50k backlog), too much for each metrics scrape.
_AHEAD_READY_AT = """max(available_at) OVER (
                   PARTITION BY topic, aggregate_id ORDER BY id ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING
               )"""
_BACKLOG = """
    WITH pending AS (
        SELECT id, topic, aggregate_id, available_at, attempts, {ahead_ready_at} AS ahead_ready_at
        FROM outbox
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
        count(*) FILTER (
            WHERE p.available_at <= now() AND p.ahead_ready_at > p.available_at AND NOT coalesce(h.from_id < p.id, false)
        ) AS held_behind_pending,
        count(*) FILTER (WHERE p.available_at <= now()) AS due,
        min(p.available_at) FILTER (WHERE p.available_at <= now()) AS oldest_due,
        (SELECT count(*) FROM outbox WHERE dead_at IS NOT NULL) AS dead,
        (SELECT max(published_at) FROM outbox WHERE published_at IS NOT NULL) AS last_published_at,
        (SELECT greatest(reltuples, 0)::bigint FROM pg_class WHERE oid = 'outbox'::regclass) AS estimated_rows,
        now() AS now
    FROM pending p LEFT JOIN held h ON h.topic = p.topic AND h.aggregate_id = p.aggregate_id
    """
_BACKLOG_WITH_HELD = text(_BACKLOG.format(ahead_ready_at=_AHEAD_READY_AT))
_BACKLOG_WITHOUT_HELD = text(_BACKLOG.format(ahead_ready_at="NULL::timestamptz"))

# Published rows still retained, counted exactly up to a cap (the partial index on published_at, without
# depending on ANALYZE); past it, the planner's estimate scaled to the table's current size, as the
# planner itself does, so a table grown since its last ANALYZE is not under-reported.
_RETAINED = text(
    """
    SELECT (SELECT count(*) FROM (SELECT 1 FROM outbox WHERE published_at IS NOT NULL LIMIT :cap) r) AS counted,
           (SELECT CASE WHEN relpages > 0 AND reltuples > 0
                        THEN reltuples / relpages * (pg_relation_size(oid) / current_setting('block_size')::float)
                        ELSE 0 END::bigint
            FROM pg_class WHERE oid = 'outbox'::regclass) AS estimated_rows
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

# What went out after a dead row, from state that outlives the retention of published rows: the retained
# published successors; the head's `pruned_published_id` (published successors pruned after it, recorded by
# the prune: `outbox_retention`); and, for successors pruned before that marker existed, the head's version
# when no retained row after the dead one carries it (the row that set it is gone: published, then pruned).
# The head of an aggregate with a dead row is never pruned.
_DEAD_ROWS = text(
    """
    SELECT d.id, d.topic, d.aggregate_id, d.aggregate_version,
           ARRAY(
               SELECT s.id FROM outbox s
               WHERE s.topic = d.topic AND s.aggregate_id = d.aggregate_id AND s.id > d.id
                 AND s.published_at IS NOT NULL
               ORDER BY s.id
           ) AS published_after,
           CASE WHEN h.pruned_published_id > d.id THEN h.pruned_published_id END AS pruned_through,
           coalesce(h.version > d.aggregate_version AND NOT EXISTS (
               SELECT 1 FROM outbox r
               WHERE r.topic = d.topic AND r.aggregate_id = d.aggregate_id AND r.id > d.id
                 AND r.aggregate_version >= h.version
           ), false) AS newer_version_pruned
    FROM outbox d
    LEFT JOIN outbox_heads h ON h.topic = d.topic AND h.aggregate_id = d.aggregate_id
    WHERE d.dead_at IS NOT NULL AND (CAST(:ids AS bigint[]) IS NULL OR d.id = ANY(:ids))
    ORDER BY d.id
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
    wait for a predecessor (one that failed, in backoff or due for its retry; or dead-lettered) and
    `held_behind_pending` for a pending one of their aggregate that is ready later than they are (a
    redriven or replayed row: the relay moves them behind it when its claims reach them; None: not
    counted);
    `backoff`: waiting out a retry delay; `oldest_due_age_s`: how long the longest-waiting due row has
    been ready (from `available_at`, so a replayed row counts from its replay, not from when it first
    happened)."""

    due: int
    behind_backoff: int
    behind_dead: int
    held_behind_pending: int | None
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
        return self.due - self.behind_backoff - self.behind_dead - (self.held_behind_pending or 0)


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
    published_after: list[int]  # ids of this aggregate's retained rows published after it
    pruned_through: int | None = None  # published successors up to this id were pruned
    newer_version_pruned: bool = False  # a later version was written, and its row is gone (published, pruned)

    @property
    def late(self) -> bool:
        """Later rows of its aggregate went out: a redrive would reach consumers after them."""
        return bool(self.published_after or self.pruned_through or self.newer_version_pruned)

    @property
    def resendable(self) -> bool:
        """Its newest published successor is retained: re-sending the retained ones after it ends the
        aggregate's log at its latest state again (the pruned ones, older, are superseded by them)."""
        newest = max(self.published_after, default=0)
        return newest > (self.pruned_through or 0) and not self.newer_version_pruned


class OutboxAdmin:
    """The operators' statements: backlog, dead rows, replay, redrive. Each in its own transaction."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    async def backlog(self, *, held: bool = False) -> Backlog:
        """`held`: also count the rows held behind a later-ready row (`held_behind_pending`)."""
        async with self.engine.connect() as conn:
            row = (await conn.execute(_BACKLOG_WITH_HELD if held else _BACKLOG_WITHOUT_HELD)).one()
        age = (row.now - row.oldest_due).total_seconds() if row.oldest_due is not None else 0.0
        return Backlog(
            due=row.due,
            behind_backoff=row.behind_backoff,
            behind_dead=row.behind_dead,
            held_behind_pending=row.held_behind_pending if held else None,
            backoff=row.backoff,
            dead=row.dead,
            oldest_due_age_s=max(age, 0.0),
            estimated_rows=row.estimated_rows,
            last_published_at=row.last_published_at,
        )

    async def retained(self, *, exact_up_to: int, unpublished: int) -> tuple[int, bool]:
        """Published rows retained, and whether the figure is exact: counted up to `exact_up_to`, estimated
        past it (the estimate minus the `unpublished` rows, and never below the cap)."""
        async with self.engine.connect() as conn:
            row = (await conn.execute(_RETAINED, {"cap": exact_up_to})).one()
        if row.counted < exact_up_to:
            return int(row.counted), True
        return max(int(row.estimated_rows) - unpublished, exact_up_to), False

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
                DeadRow(
                    r.id,
                    r.topic,
                    r.aggregate_id,
                    r.aggregate_version,
                    list(r.published_after),
                    r.pruned_through,
                    r.newer_version_pruned,
                )
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
