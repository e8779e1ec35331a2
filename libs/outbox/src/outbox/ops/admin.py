"""Operator actions on an outbox: status, replay of retained events, redrive of dead-lettered rows.

Replay and redrive go through the relay (they make rows pending again) rather than around it, so the
relay's per-aggregate ordering and the consumers' inbox apply to them unchanged. Replayed events keep
their event ids: a consumer that already applied one skips it; a consumer rebuilt from scratch (state and
inbox cleared) applies them all again. The statements live in `outbox_admin_store.OutboxAdmin`.
"""

from __future__ import annotations

import os
from enum import Enum
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine

from outbox.ops.admin_store import DeadRow, OutboxAdmin, Selection
from outbox.ops.status import read as status_figures
from outbox.writer import DEFAULT_NOTIFY_CHANNEL

__all__ = ["RedriveOrder", "Selection", "redrive", "replay", "status"]

REPLAY_CHUNK = 5000


class RedriveOrder(Enum):
    """What to do with a dead row whose aggregate already published later rows (v4..v9 out, v3 dead)."""

    REFUSE = "refuse"  # the default: say which rows are affected and change nothing
    REORDER = "reorder"  # v3 goes out again, then v4..v9 are sent once more after it (order on the topic)
    FORCE = "force"  # v3 alone, after v4..v9 (guarded consumers drop it as stale; gap-aware ones apply it)


def _wake_channel() -> str | None:
    """The channel relays listen on (OUTBOX_NOTIFY_CHANNEL; empty: they poll, nothing to wake)."""
    return os.environ.get("OUTBOX_NOTIFY_CHANNEL", DEFAULT_NOTIFY_CHANNEL) or None


async def status(engine: AsyncEngine) -> dict[str, Any]:
    """`outbox status`'s figures without the lag (`status.read`, on the engine's psycopg connection)."""
    async with engine.connect() as conn:
        raw = await conn.get_raw_connection()
        assert raw.driver_connection is not None  # the psycopg connection under the pool's proxy
        figures = await status_figures(raw.driver_connection)
        await conn.rollback()
        return figures


async def replay(
    engine: AsyncEngine, selection: Selection, *, dry_run: bool, chunk: int = REPLAY_CHUNK, sample: int = 10
) -> dict[str, Any]:
    """Make matching published rows pending again, in bounded chunks; the relay republishes them in order.
    A dry run counts them and shows the first `sample` it would send."""
    store = OutboxAdmin(engine)
    if dry_run:
        return {
            "would_replay": await store.count_replayable(selection),
            "sample": await store.sample_replayable(selection, sample) if sample > 0 else [],
        }
    return {"replayed": await store.replay(selection, chunk=chunk, wake=_wake_channel())}


async def redrive(
    engine: AsyncEngine,
    *,
    ids: list[int] | None,
    dry_run: bool,
    order: RedriveOrder = RedriveOrder.REFUSE,
) -> dict[str, Any]:
    """Give dead-lettered rows a fresh set of attempts.

    A dead row whose aggregate already published later rows would reach consumers after them; by default
    such rows are refused (listed under `out_of_order`), `REORDER` re-sends those later rows after it and
    `FORCE` sends it alone. Rows with nothing published after them (the relay's `block_on_dead`) go. Whether
    later rows went out is read from state the retention keeps (`DeadRow.late`), so the refusal holds after
    the published rows are pruned; `REORDER` refuses a row whose newest successor is pruned (under
    `cannot_reorder`): it cannot be re-sent, and the log would end at the redriven row's older state."""
    store = OutboxAdmin(engine)
    dead = await store.dead_rows(ids)
    out_of_order = [
        {
            "id": d.id,
            "aggregate_id": d.aggregate_id,
            "version": d.aggregate_version,
            "published_after": d.published_after,
            "pruned_through": d.pruned_through,
            "newer_version_pruned": d.newer_version_pruned,
        }
        for d in dead
        if d.late
    ]
    cannot = [d for d in dead if d.late and order is RedriveOrder.REORDER and not d.resendable]
    cannot_reorder = [{"id": d.id, "reason": _pruned_reason(d)} for d in cannot]
    chosen = [
        d
        for d in dead
        if not d.late or order is RedriveOrder.FORCE or (order is RedriveOrder.REORDER and d not in cannot)
    ]
    resend = sorted({i for d in chosen for i in d.published_after}) if order is RedriveOrder.REORDER else []
    report: dict[str, Any] = {"out_of_order": out_of_order, "order": order.value}
    if cannot_reorder:
        report["cannot_reorder"] = cannot_reorder
    if dry_run:
        report |= {"would_redrive": len(chosen), "would_resend": len(resend)}
        return report
    count = await store.redrive([d.id for d in chosen], resend, wake=_wake_channel())
    report |= {"redriven": count, "resent": len(resend), "refused": len(dead) - len(chosen)}
    return report


def _pruned_reason(row: DeadRow) -> str:
    gone = (
        f"its published successors up to row {row.pruned_through} were pruned"
        if row.pruned_through
        else "a later version was published and pruned"
    )
    return (
        f"{gone} (past OUTBOX_RETENTION_HOURS) and cannot be re-sent after it, so the log would end at this "
        "row's older state; --force sends it alone (guarded consumers drop it as stale), or have the "
        "producer re-announce the aggregate's current state after it"
    )
