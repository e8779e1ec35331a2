"""`outbox status`: an outbox's backlog by state, its retained rows, its dead rows, its consumer groups' lag.

Meant to answer in well under a second: it talks to PostgreSQL with psycopg alone (importing SQLAlchemy's
asyncio extension, which pulls in its ORM, cost about as much CPU as everything else together), and asks
the broker once for every group (`lag.groups_lag`). `admin.status(engine)` reads the same figures through
an SQLAlchemy engine's psycopg connection.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from outbox.ops.backlog import Backlog, backlog_sql

if TYPE_CHECKING:
    import psycopg

# `published_retained` is counted exactly up to this many rows (the partial index on published_at: tens of
# milliseconds, and right without an ANALYZE; 100,000 cost ~0.25 s on a loaded host); past it, estimated.
RETAINED_EXACT_UP_TO = 10_000

# Past the cap: the planner's row estimate scaled to the table's current size, as the planner itself does,
# so a table grown since its last ANALYZE is not under-reported.
_RETAINED = """
    SELECT (SELECT count(*) FROM (SELECT 1 FROM outbox WHERE published_at IS NOT NULL LIMIT %(cap)s) r) AS counted,
           (SELECT CASE WHEN relpages > 0 AND reltuples > 0
                        THEN reltuples / relpages * (pg_relation_size(oid) / current_setting('block_size')::float)
                        ELSE 0 END::bigint
            FROM pg_class WHERE oid = 'outbox'::regclass) AS estimated_rows
    """
_DEAD_SAMPLE = (
    "SELECT id, event_type, aggregate_id, aggregate_version, attempts, last_error, dead_at FROM outbox "
    "WHERE dead_at IS NOT NULL ORDER BY id LIMIT %(limit)s"
)
# The inbox's consumers without scanning it: a skip scan over its primary key (consumer, event_id).
CONSUMERS = """
    WITH RECURSIVE c AS (
        (SELECT consumer FROM inbox ORDER BY consumer LIMIT 1)
        UNION ALL
        SELECT (SELECT i.consumer FROM inbox i WHERE i.consumer > c.consumer ORDER BY i.consumer LIMIT 1)
        FROM c WHERE c.consumer IS NOT NULL
    )
    SELECT consumer FROM c WHERE consumer IS NOT NULL
    """


def conninfo(url: str) -> str:
    """libpq's form of the library's URL (`postgresql+psycopg://` -> `postgresql://`)."""
    return url.replace("postgresql+psycopg://", "postgresql://", 1)


async def read(conn: psycopg.AsyncConnection[Any]) -> dict[str, Any]:
    """The outbox's figures (no lag): what `outbox status --json` shows before `consumer_groups`."""
    from psycopg.rows import dict_row

    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(backlog_sql(held=True))
        backlog = Backlog.from_row(await cur.fetchone(), held=True)
        await cur.execute(_RETAINED, {"cap": RETAINED_EXACT_UP_TO})
        retained_row = await cur.fetchone()
        sample: list[dict[str, Any]] = []
        if backlog.dead:
            await cur.execute(_DEAD_SAMPLE, {"limit": 20})
            sample = list(await cur.fetchall())
    assert retained_row is not None
    exact = retained_row["counted"] < RETAINED_EXACT_UP_TO
    unpublished = backlog.pending + backlog.dead
    retained = (
        int(retained_row["counted"])
        if exact
        else max(int(retained_row["estimated_rows"]) - unpublished, RETAINED_EXACT_UP_TO)
    )
    return {
        "pending": backlog.pending,
        "ready": backlog.ready,
        "behind_backoff": backlog.behind_backoff,
        "behind_dead": backlog.behind_dead,
        "held_behind_pending": backlog.held_behind_pending,
        "backoff": backlog.backoff,
        "oldest_pending_age_s": round(backlog.oldest_due_age_s, 3),
        "dead_lettered": backlog.dead,
        "published_retained": retained,
        "published_retained_is_estimate": not exact,
        "last_published_at": backlog.last_published_at,
        "dead_letter_sample": sample,
    }


async def report(url: str, groups: Sequence[str] | None, bootstrap: str) -> dict[str, Any]:
    """`outbox status`'s whole report: the outbox's figures, then each group's lag (groups: the inbox's
    when none are given), and `broker_error` when the broker could not be asked."""
    import psycopg

    from outbox.ops.lag import lag_report

    try:
        async with await psycopg.AsyncConnection.connect(conninfo(url), autocommit=True) as conn:
            figures = await read(conn)
            if not groups:
                groups = [row[0] for row in await (await conn.execute(CONSUMERS)).fetchall()]
    except psycopg.Error as exc:
        raise _database_error(exc, url) from exc
    return figures | await lag_report(bootstrap, groups)


def _database_error(exc: Exception, url: str) -> Exception:
    """The one line `outbox` prints for a database failure, as `commands.errors` words SQLAlchemy's."""
    import psycopg

    from outbox.ops.commands.errors import DB_HINT, _safe_url
    from outbox.ops.errors import OperatorError

    where, message = _safe_url(url), " ".join(str(exc).split()).removeprefix("connection failed: ")
    if isinstance(exc, psycopg.OperationalError):
        return OperatorError(f"cannot connect to the database {where}: {message} ({DB_HINT})")
    if isinstance(exc, psycopg.errors.UndefinedTable):
        first = str(exc).strip().splitlines()[0]
        return OperatorError(f"{first} in {where}: not an outbox database, or not migrated ({DB_HINT})")
    return OperatorError(f"database {where}: {message}")


def render(status: dict[str, Any]) -> str:
    """`outbox status` for a person: the relay's figures, then one line per consumer group."""
    retained = status.get("published_retained")
    if status.get("published_retained_is_estimate"):  # at the cap: the planner knows no more than that
        retained = f"≥{retained}" if retained == RETAINED_EXACT_UP_TO else f"~{retained}"
    lines = [
        f"outbox  pending {status.get('pending')}  oldest pending {status.get('oldest_pending_age_s')} s  "
        f"dead {status.get('dead_lettered')}  "
        f"retained {retained}",
        f"  pending: ready {status.get('ready')}  behind a failed row {status.get('behind_backoff')}  "
        f"behind a dead row {status.get('behind_dead')}  "
        f"behind a later-ready row {status.get('held_behind_pending')}  in backoff {status.get('backoff')}",
    ]
    for row in status.get("dead_letter_sample") or []:
        lines.append(f"  dead #{row['id']} {row['event_type']} {row['aggregate_id']}: {row['last_error']}")
    groups = status.get("consumer_groups") or {}
    if status.get("broker_error"):
        lines.append(f"groups {', '.join(groups)}  lag unknown: {status['broker_error']}")
        return "\n".join(lines)
    for group, lag in groups.items():
        if lag.get("lag") is None:
            lines.append(f"group {group}  lag unknown ({lag.get('error')})")
            continue
        parts = "  ".join(f"{tp}={value}" for tp, value in lag["partitions"].items() if value)
        lines.append(f"group {group}  lag {lag['lag']}" + (f"  ({parts})" if parts else ""))
    return "\n".join(lines)
