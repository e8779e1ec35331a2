"""The `outbox` command as an operator meets it (issue 24): help on every option, one-line errors, durations,
replay's dry-run sample, the dead-letter workflow (fast empty list, unknown group, redrive marks, ack and
purge with a dry run) and `outbox tail`, against the real PostgreSQL and broker."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from aiokafka import ConsumerRecord
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from outbox import Event, OutboxWriter
from outbox.consumer.dead_letters import DeadLetterSender
from outbox.kafka import ensure_topics, start_producer
from outbox.ops.cli import _parser
from outbox.ops.when import parse_when
from outbox.testing import drain_outbox, wire

WIDE = {"COLUMNS": "200"}


async def outbox(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "outbox",
        *args,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, **WIDE, **(env or {})},
    )
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def outbox_json(*args: str) -> Any:
    code, out, err = await outbox(*args, "--json")
    assert code == 0, err
    return json.loads(out)


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def test_every_option_of_every_command_has_help() -> None:
    missing = []
    top = _parser()
    commands = _subparsers(top)
    assert {"dlq", "replay", "redrive", "skip-gap", "tail", "status", "why", "trace"} <= set(commands)
    for name, command in [("outbox", top), *commands.items()]:
        for action in command._actions:
            if isinstance(action, argparse._HelpAction | argparse._SubParsersAction):
                continue
            text = action.help
            if not text or text == argparse.SUPPRESS or "PARTIAL_REPLAY" in text:
                missing.append(f"{name} {'/'.join(action.option_strings) or action.dest}")
    assert missing == []


async def test_every_commands_help_prints() -> None:
    for name in _subparsers(_parser()):
        code, out, _ = await outbox(name, "--help")
        assert code == 0 and "--debug" in out and "show this help" in out, name


async def test_a_wrong_database_is_one_line_and_exit_2(database_url: str) -> None:
    wrong_name = database_url.rsplit("/", 1)[0] + f"/no_such_db_{uuid.uuid4().hex[:6]}"
    unreachable = "postgresql://nobody@127.0.0.1:1/x"
    cases = [(command, wrong_name, "does not exist") for command in (["redrive"], ["status"], ["why", "x"])]
    cases += [
        (["replay"], unreachable, "cannot connect"),
        (["skip-gap", "--consumer", "c", "--topic", "t", "--aggregate", "a"], "nonsense", "URL"),
    ]
    for command, url, says in cases:
        code, out, err = await outbox(*command, "--database-url", url)
        assert code == 2, (command, url, err)
        assert len(err.strip().splitlines()) == 1 and says in err and "Traceback" not in err, err
        assert err.startswith(f"outbox {command[0]}: ") and out == ""
    code, _, err = await outbox("replay", "--database-url", wrong_name, "--debug")
    assert code == 1 and "Traceback" in err  # --debug: the traceback, for a bug report


async def test_an_unreachable_broker_and_a_missing_file_are_one_line() -> None:
    code, _, err = await outbox("dlq", "list", "--group", "g", env={"KAFKA_BOOTSTRAP": "127.0.0.1:1"})
    assert (
        code == 2 and len(err.strip().splitlines()) == 1 and "127.0.0.1:1" in err and "KAFKA_BOOTSTRAP" in err
    )
    code, _, err = await outbox("trace", "/nonexistent/spans.jsonl")
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert err.startswith("outbox trace: no spans file at /nonexistent/spans.jsonl")


def test_durations_and_timestamps() -> None:
    now = datetime(2026, 1, 31, 12, 0, tzinfo=UTC)
    assert parse_when("15m", now=now) == now - timedelta(minutes=15)
    assert parse_when("2h", now=now) == now - timedelta(hours=2)
    assert parse_when("1d", now=now) == now - timedelta(days=1)
    assert parse_when("1h30m", now=now) == now - timedelta(minutes=90)
    assert parse_when("2026-01-30T08:00+00:00") == datetime(2026, 1, 30, 8, 0, tzinfo=UTC)
    assert parse_when("2026-01-30").tzinfo is not None  # no offset: local time, made explicit
    for wrong in ("yesterday", "2 hours", "15", "-1d"):
        with pytest.raises(argparse.ArgumentTypeError, match="is not a duration ago"):
            parse_when(wrong)


@pytest.mark.usefixtures("clean")
async def test_replay_dry_run_shows_a_sample_and_takes_durations(
    engine: Any,
    sessions: async_sessionmaker[AsyncSession],
    writer: OutboxWriter,
    topic: str,
    bootstrap: str,
    database_url: str,
) -> None:
    old = datetime.now(UTC) - timedelta(days=3)
    async with sessions() as session, session.begin():
        await writer.add(
            session,
            *(
                Event(topic=topic, type=f"{topic}.changed", aggregate_id=f"a{i}", data={}, version=1)
                for i in range(4)
            ),
            Event(topic=topic, type=f"{topic}.changed", aggregate_id="old", data={}, version=1, time=old),
        )
    await drain_outbox(engine, bootstrap)
    base = ("replay", "--database-url", database_url, "--topic", topic)
    dry = await outbox_json(*base, "--sample", "3")
    assert dry["would_replay"] == 5 and [r["aggregate_id"] for r in dry["sample"]] == ["a0", "a1", "a2"]
    assert set(dry["sample"][0]) >= {
        "id",
        "topic",
        "event_type",
        "aggregate_id",
        "aggregate_version",
        "occurred_at",
    }
    recent = await outbox_json(*base, "--since", "1d")
    assert recent["would_replay"] == 4  # the 3-day-old event is out of the window
    assert (await outbox_json(*base, "--until", "2d"))["would_replay"] == 1
    code, human, _ = await outbox(*base, "--since", "1d")
    assert (
        code == 0
        and "a3" in human
        and f"{topic}.changed" in human
        and "4 event(s) would be replayed" in human
    )
    code, _, err = await outbox(*base, "--since", "yesterday")
    assert code == 2 and "'yesterday' is not a duration ago" in err and "Traceback" not in err
    assert (await outbox_json(*base, "--since", "1d", "--yes"))["replayed"] == 4


async def test_dlq_list_of_an_empty_dead_letter_topic_answers_and_an_unknown_group_is_an_error(
    bootstrap: str,
) -> None:
    group = f"g-{uuid.uuid4().hex[:8]}"
    await ensure_topics(bootstrap, [wire(f"{group}.dlq")])  # what a consumer creates when it starts
    listed = await outbox_json("dlq", "list", "--group", group)
    assert listed["count"] == 0 and listed["dead_letters"] == []
    code, out, err = await outbox("dlq", "list", "--group", group)
    assert code == 0 and "(empty)" in out and err == ""  # and no INFO lines from the library
    code, _, err = await outbox("dlq", "list", "--group", group[:-1])
    assert code == 2 and f"no consumer group {group[:-1]!r}" in err and f"did you mean {group}" in err
    assert len(err.strip().splitlines()) == 1


async def _dead_letters(bootstrap: str, group: str, topic: str, n: int) -> list[str]:
    """Dead letters written as the consumer writes them (its DeadLetterSender), of records first sent to
    `topic`; returns their event ids."""
    await ensure_topics(bootstrap, [wire(topic), wire(f"{group}.dlq")])
    producer = await start_producer(bootstrap)
    ids = []
    try:
        sender = DeadLetterSender(producer, wire(f"{group}.dlq"), group)
        for i in range(n):
            event_id = str(uuid.uuid4())
            headers = [
                ("ce_id", event_id.encode()),
                ("ce_type", f"{topic}.changed".encode()),
                ("ce_subject", f"a{i}".encode()),
            ]
            record = ConsumerRecord(
                wire(topic), 0, i, 0, 0, f"a{i}".encode(), json.dumps({"i": i}).encode(), None, 0, 0, headers
            )
            await sender.send(record, "ValueError: cannot apply", attempts=3)
            ids.append(event_id)
    finally:
        await producer.stop()
    return ids


async def test_redrive_marks_ack_and_purge_with_a_dry_run(bootstrap: str, topic: str) -> None:
    group = f"g-{uuid.uuid4().hex[:8]}"
    await _dead_letters(bootstrap, group, topic, 3)
    listed = await outbox_json("dlq", "list", "--group", group)
    assert listed["count"] == 3 and {d["state"] for d in listed["dead_letters"]} == {"dead"}
    first, second, third = (d["id"] for d in listed["dead_letters"])

    assert (await outbox_json("dlq", "redrive", "--group", group, "--id", first))["dry_run"] is True
    done = await outbox_json("dlq", "redrive", "--group", group, "--id", first, "--yes")
    assert done["redriven"] == 1 and "mark_error" not in done
    states = {d["id"]: d for d in (await outbox_json("dlq", "list", "--group", group))["dead_letters"]}
    assert (
        states[first]["state"] == "redriven" and states[first]["redriven_at"] and states[first]["marked_by"]
    )
    assert states[second]["state"] == "dead"
    # A second `redrive --yes` without ids takes only what was not redriven yet.
    again = await outbox_json("dlq", "redrive", "--group", group)
    assert [d["id"] for d in again["would_redrive"]] == [second, third]
    code, human, _ = await outbox("dlq", "list", "--group", group)
    assert code == 0 and "redriven" in human and "dead 2" in human

    dry = await outbox_json("dlq", "ack", "--group", group, "--id", second)
    assert [d["id"] for d in dry["would_ack"]] == [second]
    assert (await outbox_json("dlq", "list", "--group", group, "--state", "acked"))["count"] == 0  # dry run
    assert (await outbox_json("dlq", "ack", "--group", group, "--id", second, "--yes"))["acked"] == 1

    code, _, err = await outbox("dlq", "purge", "--group", group, "--id", third)
    assert code == 1 and "neither redriven nor acknowledged" in err
    dry = await outbox_json("dlq", "purge", "--group", group)
    assert sorted(d["id"] for d in dry["would_purge"]) == sorted([first, second])
    assert (await outbox_json("dlq", "list", "--group", group))["count"] == 3  # the dry run hid nothing
    assert (await outbox_json("dlq", "purge", "--group", group, "--yes"))["purged"] == 2
    remaining = await outbox_json("dlq", "list", "--group", group)
    assert [d["id"] for d in remaining["dead_letters"]] == [third]
    assert remaining["states"] == {"dead": 1, "redriven": 0, "acked": 0, "purged": 2}
    everything = await outbox_json("dlq", "list", "--group", group, "--all")
    assert {d["id"]: d["state"] for d in everything["dead_letters"]} == {
        first: "purged",
        second: "purged",
        third: "dead",
    }


@pytest.mark.usefixtures("clean")
async def test_tail_decodes_events(
    engine: Any, sessions: async_sessionmaker[AsyncSession], writer: OutboxWriter, topic: str, bootstrap: str
) -> None:
    events = [
        Event(topic=topic, type=f"{topic}.created", aggregate_id="doc-1", data={"title": "first"}, version=1),
        Event(
            topic=topic, type=f"{topic}.renamed", aggregate_id="doc-1", data={"title": "second"}, version=2
        ),
        Event(topic=topic, type=f"{topic}.created", aggregate_id="doc-2", data={"title": "other"}, version=1),
    ]
    async with sessions() as session, session.begin():
        await writer.add(session, *events)
    await drain_outbox(engine, bootstrap)

    code, out, err = await outbox("tail", topic, "--json")
    assert code == 0, err
    lines = [json.loads(x) for x in out.splitlines()]
    assert sorted(x["event"]["id"] for x in lines) == sorted(str(e.id) for e in events)
    renamed = next(x for x in lines if x["event"]["type"] == f"{topic}.renamed")
    assert renamed["topic"] == topic and renamed["key"] == "doc-1" and renamed["data"]["title"] == "second"
    assert renamed["event"]["subject"] == "doc-1" and renamed["event"]["aggregateversion"] == "2"

    only = [
        json.loads(x)
        for x in (await outbox("tail", topic, "--key", "doc-1", "-n", "1", "--json"))[1].splitlines()
    ]
    assert [x["event"]["type"] for x in only] == [f"{topic}.renamed"]  # the last one of that key
    typed = (await outbox("tail", topic, "--type", f"{topic}.created", "--from-beginning", "--json"))[1]
    assert sorted(json.loads(x)["key"] for x in typed.splitlines()) == ["doc-1", "doc-2"]

    code, human, _ = await outbox("tail", topic, "--key", "doc-2")
    assert (
        code == 0
        and f"{topic}.created" in human
        and '"title": "other"' in human
        and str(events[2].id) in human
    )
    # --follow: a record written while it runs shows up (before its start it would be among the last 5).
    follower = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "outbox",
        "tail",
        topic,
        "--key",
        "doc-3",
        "-n",
        "5",
        "--follow",
        "--json",
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        late = Event(
            topic=topic, type=f"{topic}.created", aggregate_id="doc-3", data={"title": "late"}, version=1
        )
        async with sessions() as session, session.begin():
            await writer.add(session, late)
        await drain_outbox(engine, bootstrap)
        assert follower.stdout is not None
        followed = json.loads(await asyncio.wait_for(follower.stdout.readline(), 60))
        assert followed["event"]["id"] == str(late.id) and followed["data"]["title"] == "late"
    finally:
        follower.terminate()
        await follower.wait()

    code, _, err = await outbox("tail", f"{topic}-missing")
    assert code == 2 and f"no topic {wire(topic + '-missing')!r}" in err


async def test_topics_written_in_large_batches_are_read_to_their_true_end(bootstrap: str) -> None:
    """A relay, or `dlq redrive --yes` writing its marks, puts hundreds of records in one batch. Tansu
    answers ListOffsets(latest) with the first offset of the last batch + 1: a read stopping there lost the
    rest of that batch (`dlq list` showed 14,000 of 20,000 dead letters; `tail -n` missed the newest)."""
    group = f"g-{uuid.uuid4().hex[:8]}"
    dlq, n = wire(f"{group}.dlq"), 3000
    await ensure_topics(bootstrap, [dlq])
    producer = await start_producer(bootstrap, idempotent=False, linger_ms=200, max_batch_size=1 << 20)
    try:
        sent = [
            await producer.send(
                dlq,
                value=json.dumps({"i": i}).encode(),
                key=b"k",  # one partition: its every record in a few large batches
                headers=[
                    ("ce_id", str(uuid.uuid4()).encode()),
                    ("ce_type", b"t.changed"),
                    ("dlq_reason", b"boom"),
                    ("dlq_original_offset", b"%d" % i),
                ],
            )
            for i in range(n)
        ]
        offsets = [meta.offset for meta in await asyncio.gather(*sent)]
    finally:
        await producer.stop()
    assert offsets == list(range(offsets[0], offsets[0] + n))

    assert (await outbox_json("dlq", "list", "--group", group))["count"] == n
    code, out, err = await outbox("dlq", "redrive", "--group", group, "--limit", "5")  # a dry run, for people
    assert code == 0 and f"… {n - 5} more" in out and f"dry run: {n} dead letter(s)" in out, err
    assert len(out.splitlines()) < 12  # the table holds 5 of them, not n (rich took 14 s for 20,000 rows)
    code, out, err = await outbox("tail", f"{group}.dlq", "-n", "3", "--json")
    assert code == 0, err
    assert [json.loads(x)["offset"] for x in out.splitlines()] == offsets[-3:]
    code, out, err = await outbox("tail", f"{group}.dlq", "--from-beginning", "--json")
    assert code == 0 and len(out.splitlines()) == n, err
