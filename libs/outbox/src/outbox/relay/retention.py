"""The relay's retention: published rows, dead rows and the heads of quiet aggregates, in bounded batches.

Pruning must never change a decision made later from what is left:
- a redrive judges a dead row by whether later rows of its aggregate went out. Published rows go long before
  dead ones (7 days against 30), so when the prune deletes published rows of an aggregate that still has an
  earlier unpublished row (dead, or pending again after a redrive), it records the highest deleted id on the
  aggregate's head (`pruned_published_id`); the redrive reads it there.
- a head (the writer's lock and previous version, and that marker) is pruned only when its aggregate has
  nothing pending or dead and no write for `heads` (`OUTBOX_HEADS_RETENTION_HOURS`), never while a writer
  holds it. The next write of that aggregate creates a new head and names no previous version (unknown, so
  gap-aware consumers accept it; never a wrong one).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, cast

from sqlalchemy import CursorResult, text
from sqlalchemy.ext.asyncio import AsyncEngine


@dataclass(frozen=True, slots=True)
class Retention:
    published: timedelta
    dead: timedelta
    batch: int
    heads: timedelta | None = None  # None: heads are kept


# SKIP LOCKED: several relays run the same cleanup; each takes rows no other one is deleting. The marker is
# an upsert in (topic, aggregate) order, the writers' lock order (a head written before the library had
# heads is created with no version, which is what its writer would have found).
_DELETE_PUBLISHED = text(
    """
    WITH gone AS (
        DELETE FROM outbox WHERE id IN (
            SELECT id FROM outbox
            WHERE published_at IS NOT NULL AND published_at < now() - make_interval(secs => :retention_s)
            ORDER BY published_at
            LIMIT :limit
            FOR UPDATE SKIP LOCKED
        )
        RETURNING topic, aggregate_id, id
    ), pruned AS (
        SELECT topic, aggregate_id, max(id) AS through_id FROM gone GROUP BY topic, aggregate_id
    ), dead AS MATERIALIZED (
        SELECT topic, aggregate_id, min(id) AS first_id FROM outbox
        WHERE dead_at IS NOT NULL AND published_at IS NULL GROUP BY topic, aggregate_id
    ), behind AS (
        SELECT p.topic, p.aggregate_id, p.through_id FROM pruned p
        WHERE EXISTS (
            SELECT 1 FROM dead d
            WHERE d.topic = p.topic AND d.aggregate_id = p.aggregate_id AND d.first_id < p.through_id
        ) OR EXISTS (
            SELECT 1 FROM outbox u
            WHERE u.topic = p.topic AND u.aggregate_id = p.aggregate_id
              AND u.published_at IS NULL AND u.dead_at IS NULL AND u.id < p.through_id
        )
    ), marked AS (
        INSERT INTO outbox_heads AS h (topic, aggregate_id, pruned_published_id)
        SELECT topic, aggregate_id, through_id FROM behind ORDER BY topic, aggregate_id
        ON CONFLICT (topic, aggregate_id) DO UPDATE
            SET pruned_published_id = greatest(h.pruned_published_id, EXCLUDED.pruned_published_id)
    )
    SELECT count(*) FROM gone
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

# Heads are visited a page at a time in key order (the primary key; no index on `written_at`, which every
# write updates and would cost the writers HOT updates), from a cursor that wraps around.
_HEADS_PAGE = text(
    "SELECT topic, aggregate_id, written_at < now() - make_interval(secs => :retention_s) AS quiet "
    "FROM outbox_heads WHERE (topic, aggregate_id) > (:topic, :aggregate) "
    "ORDER BY topic, aggregate_id LIMIT :limit"
)
# Lock first, skipping heads a writer holds; then check, in a statement of its own so its snapshot sees
# every writer that committed before the lock. A writer arriving later waits for this transaction and then
# creates the head anew.
_LOCK_HEADS = text(
    "SELECT topic, aggregate_id FROM outbox_heads "
    "WHERE (topic, aggregate_id) IN (SELECT * FROM unnest(CAST(:t AS text[]), CAST(:a AS text[]))) "
    "AND written_at < now() - make_interval(secs => :retention_s) "
    "ORDER BY topic, aggregate_id FOR UPDATE SKIP LOCKED"
)
_DELETE_HEADS = text(
    """
    DELETE FROM outbox_heads h
    WHERE (h.topic, h.aggregate_id) IN (SELECT * FROM unnest(CAST(:t AS text[]), CAST(:a AS text[])))
      AND NOT EXISTS (
          SELECT 1 FROM outbox o WHERE o.topic = h.topic AND o.aggregate_id = h.aggregate_id
            AND o.published_at IS NULL AND o.dead_at IS NULL
      )
      AND (h.topic, h.aggregate_id) NOT IN (SELECT topic, aggregate_id FROM outbox WHERE dead_at IS NOT NULL)
    """
)


class OutboxRetention:
    """Prunes one outbox; keeps the position of its walk over the heads between calls."""

    def __init__(self) -> None:
        self._heads_after = ("", "")

    async def prune(
        self, engine: AsyncEngine, retention: Retention, *, stop: Callable[[], bool] | None
    ) -> int:
        """Published rows past their retention, then dead rows past theirs, in bounded batches; then one
        page of heads."""
        total = 0
        for statement, window in ((_DELETE_PUBLISHED, retention.published), (_DELETE_DEAD, retention.dead)):
            while True:
                async with engine.begin() as conn:
                    result = await conn.execute(
                        statement, {"retention_s": window.total_seconds(), "limit": retention.batch}
                    )
                deleted = (
                    int(result.scalar_one())
                    if statement is _DELETE_PUBLISHED
                    else cast(CursorResult[Any], result).rowcount or 0
                )
                total += deleted
                if deleted < retention.batch or (stop is not None and stop()):
                    break
        if retention.heads is not None and not (stop is not None and stop()):
            total += await self.prune_heads(engine, retention.heads, retention.batch)
        return total

    async def prune_heads(self, engine: AsyncEngine, retention: timedelta, limit: int) -> int:
        """Visit the next `limit` heads; delete the quiet ones (see the module doc). Returns how many."""
        window = retention.total_seconds()
        topic, aggregate = self._heads_after
        async with engine.begin() as conn:
            page = (
                await conn.execute(
                    _HEADS_PAGE,
                    {"retention_s": window, "topic": topic, "aggregate": aggregate, "limit": limit},
                )
            ).all()
            self._heads_after = (page[-1].topic, page[-1].aggregate_id) if len(page) == limit else ("", "")
            quiet = [(r.topic, r.aggregate_id) for r in page if r.quiet]
            if not quiet:
                return 0
            keys = {"t": [t for t, _ in quiet], "a": [a for _, a in quiet]}
            locked = (await conn.execute(_LOCK_HEADS, {**keys, "retention_s": window})).all()
            if not locked:
                return 0
            result = await conn.execute(
                _DELETE_HEADS, {"t": [r.topic for r in locked], "a": [r.aggregate_id for r in locked]}
            )
            return cast(CursorResult[Any], result).rowcount or 0
