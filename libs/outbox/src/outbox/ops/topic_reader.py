"""Reading topics for operators (`outbox dlq`, `outbox tail`): never joins a group, never commits an offset.

A read stops at the end offsets asked for before it started (ListOffsets), so an empty partition costs
nothing and a full one costs its records, never a fixed wait. Some brokers (Tansu) answer ListOffsets(latest)
with the first offset of the last batch + 1 (observe.py): the fetch returns that whole batch, so the records
past the reported end arrive with it and are kept.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from types import TracebackType

from aiokafka import ConsumerRecord, TopicPartition

from outbox.kafka.clients import KafkaConsumer


@dataclass(frozen=True, slots=True)
class Record:
    topic: str
    partition: int
    offset: int
    timestamp: int  # ms since the epoch (the producer's CreateTime, or the broker's LogAppendTime)
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes]] = field(default_factory=list)

    @property
    def id(self) -> str:
        return f"{self.partition}:{self.offset}"

    def header(self, name: str) -> str | None:
        for key, value in self.headers:
            if key == name:
                return value.decode(errors="replace")
        return None


Bounds = dict[TopicPartition, tuple[int, int]]  # partition -> (log start, end) offsets


class TopicReader:
    """One group-less consumer for a command's reads: `async with TopicReader(bootstrap) as reader:`."""

    def __init__(self, bootstrap: str, *, request_timeout_ms: int = 10_000) -> None:
        self.consumer = KafkaConsumer(
            bootstrap_servers=bootstrap,
            group_id=None,
            enable_auto_commit=False,
            fetch_max_wait_ms=50,
            request_timeout_ms=request_timeout_ms,
        )

    async def __aenter__(self) -> TopicReader:
        await self.consumer.start()  # the library's client closes itself when its start fails
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.consumer.stop()

    async def topics(self) -> set[str]:
        return set(await self.consumer.topics())

    async def bounds(self, topics: Iterable[str]) -> Bounds:
        """Log start and end offsets of every partition of `topics` (topics that do not exist: none)."""
        known = await self.topics()
        partitions = [
            TopicPartition(topic, p)
            for topic in topics
            if topic in known
            for p in sorted(self.consumer.partitions_for_topic(topic) or ())
        ]
        if not partitions:
            return {}
        starts = await self.consumer.beginning_offsets(partitions)
        ends = await self.consumer.end_offsets(partitions)
        return {tp: (int(starts[tp]), int(ends[tp])) for tp in partitions}

    async def read(
        self,
        starts: dict[TopicPartition, int],
        ends: dict[TopicPartition, int],
        *,
        idle_timeout_s: float = 15.0,
    ) -> AsyncIterator[list[Record]]:
        """Batches of records from `starts` until every partition's position reaches its end. Raises
        TimeoutError when the broker hands nothing over for `idle_timeout_s` while records remain."""
        todo = {tp for tp in starts if starts[tp] < ends.get(tp, 0)}
        if not todo:
            return
        self.consumer.assign(sorted(todo, key=lambda tp: (tp.topic, tp.partition)))
        for tp in todo:
            self.consumer.seek(tp, starts[tp])
        last_progress = time.monotonic()
        while todo:
            fetched = await self.consumer.getmany(timeout_ms=200, max_records=2000)
            batch = [_record(r) for records in fetched.values() for r in records]
            if batch:
                last_progress = time.monotonic()
                yield batch
            for tp in list(todo):
                if await self.consumer.position(tp) >= ends[tp]:
                    todo.discard(tp)
                    self.consumer.pause(tp)  # done: fetch no more of it
            if todo and time.monotonic() - last_progress > idle_timeout_s:
                left = ", ".join(f"{tp.topic}[{tp.partition}]" for tp in sorted(todo))
                raise TimeoutError(f"the broker sent nothing of {left} for {idle_timeout_s:.0f}s")

    async def position(self, tp: TopicPartition) -> int:
        """Where the last read of `tp` stopped (0 when it was not read)."""
        if tp not in self.consumer.assignment():
            return 0
        return int(await self.consumer.position(tp))

    async def follow(
        self, partitions: Iterable[TopicPartition], starts: dict[TopicPartition, int]
    ) -> AsyncIterator[list[Record]]:
        """Batches from `starts` on, waiting for new records, until the caller stops iterating."""
        chosen = sorted(partitions, key=lambda tp: (tp.topic, tp.partition))
        self.consumer.assign(chosen)
        for tp in chosen:
            self.consumer.seek(tp, starts[tp])
        while True:
            fetched = await self.consumer.getmany(timeout_ms=500, max_records=500)
            batch = [_record(r) for records in fetched.values() for r in records]
            if batch:
                yield batch


def _record(r: ConsumerRecord[bytes, bytes]) -> Record:
    return Record(r.topic, r.partition, r.offset, r.timestamp, r.key, r.value, list(r.headers or ()))
