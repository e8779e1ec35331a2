"""A seeded, bounded randomized storm over the whole library (issue 21), on real PostgreSQL, the real broker
and real relay processes:

- writers: transactions of 1-3 events per aggregate, versioned `changed` and `noise` events mixed with
  unversioned `note` events, a tenth of them rolled back; now and then a poison event (over the relays'
  message size) that the relay dead-letters;
- 3 relay processes with `block_on_dead` (a dead row holds its aggregate's successors), each SIGKILLed and
  restarted at random; an operator loop that repairs dead rows and redrives them (`outbox redrive`), and
  replays an aggregate's published rows (`outbox replay`);
- one consumer: `changed` gap-aware and version-guarded, `note` unguarded, `noise` ignored.

Then, per aggregate: nothing committed is missing from the topic or the inbox (no loss); the first
publication of each version comes in version order (topic order); the consumer applied every `changed`
version once, in version order (applied order); and the backlog drains: no pending, dead or parked row.

OUTBOX_STRESS_SEED picks the storm (the suite runs one seed), OUTBOX_STRESS_SECONDS its length.
"""

from __future__ import annotations

import asyncio
import os
import random
import sys
import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from outbox import ConsumerSettings, Event, IdempotentConsumer, OutboxWriter
from outbox.testing import headers_of, read_topic, record_effect, wire
from testsupport import ServiceProcess, wait_until

SEED = int(os.environ.get("OUTBOX_STRESS_SEED", "27"))
STORM_S = float(os.environ.get("OUTBOX_STRESS_SECONDS", "20"))
AGGREGATES = 24
RELAYS = 3
MAX_MESSAGE_BYTES = 4096
RELAY_ENV = {
    "OUTBOX_RELAY_BLOCK_ON_DEAD": "true",
    "OUTBOX_RELAY_BATCH_SIZE": "10",  # small claims: successors of a redriven row fill them easily
    "OUTBOX_RELAY_MAX_ATTEMPTS": "2",
    "OUTBOX_MAX_MESSAGE_BYTES": str(MAX_MESSAGE_BYTES),
}


class RolledBack(Exception):
    """Raised inside a writer's transaction to roll it back."""


@dataclass
class Ledger:
    """What the storm did, to explain a failure."""

    def __repr__(self) -> str:
        counts = ", ".join(f"{k}={v}" for k, v in vars(self).items() if k != "versions")
        return f"Ledger({counts}, events per aggregate up to {max(self.versions.values(), default=0)})"

    committed_tx: int = 0
    rolled_back_tx: int = 0
    poison: int = 0
    kills: int = 0
    redrives: int = 0
    replays: int = 0
    versions: dict[str, int] = field(default_factory=lambda: defaultdict(int))


def cli(database_url: str, bootstrap: str, *args: str) -> list[str]:
    return [sys.executable, "-m", "outbox.ops.cli", *args, "--database-url", database_url]


async def run_cli(argv: list[str], env: dict[str, str]) -> str:
    proc = await asyncio.create_subprocess_exec(
        *argv,
        env={**os.environ, **env},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, out.decode()
    return out.decode()


async def writer_loop(
    sessions: async_sessionmaker[AsyncSession],
    writer: OutboxWriter,
    topic: str,
    aggregates: list[str],
    ledger: Ledger,
    rnd: random.Random,
    stop: asyncio.Event,
) -> None:
    """Each loop owns its aggregates, so the versions it hands out are each aggregate's next ones."""
    while not stop.is_set():
        agg = rnd.choice(aggregates)
        version = ledger.versions[agg]
        events = []
        for _ in range(rnd.randint(1, 3)):
            kind = rnd.choices(["changed", "noise", "note"], weights=[70, 10, 20])[0]
            data: dict[str, Any] = {"n": rnd.random()}
            if kind != "note" and rnd.random() < 0.01:
                data["pad"] = "x" * MAX_MESSAGE_BYTES  # poison: over the relays' message size
                ledger.poison += 1
            if kind == "note":
                events.append(Event(topic=topic, type=f"{topic}.note", aggregate_id=agg, data=data))
            else:
                version += 1
                events.append(
                    Event(topic=topic, type=f"{topic}.{kind}", aggregate_id=agg, data=data, version=version)
                )
        try:
            async with sessions() as session, session.begin():
                await writer.add(session, *events)
                if rnd.random() < 0.1:
                    raise RolledBack
        except RolledBack:
            ledger.rolled_back_tx += 1
        else:
            ledger.committed_tx += 1
            ledger.versions[agg] = version
        await asyncio.sleep(rnd.uniform(0.0, 0.06))  # pacing


async def relay_killer(
    relays: list[ServiceProcess], ledger: Ledger, rnd: random.Random, stop: asyncio.Event
) -> None:
    while not stop.is_set():
        await asyncio.sleep(rnd.uniform(1.5, 3.5))  # between kills
        victim = rnd.choice(relays)
        victim.kill()
        ledger.kills += 1
        await asyncio.sleep(rnd.uniform(0.2, 1.0))  # the outage
        victim.start()


async def repair_and_redrive(engine: AsyncEngine, argv: list[str], env: dict[str, str]) -> int:
    """What an operator does about a poison row: fix its payload, then redrive it."""
    async with engine.begin() as conn:
        fixed = (
            await conn.execute(
                text(
                    "UPDATE outbox SET payload = jsonb_build_object('repaired', true) "
                    "WHERE dead_at IS NOT NULL AND payload ? 'pad'"
                )
            )
        ).rowcount
    if fixed:
        await run_cli(argv, env)
    return int(fixed or 0)


async def operator_loop(
    engine: AsyncEngine,
    database_url: str,
    bootstrap: str,
    topic: str,
    aggregates: list[str],
    ledger: Ledger,
    rnd: random.Random,
    stop: asyncio.Event,
) -> None:
    env = {"KAFKA_BOOTSTRAP": bootstrap}
    redrive = cli(database_url, bootstrap, "redrive", "--yes")
    while not stop.is_set():
        await asyncio.sleep(rnd.uniform(1.0, 2.5))  # between operator actions
        if rnd.random() < 0.6:
            ledger.redrives += await repair_and_redrive(engine, redrive, env)
        else:
            agg = rnd.choice(aggregates)
            await run_cli(
                cli(database_url, bootstrap, "replay", "--topic", topic, "--aggregate-id", agg, "--yes"), env
            )
            ledger.replays += 1


BACKLOG = text(
    "SELECT (SELECT count(*) FROM outbox WHERE published_at IS NULL AND dead_at IS NULL) AS pending,"
    " (SELECT count(*) FROM outbox WHERE dead_at IS NOT NULL AND published_at IS NULL) AS dead,"
    " (SELECT count(*) FROM inbox_parked WHERE consumer = :c) AS parked,"
    " (SELECT count(*) FROM outbox o WHERE NOT EXISTS"
    "   (SELECT 1 FROM inbox i WHERE i.consumer = :c AND i.event_id = o.event_id)) AS not_in_inbox"
)


async def test_a_seeded_storm_loses_nothing_and_keeps_every_aggregate_in_order(
    engine: AsyncEngine,
    database_url: str,
    sessions: async_sessionmaker[AsyncSession],
    writer: OutboxWriter,
    topic: str,
    bootstrap: str,
    log_dir: Path,
    clean: None,
) -> None:
    rnd = random.Random(SEED)
    ledger = Ledger()
    aggregates = [f"agg-{i}-{uuid.uuid4().hex[:6]}" for i in range(AGGREGATES)]
    env = {"KAFKA_BOOTSTRAP": bootstrap, **RELAY_ENV}
    relays = [
        ServiceProcess(
            f"stress-relay-{i}",
            [*cli(database_url, bootstrap, "relay"), "--name", f"r{i}"],
            env=env,
            log_dir=log_dir,
        )
        for i in range(RELAYS)
    ]
    consumer = IdempotentConsumer(
        f"stress-{uuid.uuid4().hex[:8]}",
        [topic],
        sessions,
        ConsumerSettings(session_timeout_ms=6000, request_timeout_ms=10000, park_sweep_interval_s=1.0),
    )
    consumer.handler(f"{topic}.changed", gap_aware=True)(record_effect)
    consumer.handler(f"{topic}.note", version_guard=False)(record_effect)
    consumer.ignore(f"{topic}.noise")

    stop = asyncio.Event()
    for relay in relays:
        relay.start()
    consuming = asyncio.create_task(consumer.run())
    groups = [aggregates[i::4] for i in range(4)]
    storm = [
        *(
            asyncio.create_task(
                writer_loop(sessions, writer, topic, g, ledger, random.Random(rnd.random()), stop)
            )
            for g in groups
        ),
        asyncio.create_task(relay_killer(relays, ledger, random.Random(rnd.random()), stop)),
        asyncio.create_task(
            operator_loop(
                engine, database_url, bootstrap, topic, aggregates, ledger, random.Random(rnd.random()), stop
            )
        ),
    ]
    try:
        await asyncio.sleep(STORM_S)
        stop.set()
        await asyncio.gather(*storm)
        for relay in relays:
            if not relay.alive:
                relay.start()

        redrive = cli(database_url, bootstrap, "redrive", "--yes")

        left: dict[str, int] = {}

        async def drained() -> bool:
            ledger.redrives += await repair_and_redrive(engine, redrive, {"KAFKA_BOOTSTRAP": bootstrap})
            async with engine.connect() as conn:
                row = (await conn.execute(BACKLOG, {"c": consumer.name})).one()
            left.update(row._asdict())
            return not any(left.values())

        try:
            await wait_until(drained, timeout=60, interval=0.5, what="the backlog to drain")
        except AssertionError as exc:
            raise AssertionError(f"{exc}: {left}; storm {ledger}") from None
    finally:
        consumer.stop()
        await asyncio.wait_for(consuming, 30)
        for relay in relays:
            relay.terminate()

    async with engine.connect() as conn:
        committed = (
            await conn.execute(
                text("SELECT event_id, aggregate_id, aggregate_version, event_type FROM outbox ORDER BY id")
            )
        ).all()
        inbox = dict(
            (
                await conn.execute(
                    text("SELECT event_id, outcome FROM inbox WHERE consumer = :c"), {"c": consumer.name}
                )
            ).all()
        )
        effects = (
            await conn.execute(
                text("SELECT aggregate_id, version, event_id FROM effects WHERE consumer = :c ORDER BY seq"),
                {"c": consumer.name},
            )
        ).all()
    assert ledger.committed_tx > 100 and ledger.rolled_back_tx > 0 and ledger.kills > 0, ledger
    records = await read_topic(bootstrap, wire(topic), expect=len(committed) + 10**6, timeout=8)

    # No loss: every committed event is on the topic and in the inbox, with the outcome its type calls for.
    on_topic = {headers_of(r)["ce_id"] for r in records}
    assert {str(e) for e, *_ in committed} <= on_topic
    want = {"changed": "applied", "note": "applied", "noise": "ignored"}
    wrong = [
        (str(e), t, inbox.get(e)) for e, _, _, t in committed if inbox.get(e) != want[t.rsplit(".", 1)[1]]
    ]
    assert not wrong, f"{len(wrong)} events with the wrong outcome, e.g. {wrong[:5]}"

    # Topic order: each aggregate's versions first appear in version order (replays repeat old ones later).
    first_seen: dict[str, list[int]] = defaultdict(list)
    seen_ids: set[str] = set()
    for r in sorted(records, key=lambda r: (r.partition, r.offset)):
        h = headers_of(r)
        if h["ce_id"] in seen_ids or "ce_aggregateversion" not in h:
            continue
        seen_ids.add(h["ce_id"])
        first_seen[r.key.decode()].append(int(h["ce_aggregateversion"]))
    disorder = {a: v for a, v in first_seen.items() if v != sorted(v)}
    assert not disorder, (
        f"topic order broken for {len(disorder)} aggregates, e.g. {next(iter(disorder.items()))}"
    )

    # Applied order: every committed `changed` version applied once, in version order.
    changed = defaultdict(list)
    for _, agg, version, t in committed:
        if t.endswith(".changed"):
            changed[agg].append(version)
    applied = defaultdict(list)
    for agg, version, _ in effects:
        if version is not None:
            applied[agg].append(version)
    assert {a: sorted(v) for a, v in changed.items()} == dict(applied), (
        "applied versions differ from committed"
    )
    print(f"\nstress seed {SEED}: {ledger}, {len(committed)} events, {len(records)} records on the topic")
