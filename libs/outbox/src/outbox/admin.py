"""Operator actions on an outbox: status, replay of retained events, redrive of dead-lettered rows.

Replay and redrive go through the relay (they make rows pending again) rather than around it, so the
relay's per-aggregate ordering and the consumers' inbox apply to them unchanged. Replayed events keep
their event ids: a consumer that already applied one skips it; a consumer rebuilt from scratch (state and
inbox cleared) applies them all again.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import and_, func, select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from sqlalchemy.sql.elements import ColumnElement

from outbox.schema import outbox_table as t
from outbox.writer import DEFAULT_NOTIFY_CHANNEL


@dataclass(frozen=True, slots=True)
class Selection:
    topic: str | None = None
    event_type: str | None = None
    aggregate_id: str | None = None
    since: datetime | None = None
    until: datetime | None = None

    def where(self) -> ColumnElement[bool]:
        clauses: list[ColumnElement[bool]] = [t.c.published_at.is_not(None)]
        if self.topic:
            clauses.append(t.c.topic == self.topic)
        if self.event_type:
            clauses.append(t.c.event_type == self.event_type)
        if self.aggregate_id:
            clauses.append(t.c.aggregate_id == self.aggregate_id)
        if self.since:
            clauses.append(t.c.occurred_at >= self.since)
        if self.until:
            clauses.append(t.c.occurred_at < self.until)
        return and_(*clauses)


async def status(engine: AsyncEngine) -> dict[str, Any]:
    pending = and_(t.c.published_at.is_(None), t.c.dead_at.is_(None))
    async with engine.connect() as conn:
        row = (
            await conn.execute(
                select(
                    func.count().filter(pending).label("pending"),
                    func.min(t.c.occurred_at).filter(pending).label("oldest_pending"),
                    func.count().filter(t.c.dead_at.is_not(None)).label("dead"),
                    func.count().filter(t.c.published_at.is_not(None)).label("published_retained"),
                    func.max(t.c.published_at).label("last_published_at"),
                    func.now().label("now"),
                )
            )
        ).one()
        dead_rows = (
            await conn.execute(
                select(t.c.id, t.c.event_type, t.c.aggregate_id, t.c.attempts, t.c.last_error, t.c.dead_at)
                .where(t.c.dead_at.is_not(None))
                .order_by(t.c.id)
                .limit(20)
            )
        ).all()
    oldest_age = (row.now - row.oldest_pending).total_seconds() if row.oldest_pending else 0.0
    return {
        "pending": row.pending,
        "oldest_pending_age_s": round(oldest_age, 3),
        "dead_lettered": row.dead,
        "published_retained": row.published_retained,
        "last_published_at": row.last_published_at,
        "dead_letter_sample": [dict(r._mapping) for r in dead_rows],
    }


async def replay(engine: AsyncEngine, selection: Selection, *, dry_run: bool) -> dict[str, Any]:
    """Make matching published rows pending again; the relay republishes them in their original order."""
    async with engine.begin() as conn:
        if dry_run:
            count = (await conn.execute(select(func.count()).where(selection.where()))).scalar_one()
            return {"would_replay": count}
        result = await conn.execute(
            update(t)
            .where(selection.where())
            .values(published_at=None, attempts=0, last_error=None, available_at=func.now())
        )
        await _wake_relays(conn)
        return {"replayed": result.rowcount}


async def redrive(engine: AsyncEngine, *, ids: list[int] | None, dry_run: bool) -> dict[str, Any]:
    """Give dead-lettered rows a fresh set of attempts."""
    where: ColumnElement[bool] = t.c.dead_at.is_not(None)
    if ids:
        where = and_(where, t.c.id.in_(ids))
    async with engine.begin() as conn:
        if dry_run:
            return {"would_redrive": (await conn.execute(select(func.count()).where(where))).scalar_one()}
        result = await conn.execute(
            update(t).where(where).values(dead_at=None, attempts=0, last_error=None, available_at=func.now())
        )
        await _wake_relays(conn)
        return {"redriven": result.rowcount}


async def _wake_relays(conn: AsyncConnection) -> None:
    """NOTIFY on the channel the relays listen on (OUTBOX_NOTIFY_CHANNEL; empty: they poll, nothing to do)."""
    channel = os.environ.get("OUTBOX_NOTIFY_CHANNEL", DEFAULT_NOTIFY_CHANNEL)
    if channel:
        await conn.execute(select(func.pg_notify(channel, "")))
