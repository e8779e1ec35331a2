"""Issue 22, finding 4: a redrive must judge a dead row by durable state, not by the rows retention left.

Published rows go after `OUTBOX_RETENTION_HOURS` (7 days), dead rows after `OUTBOX_DEAD_RETENTION_HOURS`
(30 days). Before: once a dead row's published successors were pruned, `outbox redrive` no longer saw them
and re-sent it behind them (topic versions [1, 3, 2]). Now the prune leaves a marker on the aggregate's head
and the head's version says what was written after the row; the refusal survives pruning, and `--reorder`
says what it can no longer re-send. And a consumer-side DLQ redrive of an event whose successors were
applied is judged by the version guard, as documented: stale, not applied, and said so in the log.
Real PostgreSQL and broker throughout."""

from __future__ import annotations

import asyncio
import logging
import subprocess
import sys
import uuid
from collections.abc import Callable
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from libs.outbox.tests.test_ordering_contract import dead_row, ev, rows, write
from outbox import (
    ConsumerSettings,
    EventContext,
    IdempotentConsumer,
    OutboxWriter,
    Reject,
    Relay,
    RelaySettings,
)
from outbox.ops.admin import RedriveOrder, redrive
from outbox.ops.dlq import dead_letter_topic, read_dead_letters
from outbox.ops.dlq import redrive as dlq_redrive
from outbox.testing import drain_outbox, headers_of, read_topic, record_effect, wire
from testsupport import wait_until

pytestmark = pytest.mark.usefixtures("clean")


async def versions_on(bootstrap: str, topic: str, expect: int, timeout: float = 30.0) -> list[int]:
    records = await read_topic(bootstrap, wire(topic), expect=expect, timeout=timeout)
    return [int(headers_of(r)["ce_aggregateversion"]) for r in sorted(records, key=lambda r: r.offset)]


async def age_published(engine: AsyncEngine, days: int) -> None:
    async with engine.begin() as conn:
        await conn.execute(
            text(
                "UPDATE outbox SET published_at = now() - make_interval(days => :d) WHERE published_at IS NOT NULL"
            ),
            {"d": days},
        )


async def test_the_redrive_refusal_survives_the_pruning_of_the_published_successors(
    engine: AsyncEngine,
    sessions: async_sessionmaker[AsyncSession],
    writer: OutboxWriter,
    topic: str,
    bootstrap: str,
) -> None:
    await write(sessions, writer, *(ev(topic, "x", v) for v in (1, 2, 3)))
    dead_id = await dead_row(engine, "x", 2)
    await drain_outbox(engine, bootstrap)
    assert await versions_on(bootstrap, topic, 2) == [1, 3]
    await age_published(engine, days=8)  # past the published retention (7 days); the dead row stays (30)
    assert await Relay(engine, RelaySettings(bootstrap=bootstrap)).cleanup_published() == 2
    assert await rows(engine, "SELECT id FROM outbox") == [(dead_id,)]

    refused = await redrive(engine, ids=None, dry_run=False)  # before: redriven, the topic became [1, 3, 2]
    assert (refused["redriven"], refused["refused"]) == (0, 1)
    [late] = refused["out_of_order"]
    assert late["id"] == dead_id and late["published_after"] == [] and late["pruned_through"] > dead_id

    # --reorder cannot re-send what is gone: it refuses the row and says why, rather than end the log at v2.
    reorder = await redrive(engine, ids=[dead_id], dry_run=False, order=RedriveOrder.REORDER)
    assert reorder["redriven"] == 0
    [cannot] = reorder["cannot_reorder"]
    assert cannot["id"] == dead_id and "pruned" in cannot["reason"]
    code, _, err = await outbox_cli(
        "redrive",
        "--database-url",
        str(engine.url.render_as_string(hide_password=False)),
        "--reorder",
        "--yes",
    )
    assert code == 1 and "pruned" in err
    await drain_outbox(engine, bootstrap)
    assert await versions_on(bootstrap, topic, 3, timeout=3) == [1, 3]  # nothing went out of order

    forced = await redrive(engine, ids=[dead_id], dry_run=False, order=RedriveOrder.FORCE)
    assert forced["redriven"] == 1  # the operator's explicit choice
    await drain_outbox(engine, bootstrap)
    assert await versions_on(bootstrap, topic, 3) == [1, 3, 2]


async def test_a_redrive_is_refused_from_the_heads_version_when_successors_were_pruned_without_a_marker(
    engine: AsyncEngine,
    sessions: async_sessionmaker[AsyncSession],
    writer: OutboxWriter,
    topic: str,
    bootstrap: str,
) -> None:
    # Successors pruned before the marker existed (an older library): the head still says v3 was written
    # after the dead v2, and no retained row carries it, so it went out and was pruned.
    await write(sessions, writer, *(ev(topic, "x", v) for v in (1, 2, 3)))
    dead_id = await dead_row(engine, "x", 2)
    await drain_outbox(engine, bootstrap)
    async with engine.begin() as conn:
        await conn.execute(text("DELETE FROM outbox WHERE published_at IS NOT NULL"))
    refused = await redrive(engine, ids=None, dry_run=True)
    assert refused["would_redrive"] == 0
    [late] = refused["out_of_order"]
    assert late["id"] == dead_id and late["newer_version_pruned"] is True


async def test_a_dlq_redrive_of_an_event_whose_successor_was_applied_is_stale_and_says_so(
    engine: AsyncEngine,
    sessions: async_sessionmaker[AsyncSession],
    writer: OutboxWriter,
    topic: str,
    bootstrap: str,
    run_consumer: Callable[[IdempotentConsumer], None],
    caplog: pytest.LogCaptureFixture,
) -> None:
    # The consumer rejects v2 (dead-lettered) and applies v3. An operator's `outbox dlq redrive` of v2 is a
    # new attempt judged by the version guard like any delivery: v3 is applied, so v2 is stale, is not
    # applied over it, and the consumer says so (before: silently stale, while the docs said "applied afresh").
    caplog.set_level(logging.WARNING, logger="outbox.consumer")
    await write(sessions, writer, *(ev(topic, "x", v) for v in (1, 2, 3)))
    await drain_outbox(engine, bootstrap)
    group = f"g-{uuid.uuid4().hex[:8]}"
    consumer = IdempotentConsumer(
        group,
        [topic],
        sessions,
        ConsumerSettings(max_attempts=1, session_timeout_ms=6000, request_timeout_ms=10000),
    )
    cured = asyncio.Event()

    @consumer.handler(f"{topic}.*")
    async def apply(ctx: EventContext) -> None:
        if ctx.event.version == 2 and not cured.is_set():
            raise Reject("not yet")
        await record_effect(ctx)

    run_consumer(consumer)

    async def settled() -> bool:
        return consumer.stats.applied >= 2 and consumer.stats.dead_lettered >= 1

    await wait_until(settled, timeout=60, what="v1 and v3 applied, v2 dead-lettered")
    letters = await read_dead_letters(bootstrap, dead_letter_topic(group))
    assert [headers_of_letter(d)["ce_aggregateversion"] for d in letters] == ["2"]
    cured.set()
    assert await dlq_redrive(bootstrap, letters) == 1

    async def judged() -> bool:
        return consumer.stats.stale >= 1

    await wait_until(judged, timeout=60, what="the redriven v2 judged")
    assert await rows(engine, "SELECT version FROM effects WHERE consumer = :c ORDER BY seq", c=group) == [
        (1,),
        (3,),
    ]
    assert await rows(
        engine, "SELECT outcome FROM inbox WHERE consumer = :c AND aggregate_version = 2", c=group
    ) == [("stale",)]
    said = [r.getMessage() for r in caplog.records if "redriven" in r.getMessage()]
    assert said and "stale" in said[0] and "v3" in said[0], said


def headers_of_letter(letter: Any) -> dict[str, str]:
    return {k: v.decode() for k, v in letter.headers}


async def outbox_cli(*args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "outbox.ops.cli", *args, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()
