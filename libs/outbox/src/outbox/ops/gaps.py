"""`outbox skip-gap`: give up a missing version knowingly, so a gap-aware consumer's parked events apply.

A gap-aware consumer parks an aggregate's events until the version they follow is applied. When that
version will never come (its outbox row was lost, or pruned dead), an operator moves the consumer's version
to the previous version of the first parked event: the consumer's sweep (every
`OUTBOX_CONSUMER_PARK_SWEEP_INTERVAL_S`) then applies the chain that follows it, in version order, through
the consumer's own handlers. A chain behind a second gap stays parked (run it again). The skipped version,
should it arrive after all, is older than what is then applied: the version guard drops it as stale.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

# The version row is locked, as the guard locks it, so no apply of this aggregate interleaves.
_APPLIED = text(
    "SELECT version FROM consumer_versions WHERE consumer = :c AND topic = :t AND aggregate_id = :a FOR UPDATE"
)
_PARKED = text(
    "SELECT version, prev_version FROM inbox_parked WHERE consumer = :c AND topic = :t AND aggregate_id = :a "
    "ORDER BY version, parked_at, event_id"
)
_ADVANCE = text(
    "INSERT INTO consumer_versions (consumer, topic, aggregate_id, version) VALUES (:c, :t, :a, :v) "
    "ON CONFLICT (consumer, topic, aggregate_id) DO UPDATE "
    "SET version = greatest(consumer_versions.version, EXCLUDED.version), advanced_at = now()"
)


def plan(applied: int | None, parked: list[tuple[int, int]]) -> dict[str, Any]:
    """What skipping the first gap does: the versions given up (after `applied`, through the first parked
    event's previous version), the parked versions that then follow without a gap (`due`, as the
    consumer's release chains them), and those behind a further gap."""
    through = parked[0][1] if applied is None else max(parked[0][1], applied)
    current, due, still = through, list[int](), list[int]()
    for version, prev in parked:
        if not still and prev <= current:
            due.append(version)
            current = max(current, version)
        else:
            still.append(version)
    return {"after": applied, "through": through, "due": due, "still_parked": still}


async def skip_gap(
    engine: AsyncEngine, consumer: str, topic: str, aggregate_id: str, *, yes: bool
) -> dict[str, Any]:
    """Without `yes`: what would be skipped (nothing changes). With it: the consumer's version moved.
    Raises LookupError when nothing of that aggregate is parked for that consumer."""
    key = {"c": consumer, "t": topic, "a": aggregate_id}
    async with engine.begin() as conn:
        applied = (await conn.execute(_APPLIED, key)).scalar()
        parked = [(r.version, r.prev_version) for r in await conn.execute(_PARKED, key)]
        if not parked:
            raise LookupError(
                f"nothing parked for consumer {consumer!r}, topic {topic!r}, aggregate {aggregate_id!r}"
            )
        skipped = plan(applied, parked)
        report: dict[str, Any] = {"consumer": consumer, "topic": topic, "aggregate_id": aggregate_id}
        if not yes:
            await conn.rollback()
            return report | {"would_skip": skipped}
        await conn.execute(_ADVANCE, {**key, "v": skipped["through"]})
    return report | {
        "skipped": skipped,
        "note": "the consumer's parked-event sweep applies the due events (every "
        "OUTBOX_CONSUMER_PARK_SWEEP_INTERVAL_S); the skipped versions, if they arrive later, are dropped as stale",
    }
