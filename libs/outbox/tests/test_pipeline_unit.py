"""The apply pipeline in-process, against an in-memory inbox and dead-letter sender (issue 12's storage seam):
the decisions (duplicate, stale, parked then released, ignored, dead-lettered, batch grouping) without a
database or a broker. The same pipeline runs against PostgreSQL and Kafka in test_consumer*.py and
test_ordering_contract.py; only the storage is stubbed here, the decision code is the real one."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any, cast

from aiokafka import ConsumerRecord
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from outbox.consumer.apply import ApplyPipeline, RetryPolicy
from outbox.consumer.apply_types import Parsed
from outbox.consumer.dead_letters import DeadLetterSender
from outbox.consumer.handlers import BatchContext, EventContext, Outcome, Reject, Route
from outbox.consumer.inbox import InboxStore, decide
from outbox.envelope import decode_record, encode_headers

SESSION = cast(AsyncSession, object())  # handlers here never touch it; the stores are in memory


class Savepoints:
    """The session features the pipeline uses: transactions and savepoints, rolled back (here: the
    in-memory inbox restored) when their block raises."""

    def __init__(self, inbox: MemoryInbox) -> None:
        self.inbox = inbox

    def begin_nested(self) -> Savepoint:
        return Savepoint(self.inbox)

    begin = begin_nested

    async def __aenter__(self) -> Savepoints:
        return self

    async def __aexit__(self, *_: object) -> None:
        pass


class Savepoint:
    def __init__(self, inbox: MemoryInbox) -> None:
        self.inbox = inbox

    async def __aenter__(self) -> None:
        self.saved = (dict(self.inbox.outcomes), dict(self.inbox.versions), dict(self.inbox.parked_records))

    async def __aexit__(self, kind: object, *_: object) -> None:
        if kind is not None:
            self.inbox.outcomes, self.inbox.versions, self.inbox.parked_records = (
                dict(x) for x in self.saved
            )


def sessions_of(inbox: MemoryInbox) -> async_sessionmaker[AsyncSession]:
    return cast(async_sessionmaker[AsyncSession], lambda: Savepoints(inbox))


class MemoryInbox(InboxStore):
    def __init__(self) -> None:
        super().__init__("unit")
        self.outcomes: dict[uuid.UUID, str] = {}
        self.versions: dict[tuple[str, str], int] = {}
        self.parked_records: dict[uuid.UUID, tuple[Any, dict[str, Any]]] = {}

    async def insert(self, session: AsyncSession, rows: Sequence[dict[str, Any]]) -> set[uuid.UUID]:
        fresh = {r["event_id"] for r in rows if r["event_id"] not in self.outcomes}
        for r in rows:
            self.outcomes.setdefault(r["event_id"], r["outcome"])
        return fresh

    async def mark(self, session: AsyncSession, ids: Sequence[uuid.UUID], outcome: Outcome) -> None:
        for i in ids:
            self.outcomes[i] = outcome.value

    async def forget_dead(self, session: AsyncSession, ids: Sequence[uuid.UUID]) -> None:
        for i in ids:
            if self.outcomes.get(i) == "dead":
                del self.outcomes[i]

    async def guard(
        self, session: AsyncSession, events: Sequence[Any], gap_aware: Sequence[bool]
    ) -> list[Outcome]:
        verdicts, changed = decide(self.versions, events, gap_aware)
        self.versions.update(changed)
        return verdicts

    async def advance_version(self, session: AsyncSession, event: Any, *, gap_aware: bool = False) -> Outcome:
        [verdict] = await self.guard(session, [event], [gap_aware])
        return verdict

    async def park(self, session: AsyncSession, parked: Sequence[tuple[Any, dict[str, Any]]]) -> None:
        for event, stored in parked:
            self.parked_records[event.id] = (event, stored)

    async def parked(self, session: AsyncSession) -> list[Any]:
        return []

    async def unpark(
        self, session: AsyncSession, aggregates: Any, *, limit: int = 500
    ) -> list[dict[str, Any]]:
        """As the SQL: per aggregate, the chain of parked events that follows the applied version."""
        due: list[tuple[tuple[str, str, int], uuid.UUID]] = []
        chains: dict[tuple[str, str], list[Any]] = {}
        for event, _ in self.parked_records.values():
            key = (event.topic, event.subject)
            if key in self.versions and (aggregates is None or key in set(aggregates)):
                chains.setdefault(key, []).append(event)
        for key, events in chains.items():
            reach = self.versions[key]
            for event in sorted(events, key=lambda e: e.version):
                if event.prev_version > reach:
                    break
                reach = max(reach, event.version)
                due.append(((*key, event.version), event.id))
        taken = [event_id for _, event_id in sorted(due)[:limit]]
        for event_id in taken:
            del self.outcomes[event_id]
        return [self.parked_records.pop(event_id)[1] for event_id in taken]


class MemoryDeadLetters(DeadLetterSender):
    def __init__(self) -> None:
        self.letters: list[tuple[int, str]] = []

    async def send(self, record: ConsumerRecord[bytes, bytes], reason: str, *, attempts: int) -> None:
        self.letters.append((record.offset, reason))


def record(
    offset: int,
    aggregate: str,
    version: int,
    prev: int | None,
    event_type: str = "t.changed",
    eid: uuid.UUID | None = None,
) -> ConsumerRecord[bytes, bytes]:
    headers = encode_headers(
        event_id=eid or uuid.uuid4(),
        event_type=event_type,
        source="unit",
        subject=aggregate,
        time="2026-12-01T00:00:00+00:00",
        version=version,
        trace_context={},
        prev_version=prev,
    )
    return ConsumerRecord("t", 0, offset, 0, 0, aggregate.encode(), b"{}", None, 0, 2, tuple(headers))


def make(
    routes: list[Route], ignored: tuple[str, ...] = ()
) -> tuple[ApplyPipeline, MemoryInbox, MemoryDeadLetters]:
    inbox, letters = MemoryInbox(), MemoryDeadLetters()

    def parse(r: ConsumerRecord[bytes, bytes]) -> Parsed:
        event = decode_record(
            topic=r.topic, partition=r.partition, offset=r.offset, headers=r.headers, value=r.value
        )
        route = next((x for x in routes if event.type.startswith(x.pattern.rstrip("*"))), None)
        if route is None and event.type not in ignored:
            return Parsed(r, event, None, f"no handler for event type {event.type!r}")
        return Parsed(r, event, route, None)

    pipeline = ApplyPipeline("unit", inbox, letters, RetryPolicy(1, 0.0, 0.0), None, parse)
    pipeline.tracks_gaps = any(r.gap_aware for r in routes)
    return pipeline, inbox, letters


async def test_duplicates_stale_and_ignored_events_never_reach_the_handler() -> None:
    applied: list[tuple[str, int]] = []

    async def handler(ctx: EventContext) -> None:
        applied.append((ctx.event.subject or "", ctx.event.version or 0))

    pipeline, inbox, letters = make([Route("t.*", handler, version_guard=True)], ignored=("skip.me",))
    twice = uuid.uuid4()
    batch = [
        record(0, "a", 2, 1, eid=twice),
        record(1, "a", 2, 1, eid=twice),
        record(2, "a", 1, None),
        record(3, "b", 1, None, "skip.me"),
        record(4, "c", 1, None, "other.type"),
    ]
    counts = await pipeline.apply(SESSION, [pipeline.parse(r) for r in batch])
    assert applied == [("a", 2)]
    assert (counts.applied, counts.duplicates, counts.stale, counts.ignored, counts.dead_lettered) == (
        1,
        1,
        1,
        1,
        1,
    )
    assert letters.letters == [(4, "no handler for event type 'other.type'")]
    assert sorted(inbox.outcomes.values()) == ["applied", "dead", "ignored", "stale"]


async def test_a_gap_is_parked_and_released_in_version_order_once_the_missing_version_arrives() -> None:
    applied: list[int] = []

    async def handler(ctx: EventContext) -> None:
        applied.append(ctx.event.version or 0)

    pipeline, inbox, _ = make([Route("t.*", handler, version_guard=True, gap_aware=True)])
    session = cast(AsyncSession, Savepoints(inbox))
    first = await pipeline.apply(session, [pipeline.parse(record(0, "a", 1, None))])
    gap = await pipeline.apply(
        session, [pipeline.parse(record(2, "a", 3, 2)), pipeline.parse(record(3, "a", 4, 3))]
    )
    assert (first.applied, gap.parked, applied) == (1, 2, [1])
    filled = await pipeline.apply(session, [pipeline.parse(record(1, "a", 2, 1))])
    assert applied == [1, 2, 3, 4]
    assert (filled.applied, filled.released) == (3, 2)
    assert not inbox.parked_records


async def test_a_released_event_that_fails_stays_parked_and_the_sweep_dead_letters_it_alone() -> None:
    applied: list[int] = []

    async def handler(ctx: EventContext) -> None:
        if ctx.event.version == 3:
            raise ValueError("v3 cannot be applied")
        applied.append(ctx.event.version or 0)

    pipeline, inbox, letters = make([Route("t.*", handler, version_guard=True, gap_aware=True)])
    session = cast(AsyncSession, Savepoints(inbox))
    await pipeline.apply(session, [pipeline.parse(record(0, "a", 1, None))])
    v3 = uuid.uuid4()
    await pipeline.apply(
        session, [pipeline.parse(record(2, "a", 3, 2, eid=v3))]
    )  # parked: v2 has not arrived
    closing = await pipeline.apply(session, [pipeline.parse(record(1, "a", 2, 1))])
    assert (closing.applied, applied, letters.letters) == (1, [1, 2], [])  # v2 is not blamed for v3
    assert len(inbox.parked_records) == 1
    swept = await pipeline.release_parked(sessions_of(inbox))
    assert swept.dead_lettered == 1 and [offset for offset, _ in letters.letters] == [2]
    assert not inbox.parked_records and inbox.outcomes[v3] == "dead"


async def test_a_rejected_event_counts_as_seen_so_it_parks_nothing_behind_it() -> None:
    async def handler(ctx: EventContext) -> None:
        if ctx.event.version == 2:
            raise Reject("forged")

    pipeline, inbox, letters = make([Route("t.*", handler, version_guard=True, gap_aware=True)])
    await pipeline.apply(SESSION, [pipeline.parse(record(0, "a", 1, None))])
    session = cast(AsyncSession, Savepoints(inbox))
    rejected = await pipeline.apply_isolated(
        session, pipeline.parse(record(1, "a", 2, 1)), deadline=float("inf")
    )
    after = await pipeline.apply(SESSION, [pipeline.parse(record(2, "a", 3, 2))])
    assert rejected.dead_lettered == 1 and letters.letters[0][1].startswith("rejected by the handler")
    assert (after.applied, after.parked) == (1, 0)


async def test_consecutive_events_of_a_batch_handler_come_in_one_call() -> None:
    calls: list[list[int]] = []

    async def batch(ctx: BatchContext) -> None:
        calls.append([e.version or 0 for e in ctx.events])

    async def single(ctx: EventContext) -> None:
        calls.append([-(ctx.event.version or 0)])

    pipeline, _, _ = make(
        [Route("t.one", single, version_guard=False), Route("t.*", batch, version_guard=False, batch=True)]
    )
    items = [
        record(0, "a", 1, None),
        record(1, "b", 1, None),
        record(2, "c", 5, None, "t.one"),
        record(3, "d", 2, None),
    ]
    await pipeline.apply(SESSION, [pipeline.parse(r) for r in items])
    assert calls == [[1, 1], [-5], [2]]


async def test_an_ignored_event_never_makes_earlier_events_of_its_fetch_stale() -> None:
    # Review finding 1: the ignored v3 was passed over before the guard judged v1 and v2 (delivered before
    # it), so both were recorded stale and nothing was applied.
    applied: list[int] = []

    async def handler(ctx: EventContext) -> None:
        applied.append(ctx.event.version or 0)

    pipeline, inbox, _ = make([Route("t.*", handler, version_guard=True, gap_aware=True)], ignored=("noise",))
    session = cast(AsyncSession, Savepoints(inbox))
    v1, v2, v3, v4 = (uuid.uuid4() for _ in range(4))
    fetch = [
        record(0, "a", 1, None, eid=v1),
        record(1, "a", 2, 1, eid=v2),
        record(2, "a", 3, 2, "noise", eid=v3),
        record(3, "a", 4, 3, eid=v4),
    ]
    counts = await pipeline.apply(session, [pipeline.parse(r) for r in fetch])
    assert applied == [1, 2, 4]
    assert (counts.applied, counts.ignored, counts.stale, counts.parked) == (3, 1, 0, 0)
    assert [inbox.outcomes[i] for i in (v1, v2, v3, v4)] == ["applied", "applied", "ignored", "applied"]
    assert inbox.versions == {("t", "a"): 4}


async def test_an_event_dead_lettered_in_its_fetch_is_passed_over_in_delivery_order() -> None:
    # The same rule for this consumer's own dead letters: v2 (no handler) counts as seen where it was
    # delivered, so v3 behind it is applied in the same fetch, not parked until a sweep.
    applied: list[int] = []

    async def handler(ctx: EventContext) -> None:
        applied.append(ctx.event.version or 0)

    pipeline, inbox, letters = make([Route("t.*", handler, version_guard=True, gap_aware=True)])
    session = cast(AsyncSession, Savepoints(inbox))
    fetch = [record(0, "a", 1, None), record(1, "a", 2, 1, "other.type"), record(2, "a", 3, 2)]
    counts = await pipeline.apply(session, [pipeline.parse(r) for r in fetch])
    assert applied == [1, 3]
    assert (counts.applied, counts.dead_lettered, counts.parked) == (2, 1, 0)
    assert [offset for offset, _ in letters.letters] == [1] and not inbox.parked_records
