"""Several relays split an outbox's aggregates into shares (`relay.shares`): disjoint, covering every
share, each relay publishing its own; a relay that stops hands its shares to the others. Order per
aggregate holds throughout (the claim's own checks, shares or not)."""

from __future__ import annotations

import asyncio
import dataclasses

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from libs.outbox.tests.relay_support import versions_by_key
from outbox import Event, OutboxWriter, Relay, RelaySettings
from outbox.testing import read_topic, wire
from testsupport import wait_until

pytestmark = pytest.mark.usefixtures("clean")

AGGREGATES = 40
VERSIONS = 10


async def backlog(
    sessions: async_sessionmaker[AsyncSession], writer: OutboxWriter, topic: str, first: int
) -> None:
    async with sessions() as session, session.begin():
        await writer.add(
            session,
            *(
                Event(topic=topic, type=f"{topic}.changed", aggregate_id=f"agg-{a}", data={"v": v}, version=v)
                for v in range(first, first + VERSIONS)
                for a in range(AGGREGATES)
            ),
        )


async def pending(engine: AsyncEngine) -> int:
    async with engine.connect() as conn:
        return int(
            (await conn.execute(text("SELECT count(*) FROM outbox WHERE published_at IS NULL"))).scalar_one()
        )


async def test_two_relays_split_the_shares_publish_their_own_and_one_takes_over_when_the_other_stops(
    engine: AsyncEngine,
    sessions: async_sessionmaker[AsyncSession],
    writer: OutboxWriter,
    topic: str,
    bootstrap: str,
) -> None:
    settings = RelaySettings(bootstrap=bootstrap, batch_size=50, shares=16, share_rebalance_s=0.2)
    first, second = Relay(engine, settings, name="share-a"), Relay(engine, settings, name="share-b")
    tasks = [asyncio.create_task(first.run()), asyncio.create_task(second.run())]
    try:

        async def split() -> bool:
            a, b = first.leases, second.leases
            return a is not None and b is not None and len(a.held) == len(b.held) == 8

        await wait_until(split, timeout=30, what="two relays holding eight shares each")
        assert first.leases and second.leases
        assert not first.leases.held & second.leases.held
        assert first.leases.held | second.leases.held == set(range(16))

        await backlog(sessions, writer, topic, 1)

        async def drained() -> bool:
            return await pending(engine) == 0

        await wait_until(drained, timeout=60, what="the backlog published")
        assert first.stats.published > 0 and second.stats.published > 0
        assert first.stats.published + second.stats.published == AGGREGATES * VERSIONS

        second.stop()
        await tasks[1]

        async def taken_over() -> bool:
            return first.leases is not None and len(first.leases.held) == 16

        await wait_until(taken_over, timeout=30, what="the remaining relay holding every share")
        before = first.stats.published
        await backlog(sessions, writer, topic, VERSIONS + 1)
        await wait_until(drained, timeout=60, what="the second backlog published by the one relay left")
        assert first.stats.published - before == AGGREGATES * VERSIONS
    finally:
        for relay in (first, second):
            relay.stop()
        await asyncio.gather(*tasks, return_exceptions=True)

    records = await read_topic(bootstrap, wire(topic), expect=2 * AGGREGATES * VERSIONS, timeout=30)
    assert len(records) == 2 * AGGREGATES * VERSIONS
    for versions in versions_by_key(records).values():
        assert versions == list(range(1, 2 * VERSIONS + 1))


async def test_without_shares_a_relay_claims_from_every_aggregate(
    engine: AsyncEngine,
    sessions: async_sessionmaker[AsyncSession],
    writer: OutboxWriter,
    topic: str,
    bootstrap: str,
) -> None:
    settings = dataclasses.replace(RelaySettings(bootstrap=bootstrap, batch_size=100), shares=0)
    relay = Relay(engine, settings, name="unshared")
    task = asyncio.create_task(relay.run())
    try:
        await backlog(sessions, writer, topic, 1)

        async def drained() -> bool:
            return await pending(engine) == 0

        await wait_until(drained, timeout=60, what="the backlog published")
        assert relay.leases is None
    finally:
        relay.stop()
        await task
