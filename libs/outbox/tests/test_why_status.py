"""`outbox why` by aggregate id, by event id and by guess, and `outbox status`'s exact retained count,
`--max-lag` and unreachable broker: through the real command against the real PostgreSQL and broker.

Every aggregate id here is a UUID, as in the services, so the guess has to tell it from an event id."""

from __future__ import annotations

import asyncio
import json
import os
import re
import socket
import subprocess
import sys
import uuid
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from outbox import ConsumerSettings, Event, EventContext, IdempotentConsumer, OutboxWriter
from outbox.testing import drain_outbox, record_effect
from testsupport import wait_until

pytestmark = pytest.mark.usefixtures("clean")
SETTINGS = ConsumerSettings(session_timeout_ms=6000, request_timeout_ms=10000)


async def outbox_cli(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "outbox",
        *args,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, **(env or {})},
    )
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def why_json(database_url: str, *args: str) -> Any:
    code, out, err = await outbox_cli("why", *args, "--database-url", database_url, "--json")
    assert code == 0, err
    return json.loads(out)


def ev(topic: str, aggregate: str, version: int) -> Event:
    return Event(
        topic=topic, type=f"{topic}.changed", aggregate_id=aggregate, data={"v": version}, version=version
    )


async def write(sessions: async_sessionmaker[AsyncSession], writer: OutboxWriter, *events: Event) -> None:
    for event in events:
        async with sessions() as session, session.begin():
            await writer.add(session, event)


async def scalar(engine: AsyncEngine, sql: str, **params: Any) -> Any:
    async with engine.connect() as conn:
        return (await conn.execute(text(sql), params)).scalar()


async def applied_up_to(
    engine: AsyncEngine,
    sessions: async_sessionmaker[AsyncSession],
    group: str,
    topic: str,
    aggregate: str,
    version: int,
) -> IdempotentConsumer:
    """A real consumer group applies the aggregate up to `version`, then stops (its consumer "went down").

    The stop is awaited: a consumer asked to stop still finishes the fetch in hand, and on a slow host that
    fetch can hold the versions the test writes next."""
    consumer = IdempotentConsumer(group, [topic], sessions, SETTINGS)

    @consumer.handler(f"{topic}.*")
    async def apply(ctx: EventContext) -> None:
        await record_effect(ctx)

    running = asyncio.create_task(consumer.run())

    async def reached() -> bool:
        sql = "SELECT version FROM consumer_versions WHERE consumer = :g AND aggregate_id = :a"
        return await scalar(engine, sql, g=group, a=aggregate) == version

    try:
        await wait_until(reached, timeout=60, what=f"{group} applied v{version}")
    finally:
        consumer.stop()
        await asyncio.wait_for(running, 30)
    return consumer


async def test_why_an_aggregate_uuid_shows_head_each_waiting_row_and_each_groups_version_lag_and_parked(
    engine: AsyncEngine,
    sessions: async_sessionmaker[AsyncSession],
    writer: OutboxWriter,
    topic: str,
    bootstrap: str,
    database_url: str,
) -> None:
    doc, group = str(uuid.uuid4()), f"g-{uuid.uuid4().hex[:8]}"
    await write(sessions, writer, ev(topic, doc, 1), ev(topic, doc, 2))
    await drain_outbox(engine, bootstrap)
    await applied_up_to(engine, sessions, group, topic, doc, 2)
    await write(sessions, writer, ev(topic, doc, 3), ev(topic, doc, 4), ev(topic, doc, 5))
    async with engine.begin() as conn:  # what a relay leaves after failures: v3 dead, v4 in backoff
        await conn.execute(
            text(
                "UPDATE outbox SET dead_at = now(), attempts = 3, last_error = 'RecordTooLargeError: big' "
                "WHERE aggregate_id = :a AND aggregate_version = 3"
            ),
            {"a": doc},
        )
        await conn.execute(
            text(
                "UPDATE outbox SET attempts = 1, last_error = 'KafkaTimeoutError', "
                "available_at = now() + interval '1 hour' WHERE aggregate_id = :a AND aggregate_version = 4"
            ),
            {"a": doc},
        )
        # What a gap-aware consumer of the group keeps when v7 arrives before v6: a parked copy.
        await conn.execute(
            text(
                "INSERT INTO inbox_parked (consumer, event_id, topic, aggregate_id, version, prev_version, record) "
                "VALUES (:g, gen_random_uuid(), :t, :a, 7, 6, '{}')"
            ),
            {"g": group, "t": topic, "a": doc},
        )
    dead_id = await scalar(
        engine, "SELECT id FROM outbox WHERE aggregate_version = 3 AND aggregate_id = :a", a=doc
    )

    for how in ([doc], ["--aggregate", doc]):  # guessed (a UUID no event has) and explicit
        report = await why_json(database_url, *how, "--consumer-db", database_url)
        assert report["kind"] == "aggregate" and report["aggregate_id"] == doc
        assert report["matched"].startswith("aggregate id")
        assert report["guessed"] == (how == [doc])
        [head] = report["heads"]
        assert (head["topic"], head["version"], head["previous"]) == (topic, 5, 4)
        states = {r["aggregate_version"]: r for r in report["rows"]}
        assert states[1]["state"] == states[2]["state"] == "published"
        assert states[3]["state"] == "dead" and states[3]["reason"].startswith("dead after 3 attempt(s)")
        assert states[4]["state"] == "backoff" and states[4]["reason"].startswith("backoff until ")
        assert states[5]["reason"] == f"held behind pending row #{dead_id} of its aggregate (order)"
        [side] = report["consumers"]
        [mine] = [s for s in side["states"] if s["group"] == group]
        assert (mine["topic"], mine["applied_version"], mine["head_version"], mine["behind"]) == (
            topic,
            2,
            5,
            3,
        )
        assert [(p["version"], p["prev_version"]) for p in mine["parked"]] == [(7, 6)]
        assert report["next"].startswith(
            f"row #{dead_id} is dead after 3 attempt(s) (RecordTooLargeError: big)"
        )
        assert f"outbox redrive --id {dead_id} --yes" in report["next"]

    code, human, err = await outbox_cli(
        "why", doc, "--database-url", database_url, "--consumer-db", database_url
    )
    assert code == 0, err
    assert f"{doc}: aggregate id (no event has this id)" in human
    assert f"head {topic}: v5 (before: v4)" in human
    assert f"group {group} {topic}: applied v2, 3 behind v5" in human
    assert "parked v7 since" in human and "waits for v6" in human
    assert f"next: row #{dead_id} is dead" in human


async def test_why_names_the_group_behind_and_where_an_event_is_for_each_group(
    engine: AsyncEngine,
    sessions: async_sessionmaker[AsyncSession],
    writer: OutboxWriter,
    topic: str,
    bootstrap: str,
    database_url: str,
) -> None:
    doc, group = str(uuid.uuid4()), f"indexer-{uuid.uuid4().hex[:6]}"
    await write(sessions, writer, ev(topic, doc, 1))
    await drain_outbox(engine, bootstrap)
    await applied_up_to(engine, sessions, group, topic, doc, 1)
    await write(sessions, writer, ev(topic, doc, 2), ev(topic, doc, 3))
    await drain_outbox(engine, bootstrap)  # published, but the group's consumer is down

    report = await why_json(database_url, doc, "--consumer-db", database_url)
    assert all(r["state"] == "published" for r in report["rows"])
    assert report["next"] == (
        f"consumer group {group} is 2 version(s) behind (applied v1, head v3): is its consumer running? "
        f"see `outbox status --group {group}`"
    )

    first, last = [
        str(await scalar(engine, "SELECT event_id FROM outbox WHERE aggregate_version = :v", v=v))
        for v in (1, 3)
    ]
    for how in ([first], ["--event", first]):  # an event id, guessed and explicit
        event = await why_json(database_url, *how, "--consumer-db", database_url)
        assert event["kind"] == "event" and event["matched"] == "event id (its outbox row)"
        assert event["aggregate_id"] == doc and [r["aggregate_version"] for r in event["rows"]] == [1]
        [state] = [s for s in event["consumers"][0]["states"] if s["group"] == group]
        assert state["event"].startswith(f"applied from {topic}[")
    event = await why_json(database_url, last, "--consumer-db", database_url)
    [state] = [s for s in event["consumers"][0]["states"] if s["group"] == group]
    assert state["event"].startswith("not arrived: published at ") and state["event"].endswith(
        "the group is at v1"
    )
    assert event["next"].startswith(f"consumer group {group} is 2 version(s) behind")
    # A consumer database that never heard of the event still says where it stands, and no consumer db: a hint.
    event = await why_json(database_url, "--event", last)
    assert event["consumers"] == [] and "--consumer-db" in event["next"]

    async with (
        engine.begin() as conn
    ):  # v1's row pruned after its retention: the consumer's inbox still knows it
        await conn.execute(text("DELETE FROM outbox WHERE event_id = CAST(:e AS uuid)"), {"e": first})
    for how in ([first], ["--event", first]):
        event = await why_json(database_url, *how, "--consumer-db", database_url)
        assert event["kind"] == "event" and event["matched"].startswith("event id (in a consumer database")
        assert event["aggregate_id"] == doc and event["rows"] == []
        [state] = [s for s in event["consumers"][0]["states"] if s["group"] == group]
        assert state["event"].startswith(f"applied from {topic}[") and state["applied_version"] == 1

    code, out, err = await outbox_cli("why", "--event", str(uuid.uuid4()), "--database-url", database_url)
    assert code == 1 and "nothing" in out and "try --aggregate" in err
    code, _, err = await outbox_cli("why", "--event", "not-a-uuid", "--database-url", database_url)
    assert code == 2 and "not an event id" in err


async def test_status_counts_retained_rows_exactly_without_analyze(
    engine: AsyncEngine,
    sessions: async_sessionmaker[AsyncSession],
    writer: OutboxWriter,
    topic: str,
    bootstrap: str,
    database_url: str,
) -> None:
    await write(sessions, writer, *(ev(topic, str(uuid.uuid4()), 1) for _ in range(23)))
    await drain_outbox(engine, bootstrap)
    await write(sessions, writer, ev(topic, str(uuid.uuid4()), 1))  # one pending, not retained
    assert await scalar(engine, "SELECT reltuples FROM pg_class WHERE oid = 'outbox'::regclass") <= 0
    code, out, err = await outbox_cli("status", "--database-url", database_url, "--json")
    assert code == 0, err
    status = json.loads(out)
    assert (status["published_retained"], status["published_retained_is_estimate"]) == (23, False)
    assert status["pending"] == 1
    code, human, _ = await outbox_cli("status", "--database-url", database_url)
    assert "retained 23" in human and "retained ~" not in human
    async with engine.begin() as conn:  # past the exact count's cap, before any ANALYZE: a lower bound
        await conn.execute(
            text(
                "INSERT INTO outbox (event_id, topic, event_type, source, aggregate_id, payload, published_at) "
                "SELECT gen_random_uuid(), :t, 'x', 'test', g::text, '{}', now() FROM generate_series(1, 10000) g"
            ),
            {"t": topic},
        )
    status = json.loads((await outbox_cli("status", "--database-url", database_url, "--json"))[1])
    assert status["published_retained_is_estimate"] and status["published_retained"] >= 10_000
    # `≥10000` until autovacuum's ANALYZE, which may run meanwhile: then the planner's scaled estimate.
    human = (await outbox_cli("status", "--database-url", database_url))[1]
    assert re.search(r"retained (≥10000|~\d+)\n", human), human


async def test_status_max_lag_exits_1_past_it_and_an_unreachable_broker_is_one_line(
    engine: AsyncEngine,
    sessions: async_sessionmaker[AsyncSession],
    writer: OutboxWriter,
    topic: str,
    bootstrap: str,
    database_url: str,
) -> None:
    doc, group = str(uuid.uuid4()), f"g-{uuid.uuid4().hex[:8]}"
    await write(sessions, writer, ev(topic, doc, 1))
    await drain_outbox(engine, bootstrap)
    await applied_up_to(engine, sessions, group, topic, doc, 1)
    await write(sessions, writer, ev(topic, doc, 2), ev(topic, doc, 3))
    await drain_outbox(engine, bootstrap)  # 2 records the stopped group has not consumed

    args = ("status", "--database-url", database_url, "--group", group)
    code, out, err = await outbox_cli(*args, "--max-lag", "2")
    assert code == 0, err
    assert f"group {group}  lag 2" in out
    code, out, err = await outbox_cli(*args, "--max-lag", "1")
    assert code == 1 and f"outbox status: group {group}: lag 2 > 1" in err
    code, out, _ = await outbox_cli(*args, "--json")  # no threshold: lag is reported, not judged
    assert code == 0 and json.loads(out)["consumer_groups"][group]["lag"] == 2

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        closed = f"127.0.0.1:{s.getsockname()[1]}"
    code, out, err = await outbox_cli(
        "status", "--database-url", database_url, env={"KAFKA_BOOTSTRAP": closed}
    )
    assert code == 1
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines == [lines[0]] and lines[0].startswith("outbox status: consumer groups' lag unknown: ")
    assert f"cannot reach broker {closed} (KAFKA_BOOTSTRAP)" in lines[0]
    assert "Traceback" not in err and "Unclosed" not in err
    assert f"lag unknown: cannot reach broker {closed}" in out
    status = json.loads((await outbox_cli(*args, "--json", env={"KAFKA_BOOTSTRAP": closed}))[1])
    assert status["broker_error"].startswith(f"cannot reach broker {closed}")
    assert status["consumer_groups"][group]["lag"] is None
