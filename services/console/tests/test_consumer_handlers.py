"""Console's handlers as registered by `console.consumer.register`, run by `outbox.testing.HandlerHarness`
through the library's real apply pipeline: no PostgreSQL, no Kafka, milliseconds. The service functions are
stand-ins, so what is tested is the handlers' contract: payloads validated by the contract models, reports
version-guarded, unknown report types ignored, refusals dead-lettered at once. test_indexing_status.py and
test_flow.py run the real services and processes."""

from __future__ import annotations

import uuid

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from console.consumer import TOPICS, register
from console.indexing.service import ReportTenancyMismatch
from contracts import auth, indexer
from outbox import ConsumerSettings, Event, IdempotentConsumer
from outbox import Outcome as Delivery
from outbox.testing import HandlerHarness

DOC, DATASET = uuid.uuid4(), uuid.uuid4()


class Console:
    """Stands in for `ensure_workspace` and `apply_report`: records the calls."""

    def __init__(self) -> None:
        self.workspaces: list[tuple[str, str, str]] = []
        self.reports: list[tuple[str, int]] = []

    async def ensure(self, session: AsyncSession, account_id: str, email: str, name: str, /) -> None:
        self.workspaces.append((account_id, email, name))

    async def apply(self, session: AsyncSession, report: indexer.Report, version: int, /) -> bool:
        if report.dataset_id != DATASET:
            raise ReportTenancyMismatch(f"report on document {report.document_id} names another dataset")
        self.reports.append((report.TYPE.value.rsplit(".", 1)[1], version))
        return True


def harness() -> tuple[HandlerHarness, Console]:
    consumer = IdempotentConsumer(
        "console-unit",
        TOPICS,
        async_sessionmaker[AsyncSession](),  # never used: the harness brings its own stores
        ConsumerSettings(bootstrap="unused:9092", topic_prefix="", max_batch=1),
    )
    console = Console()
    register(consumer, ensure=console.ensure, apply=console.apply)
    return HandlerHarness(consumer, source="indexer"), console


def report(model: type[indexer.Report], version: int, **fields: object) -> Event:
    made = model.model_validate({"document_id": DOC, "dataset_id": DATASET, **fields})
    return made.to_event(version)


async def test_a_registered_account_gets_its_workspace_and_a_malformed_one_is_dead_lettered() -> None:
    h, console = harness()
    account = uuid.uuid4()
    good = auth.AccountRegistered(account_id=account, email="a@example.com", name="A", version=1).to_event()
    bad = Event(
        topic=auth.ACCOUNT_TOPIC, type=auth.AccountRegistered.TYPE, aggregate_id="x", data={"email": 1}
    )
    changed = auth.PasswordChanged(account_id=account, email="a@example.com", version=2, reason="reset")
    stats = await h.deliver_each([good, bad, changed.to_event()])
    assert console.workspaces == [(str(account), "a@example.com", "A")]
    assert (stats.applied, stats.ignored, stats.dead_lettered) == (1, 1, 1)  # password_changed: ignored
    [letter] = h.dead_letters
    assert letter.reason.startswith(
        "malformed: auth.account.registered payload does not fit AccountRegistered:"
    )
    assert "account_id: Field required" in letter.reason and h.outcome(bad) is Delivery.DEAD


async def test_reports_are_typed_by_their_model_and_an_older_one_never_reaches_the_service() -> None:
    h, console = harness()
    await h.deliver_each(
        [
            report(indexer.DocumentIndexing, 2),
            report(indexer.DocumentIndexed, 2, segment_count=3),
            report(indexer.DocumentIndexed, 1, segment_count=9),  # about an older version: stale
        ]
    )
    assert console.reports == [("indexing", 2), ("indexed", 2)]
    assert h.stats.stale == 1 and not h.dead_letters


async def test_an_unknown_report_type_is_ignored_and_a_report_that_does_not_fit_is_dead_lettered() -> None:
    h, console = harness()
    future = Event(
        topic=indexer.TOPIC, type="indexer.document.reindexed", aggregate_id=str(DOC), version=2, data={}
    )
    unfit = report(indexer.DocumentIndexed, 2, segment_count=1)
    unfit = Event(
        topic=unfit.topic,
        type=unfit.type,
        aggregate_id=unfit.aggregate_id,
        version=2,
        data={**unfit.data, "segment_count": "many"},
    )
    stats = await h.deliver_each([future, unfit])
    assert (stats.ignored, stats.dead_lettered, console.reports) == (1, 1, [])
    assert h.dead_letters[0].reason.endswith(
        "segment_count: Input should be a valid integer, unable to parse string as an integer"
    )


async def test_a_report_naming_another_dataset_is_dead_lettered_at_once() -> None:
    h, console = harness()
    forged = report(indexer.DocumentIndexed, 1, segment_count=1, dataset_id=uuid.uuid4())
    stats = await h.deliver(forged)
    [letter] = h.dead_letters
    assert letter.reason.startswith("rejected by the handler: ReportTenancyMismatch") and letter.attempts == 1
    assert (stats.retries, console.reports, h.outcome(forged)) == (0, [], Delivery.DEAD)
