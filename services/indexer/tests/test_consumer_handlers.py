"""The indexer's handler as registered by `indexer.consumer.register`, run by `outbox.testing.HandlerHarness`
through the library's real apply pipeline: no PostgreSQL, no Kafka, milliseconds. The service function is a
stand-in (the index as a list), so what is tested is the handler's contract: console's state validated
(`payload=DocumentState`), versions applied in order (gap-aware), snapshots flagged, reports emitted in the
message's transaction, refusals dead-lettered at once. test_indexing.py runs the real service and processes."""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from contracts.console import TOPIC, DocumentEventType, DocumentState
from indexer.consumer import TOPICS, register
from indexer.indexing import reports
from indexer.indexing.service import Changes, Outcome, TenancyMismatch
from outbox import ConsumerSettings, Event, IdempotentConsumer, OutboxWriter
from outbox import Outcome as Delivery
from outbox.testing import HandlerHarness

DOC, DATASET, WORKSPACE = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()


class Index:
    """Stands in for `service.apply`: records what it was asked to apply and emits the reports it would."""

    def __init__(self) -> None:
        self.applied: list[tuple[int, bool]] = []
        self.tenancy: dict[uuid.UUID, uuid.UUID] = {}

    async def apply(self, uow: Changes, state: DocumentState, *, snapshot: bool = False) -> Outcome:
        uow.emit(reports.indexing(state))  # before the refusal below: a refused event must emit nothing
        if self.tenancy.setdefault(state.document_id, state.workspace_id) != state.workspace_id:
            raise TenancyMismatch(f"document {state.document_id} belongs to another workspace")
        self.applied.append((state.version, snapshot))
        uow.emit(reports.indexed(state, segment_count=1, searchable=state.enabled))
        return Outcome.INDEXED


def harness() -> tuple[HandlerHarness, Index]:
    consumer = IdempotentConsumer(
        "indexer-unit",
        TOPICS,
        async_sessionmaker[AsyncSession](),  # never used: the harness brings its own stores
        ConsumerSettings(bootstrap="unused:9092", topic_prefix=""),
        writer=OutboxWriter(source="indexer"),
    )
    index = Index()
    register(consumer, index.apply)
    return HandlerHarness(consumer, source="console"), index


def change(version: int, kind: DocumentEventType = DocumentEventType.UPDATED, **fields: Any) -> Event:
    state = {
        "document_id": str(DOC),
        "dataset_id": str(DATASET),
        "workspace_id": str(WORKSPACE),
        "owner_account_id": "owner",
        "name": "doc",
        "text": f"text v{version}",
        "enabled": True,
        "archived": False,
        "version": version,
        **fields,
    }
    return Event(
        topic=TOPIC,
        type=kind.value,
        aggregate_id=str(DOC),
        version=version,
        data={k: v for k, v in state.items() if v is not None},
        standalone=kind is DocumentEventType.SNAPSHOT,
    )


def reported(events: list[Event]) -> list[tuple[str, int | None]]:
    return [(e.type.rsplit(".", 1)[1], e.version) for e in events]


async def test_versions_reach_the_service_in_order_and_their_reports_are_emitted() -> None:
    h, index = harness()
    v1, v2, v3 = (h.record(change(v)) for v in (1, 2, 3))
    await h.deliver(v1)
    parked = await h.deliver(v3)  # v2 is late: v3 waits for it
    assert (parked.parked, index.applied) == (1, [(1, False)])
    await h.deliver(v2)
    assert index.applied == [(1, False), (2, False), (3, False)]
    assert reported(h.emitted) == [(k, v) for v in (1, 2, 3) for k in ("indexing", "indexed")]
    assert {e.topic for e in h.emitted} == {"indexer.document"} and not h.dead_letters


async def test_a_snapshot_of_the_applied_version_is_applied_as_a_snapshot() -> None:
    h, index = harness()
    await h.deliver(change(1, DocumentEventType.CREATED))
    await h.deliver(change(1, DocumentEventType.SNAPSHOT))  # same version: the guard lets it through
    assert index.applied == [(1, False), (1, True)]


async def test_a_state_that_does_not_fit_is_dead_lettered_and_holds_nothing_back() -> None:
    h, index = harness()
    await h.deliver(change(1))
    broken = change(2, owner_account_id=None, enabled="maybe")
    stats = await h.deliver(broken, change(3))
    [letter] = h.dead_letters
    assert letter.reason == (
        "malformed: console.document.updated payload does not fit DocumentState: "
        "owner_account_id: Field required; enabled: Input should be a valid boolean, unable to interpret input"
    )
    assert (letter.attempts, h.outcome(broken)) == (0, Delivery.DEAD)
    # v3 follows the dead-lettered v2, which counts as seen: applied at once, not parked behind it.
    assert (stats.applied, stats.parked, index.applied) == (1, 0, [(1, False), (3, False)])


async def test_a_tenancy_mismatch_is_dead_lettered_at_once_and_reports_nothing() -> None:
    h, index = harness()
    await h.deliver(change(1))
    forged = change(2, workspace_id=str(uuid.uuid4()))
    stats = await h.deliver(forged)
    [letter] = h.dead_letters
    assert letter.reason.startswith("rejected by the handler: TenancyMismatch") and letter.attempts == 1
    assert (stats.retries, index.applied) == (0, [(1, False)])
    assert reported(h.emitted) == [("indexing", 1), ("indexed", 1)]  # the refused event's report rolled back
