"""Reading topics for operators (`outbox dlq`, `outbox tail`): never joins a group, never commits an offset.

A read stops at the end offsets found before it started, so an empty partition costs nothing and a full one
costs its records, never a fixed wait. The end is the fetch highwater, as for consumer lag (lag.py), not
ListOffsets(latest) alone: Tansu answers the latter with the first offset of the last batch + 1, and a read
stopping there lost the rest of a batch a relay or `dlq redrive --yes` wrote (thousands of records).
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
        self.request_timeout_s = request_timeout_ms / 1000

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
        listed = await self.consumer.end_offsets(partitions)
        ends = await self._highwaters({tp: int(listed[tp]) for tp in partitions if listed[tp] > starts[tp]})
        return {tp: (int(starts[tp]), max(int(listed[tp]), ends.get(tp, 0))) for tp in partitions}

    async def _highwaters(self, listed: dict[TopicPartition, int]) -> dict[TopicPartition, int]:
        """The fetch highwater of each partition ListOffsets says holds records, from one fetch at its last
        listed record. A partition it calls empty is empty: a non-empty one's last batch + 1 is past its start."""
        if not listed:
            return {}
        self.consumer.assign(sorted(listed, key=lambda tp: (tp.topic, tp.partition)))
        for tp, end in listed.items():
            self.consumer.seek(tp, end - 1)
        deadline = time.monotonic() + self.request_timeout_s
        while any(self.consumer.highwater(tp) is None for tp in listed):
            if time.monotonic() > deadline:
                raise TimeoutError(f"the broker gave no highwater within {self.request_timeout_s:.0f}s")
            await self.consumer.getmany(timeout_ms=50, max_records=1)
        found = {tp: int(self.consumer.highwater(tp) or 0) for tp in listed}
        self.consumer.unsubscribe()  # the read assigns and seeks afresh
        return found

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
