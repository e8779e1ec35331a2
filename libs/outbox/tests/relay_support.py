"""Relay test helpers shared by the partial-failure and pipeline tests: a publisher whose one seam
(`BatchPublisher.submit`) answers chosen record batches with an injected fault, and small waits/reads."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.partitioner import DefaultPartitioner
from aiokafka.producer.message_accumulator import BatchBuilder
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from outbox import Event, OutboxWriter, Relay
from outbox.relay.publisher import BatchPublisher, Outbound
from outbox.testing import headers_of

POISON = b'"poison"'


class FaultyPublisher(BatchPublisher):
    """Answers a batch holding the poison record with `fault()` while `remaining` > 0 (None: never answers)."""

    def __init__(
        self, *args: Any, fault: Callable[[], BaseException | None], remaining: int, **kw: Any
    ) -> None:
        super().__init__(*args, **kw)
        self.fault = fault
        self.remaining = remaining
        self.faulted = 0

    async def submit(
        self, topic: str, partition: int, builder: BatchBuilder, batch: Sequence[Outbound]
    ) -> asyncio.Future[object]:
        if self.remaining > 0 and any(POISON in item.value for item in batch):
            self.remaining -= 1
            self.faulted += 1
            future: asyncio.Future[object] = asyncio.get_running_loop().create_future()
            error = self.fault()
            if error is not None:
                future.set_exception(error)
            return future  # no error: a broker that never acknowledges
        return await super().submit(topic, partition, builder, batch)


class FaultyRelay(Relay):
    def __init__(
        self, *args: Any, fault: Callable[[], BaseException | None], remaining: int, **kw: Any
    ) -> None:
        super().__init__(*args, **kw)
        self._fault = (fault, remaining)

    def make_publisher(self, producer: AIOKafkaProducer) -> BatchPublisher:
        fault, remaining = self._fault
        self._publisher = FaultyPublisher(
            producer,
            max_request_size=self.settings.max_message_bytes,
            ack_timeout_s=self.settings.ack_timeout_s,
            fault=fault,
            remaining=remaining,
        )
        return self._publisher

    @property
    def faulty(self) -> FaultyPublisher:
        return self._publisher


def partition_of(key: str, partitions: int = 8) -> int:
    every = list(range(partitions))
    return int(DefaultPartitioner()(key.encode(), every, every))


def keys_in_two_partitions() -> tuple[str, str]:
    """Two aggregate ids whose records land in different partitions (so one's failure cannot hold the other)."""
    first = f"x-{uuid.uuid4().hex[:8]}"
    while True:
        other = f"y-{uuid.uuid4().hex[:8]}"
        if partition_of(other) != partition_of(first):
            return first, other


async def write(
    sessions: async_sessionmaker[AsyncSession],
    writer: OutboxWriter,
    topic: str,
    *events: tuple[str, int, bool],
) -> None:
    """One transaction per event: (aggregate, version, poisoned)."""
    for aggregate, version, poisoned in events:
        data = {"marker": "poison"} if poisoned else {"marker": "fine"}
        async with sessions() as session, session.begin():
            await writer.add(
                session,
                Event(
                    topic=topic, type=f"{topic}.changed", aggregate_id=aggregate, data=data, version=version
                ),
            )


async def scalar(engine: AsyncEngine, sql: str, **params: object) -> Any:
    async with engine.connect() as conn:
        return (await conn.execute(text(sql), params)).scalar_one()


async def wait_for(predicate: Callable[[], Any], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await predicate():
            return
        await asyncio.sleep(0.05)
    raise AssertionError("condition not met in time")


def versions_by_key(records: Sequence[Any]) -> dict[bytes, list[int]]:
    found: dict[bytes, list[int]] = {}
    for record in records:
        found.setdefault(record.key, []).append(int(headers_of(record)["ce_aggregateversion"]))
    return found


async def running(relay: Relay) -> asyncio.Task[None]:
    task = asyncio.create_task(relay.run())
    await asyncio.sleep(0)
    return task


async def stopped(relay: Relay, task: asyncio.Task[None]) -> None:
    relay.stop()
    await asyncio.wait_for(task, 30)


async def run_until(relay: Relay, done: Callable[[], Any], timeout: float = 30.0) -> None:
    """Run `relay` until the awaitable predicate `done` holds, then stop it."""
    task = await running(relay)
    try:
        await wait_for(done, timeout)
    finally:
        await stopped(relay, task)


async def run_until_published(relay: Relay, engine: AsyncEngine, rows: int, timeout: float = 30.0) -> None:
    await run_until(
        relay,
        lambda: scalar(engine, "SELECT count(*) = :n FROM outbox WHERE published_at IS NOT NULL", n=rows),
        timeout,
    )
