"""`outbox why AGGREGATE|EVENT_ID`: why an aggregate's events are not out yet, and where one event went.

For an aggregate: its rows by state (published, ready, behind another row, in backoff, dead), the row that
holds the rest back with its error and `available_at`, and who holds a lock on it (a writer's open transaction
on the aggregate's head row, a relay's claim on its rows: `pg_locks` and `pg_stat_activity`). For an event id: its
outbox row, then, in each consumer database given, the consumer's inbox row (outcome, Kafka partition and
offset) or its parked copy. Read-only: every statement runs in a transaction that is rolled back.
"""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

_ROWS = text(
    """
    SELECT id, event_id::text AS event_id, topic, event_type, aggregate_id, aggregate_version, prev_version,
           attempts, last_error, occurred_at, available_at, published_at, dead_at,
           CASE WHEN published_at IS NOT NULL THEN 'published'
                WHEN dead_at IS NOT NULL THEN 'dead'
                WHEN available_at > now() THEN 'backoff'
                ELSE 'ready' END AS state
    FROM outbox WHERE (CAST(:event_id AS uuid) IS NOT NULL AND event_id = CAST(:event_id AS uuid))
       OR (CAST(:aggregate AS text) IS NOT NULL AND aggregate_id = :aggregate
           AND (CAST(:topic AS text) IS NULL OR topic = :topic)
           AND (published_at IS NULL OR id > coalesce(
               (SELECT max(id) FROM outbox WHERE aggregate_id = :aggregate AND published_at IS NOT NULL), 0) - :recent))
    ORDER BY topic, id
    """
)
# Rows that a relay's open claim holds: a SKIP LOCKED read does not return them.
_UNLOCKED = text("SELECT id FROM outbox WHERE id = ANY(:ids) FOR UPDATE SKIP LOCKED")
# A writer that has not committed holds its aggregates' head rows: the visible row version's xmax is its
# transaction, whose own lock names the backend. A relay's claim holds outbox rows FOR UPDATE.
_LOCK_HOLDERS = text(
    """
    SELECT DISTINCT a.pid, a.application_name, a.state, a.xact_start, left(a.query, 200) AS query,
           CASE WHEN l.locktype = 'transactionid' THEN 'the aggregate''s writer lock'
                ELSE 'a claim on outbox rows' END AS holds
    FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
    WHERE a.pid <> pg_backend_pid() AND l.granted AND (
        (l.locktype = 'relation' AND l.relation = 'outbox'::regclass AND l.mode = 'RowShareLock')
        OR (l.locktype = 'transactionid' AND l.transactionid IN (
            SELECT h.xmax FROM outbox_heads h
            JOIN unnest(CAST(:topics AS text[]), CAST(:aggregates AS text[])) AS k(t, a)
              ON h.topic = k.t AND h.aggregate_id = k.a)))
    ORDER BY a.pid
    """
)
_INBOX = text(
    'SELECT consumer, outcome, topic, partition, "offset", processed_at FROM inbox WHERE event_id = :id'
)
_PARKED = text(
    "SELECT consumer, version, prev_version, parked_at FROM inbox_parked "
    "WHERE event_id = CAST(:id AS uuid) OR (CAST(:aggregate AS text) IS NOT NULL AND aggregate_id = :aggregate)"
)
_APPLIED = text("SELECT consumer, topic, version FROM consumer_versions WHERE aggregate_id = :aggregate")


def _event_id(target: str) -> str | None:
    try:
        return str(uuid.UUID(target))
    except ValueError:
        return None


async def explain(
    engine: AsyncEngine,
    target: str,
    *,
    topic: str | None = None,
    consumer_urls: list[str] | None = None,
    recent: int = 5,
) -> dict[str, Any]:
    event_id = _event_id(target)
    aggregate = None if event_id else target
    async with engine.connect() as conn:
        found = [
            dict(r._mapping)
            for r in await conn.execute(
                _ROWS, {"event_id": event_id, "aggregate": aggregate, "topic": topic, "recent": recent}
            )
        ]
        unpublished = [r["id"] for r in found if r["published_at"] is None and r["dead_at"] is None]
        free = set((await conn.execute(_UNLOCKED, {"ids": unpublished})).scalars()) if unpublished else set()
        keys = sorted({(r["topic"], r["aggregate_id"]) for r in found})
        holders = [
            dict(r._mapping)
            for r in await conn.execute(
                _LOCK_HOLDERS, {"topics": [k[0] for k in keys], "aggregates": [k[1] for k in keys]}
            )
        ]
        await conn.rollback()
    _annotate(found, claimed={i for i in unpublished if i not in free})
    report: dict[str, Any] = {
        "target": target,
        "kind": "event" if event_id else "aggregate",
        "rows": found,
        "held_by": _holding_row(found),
        "lock_holders": holders,
        "consumers": [],
    }
    if event_id is None and found:
        aggregate = found[0]["aggregate_id"]
    for url in consumer_urls or []:
        report["consumers"].append(await _consumer_side(url, event_id, aggregate))
    return report


def _annotate(rows: list[dict[str, Any]], *, claimed: set[int]) -> None:
    """A ready row after a pending one of its aggregate waits for it ('blocked'); a claimed one is in flight."""
    waiting_for: dict[tuple[str, str], int] = {}
    for row in rows:
        key = (row["topic"], row["aggregate_id"])
        if row["id"] in claimed:
            row["state"] = "claimed by a relay"
        elif row["state"] == "ready" and key in waiting_for:
            row["state"] = f"blocked behind #{waiting_for[key]}"
        if row["published_at"] is None and key not in waiting_for:
            waiting_for[key] = row["id"]


def _holding_row(rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    for row in rows:
        if row["state"] in ("dead", "backoff") or row["state"].startswith("claimed"):
            return {
                k: row[k]
                for k in ("id", "state", "aggregate_version", "attempts", "last_error", "available_at")
            }
    return None


async def _consumer_side(url: str, event_id: str | None, aggregate: str | None) -> dict[str, Any]:
    engine = create_async_engine(url)
    try:
        async with engine.connect() as conn:
            return await _read_consumer(conn, url, event_id, aggregate)
    except Exception as exc:
        return {"database": _safe(url), "error": f"{type(exc).__name__}: {exc}"}
    finally:
        await engine.dispose()


async def _read_consumer(
    conn: AsyncConnection, url: str, event_id: str | None, aggregate: str | None
) -> dict[str, Any]:
    side: dict[str, Any] = {"database": _safe(url)}
    if event_id:
        side["inbox"] = [dict(r._mapping) for r in await conn.execute(_INBOX, {"id": event_id})]
    if aggregate:
        side["applied_versions"] = [
            dict(r._mapping) for r in await conn.execute(_APPLIED, {"aggregate": aggregate})
        ]
    side["parked"] = [
        dict(r._mapping) for r in await conn.execute(_PARKED, {"id": event_id, "aggregate": aggregate})
    ]
    await conn.rollback()
    return side


def _safe(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


def render(report: dict[str, Any]) -> str:
    lines = [f"{report['kind']} {report['target']}"]
    if not report["rows"]:
        lines.append("  no outbox row (never written here, or pruned after its retention)")
    for r in report["rows"]:
        line = f"  #{r['id']} {r['event_type']} v{r['aggregate_version']} (after v{r['prev_version']}): {r['state']}"
        if r["state"] == "backoff":
            line += f" until {r['available_at']}"
        if r["last_error"]:
            line += f"  error: {r['last_error']}"
        lines.append(line)
    held = report["held_by"]
    if held:
        lines.append(
            f"held back by #{held['id']} ({held['state']}, {held['attempts']} attempts): {held['last_error']}"
        )
    for h in report["lock_holders"]:
        lines.append(
            f"{h['holds']} held by pid {h['pid']} {h['application_name'] or ''} {h['state']} "
            f"since {h['xact_start']}: {h['query']}"
        )
    for side in report["consumers"]:
        lines.append(f"consumer database {side['database']}")
        if "error" in side:
            lines.append(f"  unreachable: {side['error']}")
            continue
        for row in side.get("inbox", []):
            lines.append(
                f"  {row['consumer']}: {row['outcome']} from {row['topic']}[{row['partition']}]@{row['offset']} "
                f"at {row['processed_at']}"
            )
        for row in side.get("applied_versions", []):
            lines.append(f"  {row['consumer']}: applied up to v{row['version']} of {row['topic']}")
        for row in side.get("parked", []):
            lines.append(
                f"  {row['consumer']}: v{row['version']} parked since {row['parked_at']}, waits for v{row['prev_version']}"
            )
    return "\n".join(lines)
