"""`outbox why ID`: why an aggregate's events are not out (or not applied) yet, and where one event went.

ID is an aggregate id or an event id. `--aggregate`/`--event` say which; without them a UUID is looked up
as an event id first, then as an aggregate id (every aggregate of this system is a UUID too), and the
report says which matched. For an aggregate: its head (`outbox_heads`), its rows by state with the reason
each waits (claimed by a relay, backoff until T, held behind row N, dead after K attempts), who holds a
lock on it (a writer's open transaction on the head row, a relay's claim: `pg_locks`, `pg_stat_activity`),
and in each consumer database given, each group's applied version (`consumer_versions`), how far behind
the head it is, and its parked events. For an event: its outbox row, then each group's inbox row or parked
copy, or why it has not arrived. Read-only: every statement runs in a transaction that is rolled back.
Rendering and the "what to do next" line: `why_render.py`.
"""

from __future__ import annotations

import uuid
from typing import Any, Literal

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from outbox.ops.status import CONSUMERS
from outbox.ops.why_render import next_step, render

__all__ = ["Kind", "explain", "render"]

Kind = Literal["auto", "event", "aggregate"]

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
_EVENT_AGGREGATE = text("SELECT aggregate_id FROM outbox WHERE event_id = CAST(:id AS uuid) LIMIT 1")
_HEADS = text(
    "SELECT topic, version, previous, written_at, pruned_published_id FROM outbox_heads "
    "WHERE aggregate_id = :aggregate AND (CAST(:topic AS text) IS NULL OR topic = :topic) ORDER BY topic"
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
    'SELECT consumer, outcome, topic, partition, "offset", aggregate_id, aggregate_version, processed_at FROM inbox '
    "WHERE event_id = CAST(:id AS uuid) ORDER BY consumer"
)
_PARKED = text(
    "SELECT consumer, topic, event_id::text AS event_id, version, prev_version, parked_at FROM inbox_parked "
    "WHERE (CAST(:id AS uuid) IS NOT NULL AND event_id = CAST(:id AS uuid)) "
    "OR (CAST(:aggregate AS text) IS NOT NULL AND aggregate_id = :aggregate) ORDER BY consumer, topic, version"
)
_APPLIED = text(
    "SELECT consumer, topic, version, advanced_at FROM consumer_versions WHERE aggregate_id = :aggregate "
    "ORDER BY consumer, topic"
)
# Which of the groups apply which topics: a version row for any aggregate of it (the key's prefix).
_READS = text(
    "SELECT g, t FROM unnest(CAST(:groups AS text[])) g, unnest(CAST(:topics AS text[])) t "
    "WHERE EXISTS (SELECT 1 FROM consumer_versions v WHERE v.consumer = g AND v.topic = t) ORDER BY g, t"
)
# The database's consumer groups without scanning the inbox (`status.CONSUMERS`: a skip scan).
_GROUPS = text(CONSUMERS)


def as_event_id(target: str) -> str | None:
    try:
        return str(uuid.UUID(target))
    except ValueError:
        return None


async def explain(
    engine: AsyncEngine,
    target: str,
    *,
    kind: Kind = "auto",
    topic: str | None = None,
    consumer_urls: list[str] | None = None,
    recent: int = 5,
) -> dict[str, Any]:
    """The report `render` prints (and `--json` dumps). `kind="auto"`: a UUID is an event id if the outbox
    has that event, else an aggregate id; anything else is an aggregate id. `matched` says what was found."""
    uuid_form = as_event_id(target)
    if kind == "event" and uuid_form is None:
        raise ValueError(f"{target!r} is not an event id (a UUID)")
    async with engine.connect() as conn:
        owner = None
        if uuid_form is not None and kind != "aggregate":
            owner = (await conn.execute(_EVENT_AGGREGATE, {"id": uuid_form})).scalar()
        if kind == "event" or owner is not None:
            report = await _outbox_side(conn, "event", target, uuid_form, owner, topic, recent)
        else:
            report = await _outbox_side(conn, "aggregate", target, None, target, topic, recent)
        await conn.rollback()
    report["guessed"] = kind == "auto" and uuid_form is not None
    # A guessed UUID that matched nothing in the outbox may still be an event whose outbox row was pruned:
    # the consumer databases are asked for it as an event id as well.
    unknown = (
        report["guessed"] and report["kind"] == "aggregate" and not report["rows"] and not report["heads"]
    )
    event_id = uuid_form if report["kind"] == "event" or unknown else None
    for url in consumer_urls or []:
        report["consumers"].append(
            await _consumer_side(url, event_id, report["aggregate_id"], _topics(report))
        )
    inbox = [i for side in report["consumers"] for i in side.get("inbox", [])]
    gone = unknown or (report["kind"] == "event" and not report["rows"])
    if gone and inbox:  # an event whose outbox row is gone: its aggregate is the inbox row's
        report["kind"], report["aggregate_id"] = "event", inbox[0]["aggregate_id"]
        topics = sorted({i["topic"] for i in inbox})
        report["consumers"] = [
            await _consumer_side(url, uuid_form, report["aggregate_id"], topics)
            for url in consumer_urls or []
        ]
    report["matched"] = _matched(report)
    report["next"] = next_step(report)
    return report


def _topics(report: dict[str, Any]) -> list[str]:
    return sorted({r["topic"] for r in report["rows"]} | {h["topic"] for h in report["heads"]})


def _matched(report: dict[str, Any]) -> str:
    if report["kind"] == "event":
        if report["rows"]:
            return "event id (its outbox row)"
        if any(side.get("inbox") or side.get("parked") for side in report["consumers"]):
            return "event id (in a consumer database; its outbox row is gone)"
        return "nothing"
    if report["rows"] or report["heads"]:
        return "aggregate id" + (" (no event has this id)" if report["guessed"] else "")
    if any(side.get("applied_versions") or side.get("parked") for side in report["consumers"]):
        return "aggregate id (only in consumer databases: its outbox rows and head were pruned)"
    return "nothing"


async def _outbox_side(
    conn: AsyncConnection,
    kind: str,
    target: str,
    event_id: str | None,
    aggregate: str | None,
    topic: str | None,
    recent: int,
) -> dict[str, Any]:
    params = {"event_id": event_id, "aggregate": None if kind == "event" else aggregate}
    found = [
        dict(r._mapping) for r in await conn.execute(_ROWS, {**params, "topic": topic, "recent": recent})
    ]
    heads = (
        [dict(r._mapping) for r in await conn.execute(_HEADS, {"aggregate": aggregate, "topic": topic})]
        if aggregate is not None
        else []
    )
    unpublished = [r["id"] for r in found if r["published_at"] is None and r["dead_at"] is None]
    free = set((await conn.execute(_UNLOCKED, {"ids": unpublished})).scalars()) if unpublished else set()
    keys = sorted({(r["topic"], r["aggregate_id"]) for r in found} | {(h["topic"], aggregate) for h in heads})
    holders = [
        dict(r._mapping)
        for r in await conn.execute(
            _LOCK_HOLDERS, {"topics": [k[0] for k in keys], "aggregates": [k[1] for k in keys]}
        )
    ]
    _annotate(found, claimed={i for i in unpublished if i not in free})
    return {
        "target": target,
        "kind": kind,
        "aggregate_id": aggregate,
        "heads": heads,
        "rows": found,
        "held_by": _holding_row(found),
        "lock_holders": holders,
        "consumers": [],
    }


def _annotate(rows: list[dict[str, Any]], *, claimed: set[int]) -> None:
    """Each row's `state` and, for an unpublished one, the `reason` it waits. A ready row after a pending one
    of its aggregate waits for it ('blocked'); a claimed one is in flight."""
    waiting_for: dict[tuple[str, str], int] = {}
    for row in rows:
        key = (row["topic"], row["aggregate_id"])
        if row["id"] in claimed:
            row["state"] = "claimed by a relay"
            row["reason"] = "claimed by a relay now: being published"
        elif row["state"] == "ready" and key in waiting_for:
            row["state"] = f"blocked behind #{waiting_for[key]}"
            row["reason"] = f"held behind pending row #{waiting_for[key]} of its aggregate (order)"
        elif row["state"] == "backoff":
            row["reason"] = f"backoff until {row['available_at']} after {row['attempts']} failed attempt(s)"
        elif row["state"] == "dead":
            row["reason"] = f"dead after {row['attempts']} attempt(s) at {row['dead_at']}"
        elif row["state"] == "ready":
            row["reason"] = f"ready since {row['available_at']}: waiting for a relay to claim it"
        else:
            row["reason"] = f"published at {row['published_at']}"
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


async def _consumer_side(
    url: str, event_id: str | None, aggregate: str | None, topics: list[str]
) -> dict[str, Any]:
    engine = create_async_engine(url)
    try:
        async with engine.connect() as conn:
            side = await _read_consumer(conn, event_id, aggregate, topics)
            await conn.rollback()
            return {"database": _safe(url), **side}
    except Exception as exc:  # one unreachable database must not hide the others
        return {"database": _safe(url), "error": f"{type(exc).__name__}: {str(exc).splitlines()[0]}"}
    finally:
        await engine.dispose()


async def _read_consumer(
    conn: AsyncConnection, event_id: str | None, aggregate: str | None, topics: list[str]
) -> dict[str, Any]:
    groups = [row[0] for row in await conn.execute(_GROUPS)]
    side: dict[str, Any] = {"groups": groups, "reads": {}}
    for group, topic in await conn.execute(_READS, {"groups": groups, "topics": topics}):
        side["reads"].setdefault(group, []).append(topic)
    if event_id:
        side["inbox"] = [dict(r._mapping) for r in await conn.execute(_INBOX, {"id": event_id})]
    if aggregate:
        side["applied_versions"] = [
            dict(r._mapping) for r in await conn.execute(_APPLIED, {"aggregate": aggregate})
        ]
    side["parked"] = [
        dict(r._mapping) for r in await conn.execute(_PARKED, {"id": event_id, "aggregate": aggregate})
    ]
    return side


def _safe(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)
