"""Sends claimed rows to Kafka as record batches, one lane per partition, never past a failure.

Why not `producer.send()` per row: a record batch is appended to the partition's log atomically, and a
lane sends its partition's next batch only after the previous one was acknowledged. So a row is never
written after an earlier row of its partition (hence of its aggregate: one key, one partition) failed.
With per-row sends, a failed batch holding X v1 followed by an acknowledged batch holding X v2 leaves
v2 in the log before v1 is ever written, and the consumers apply them out of order.

When a batch of several records fails with a record-level error, the lane resends its records one by one
(they were not written: a batch is atomic) until the offending one fails alone, so only that row is
charged. Every lane shares one deadline, which also covers the wait for the topics' partitions: the
idempotent producer never expires a batch, and a hung broker must not keep the relay's transaction (and
the claimed rows' locks) open.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field

from aiokafka import AIOKafkaProducer
from aiokafka.errors import MessageSizeTooLargeError
from aiokafka.partitioner import DefaultPartitioner
from aiokafka.producer.message_accumulator import BatchBuilder
from aiokafka.record.default_records import DefaultRecordBatchBuilder

from outbox.relay.failures import PublishFailure, PublishTimeout, classify_publish_error

_PARTITION_CACHE_SIZE = 100_000


@dataclass(slots=True, eq=False)
class Outbound:
    """One record to publish. After `publish`, `partition` is set when the broker acknowledged it, `error`
    when it failed; neither when it was held back (an earlier record of its partition failed)."""

    topic: str
    key: bytes
    value: bytes
    headers: list[tuple[str, bytes]]
    partition: int | None = None
    error: BaseException | None = None

    @property
    def acked(self) -> bool:
        return self.partition is not None and self.error is None


@dataclass(slots=True)
class _Lane:
    topic: str
    partition: int
    items: list[Outbound] = field(default_factory=list)


class BatchPublisher:
    def __init__(self, producer: AIOKafkaProducer, *, max_request_size: int, ack_timeout_s: float) -> None:
        self.producer = producer
        self.max_request_size = max_request_size
        self.ack_timeout_s = ack_timeout_s
        self._partitioner = DefaultPartitioner()
        # murmur2 in pure Python costs ~2 µs per key; an aggregate's key maps to one partition per count.
        self._partition_of: dict[tuple[str, bytes, int], int] = {}

    async def publish(self, items: Sequence[Outbound]) -> None:
        """Send `items` (in the order they must be written) and record each one's outcome on it."""
        loop = asyncio.get_running_loop()
        # The deadline starts now, not once the lanes run: a topic's partitions may take a metadata request,
        # and a silent broker answers none before the producer's request timeout (15 s).
        deadline = loop.time() + self.ack_timeout_s
        try:
            async with asyncio.timeout_at(deadline):
                lanes = await self._lanes(items)
        except TimeoutError:
            for item in items:
                item.error = PublishTimeout(f"no partitions for the topics within {self.ack_timeout_s}s")
            return
        tasks = [asyncio.create_task(self._run_lane(lane)) for lane in lanes]
        if not tasks:
            return
        _done, late = await asyncio.wait(tasks, timeout=max(0.0, deadline - loop.time()))
        for task in late:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _lanes(self, items: Sequence[Outbound]) -> list[_Lane]:
        """`items` by (topic, partition), each lane in the order given."""
        lanes: dict[tuple[str, int], _Lane] = {}
        partitions: dict[str, list[int]] = {}
        for item in items:
            if item.topic not in partitions:
                partitions[item.topic] = sorted(await self.producer.partitions_for(item.topic))
            partition = self._partition(item.topic, item.key, partitions[item.topic])
            lane = lanes.get((item.topic, partition))
            if lane is None:
                lane = lanes[(item.topic, partition)] = _Lane(item.topic, partition)
            lane.items.append(item)
        return list(lanes.values())

    def _partition(self, topic: str, key: bytes, every: list[int]) -> int:
        """The Java client's default partitioner (murmur2 of the key): the partition any other producer of
        these keys would choose; remembered per (topic, key, partition count)."""
        cache_key = (topic, key, len(every))
        partition = self._partition_of.get(cache_key)
        if partition is None:
            if len(self._partition_of) >= _PARTITION_CACHE_SIZE:
                self._partition_of.clear()
            partition = self._partition_of[cache_key] = self._partitioner(key, every, every)
        return partition

    async def _run_lane(self, lane: _Lane) -> None:
        pending = lane.items
        while pending:
            batch, builder, rest = self._fill(pending)
            if not batch:  # the first record is larger than any request may be
                first = rest[0]
                first.error = MessageSizeTooLargeError(
                    f"record of {self._size(first)} bytes exceeds max_request_size {self.max_request_size}"
                )
                return
            error = await self._send(lane, builder, batch)
            if error is not None:
                if len(batch) > 1 and classify_publish_error(error) is PublishFailure.RECORD:
                    await self._isolate(lane, batch)
                else:
                    for item in batch:
                        item.error = error
                return  # everything after a failure waits for the next claim
            pending = rest

    def _fill(self, items: list[Outbound]) -> tuple[list[Outbound], BatchBuilder, list[Outbound]]:
        """As many of `items` as fit in one record batch; the rest."""
        builder = self.producer.create_batch()
        taken = 0
        for item in items:
            if self._size(item) > self.max_request_size:
                break
            if builder.append(timestamp=None, key=item.key, value=item.value, headers=item.headers) is None:
                break
            taken += 1
        return items[:taken], builder, items[taken:]

    async def _isolate(self, lane: _Lane, batch: list[Outbound]) -> None:
        """Resend a failed batch's records one per batch, in order, until the one at fault fails alone."""
        for item in batch:
            builder = self.producer.create_batch()
            builder.append(timestamp=None, key=item.key, value=item.value, headers=item.headers)
            error = await self._send(lane, builder, [item])
            if error is not None:
                item.error = error
                return

    async def _send(self, lane: _Lane, builder: BatchBuilder, batch: list[Outbound]) -> BaseException | None:
        try:
            future = await self.submit(lane.topic, lane.partition, builder, batch)
            await future
        except asyncio.CancelledError:
            for item in batch:  # in flight when the deadline passed: it may or may not have been written
                item.error = PublishTimeout(f"no acknowledgement within {self.ack_timeout_s}s")
            raise
        except Exception as exc:
            return exc
        for item in batch:
            item.partition = lane.partition
        return None

    async def submit(
        self, topic: str, partition: int, builder: BatchBuilder, batch: Sequence[Outbound]
    ) -> asyncio.Future[object]:
        """Queue one record batch holding `batch`; the future resolves on the broker's acknowledgement.

        The seam where tests inject what the local broker cannot produce (record-level rejections,
        authorisation failures, a broker that never answers)."""
        future: asyncio.Future[object] = await self.producer.send_batch(builder, topic, partition=partition)
        return future

    @staticmethod
    def _size(item: Outbound) -> int:
        size: int = DefaultRecordBatchBuilder.estimate_size_in_bytes(item.key, item.value, item.headers)
        return size
