"""`python -m console.consumer`: console's idempotent consumer.

- `auth.account.registered` → create the account's workspace (a no-op when its first request already did).
- `indexer.document.*` → move `indexing_status` (version-guarded; a report naming another dataset or
  workspace than the document's is dead-lettered).
Payloads arrive validated by their contract models (`payload=`): a record that does not fit one is
dead-lettered as malformed, never retried; report types this contract does not know are ignored.
SIGTERM/SIGINT → `consumer.stop()`: the batch in hand finishes and its offsets are committed.
"""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Protocol

from sqlalchemy.ext.asyncio import AsyncSession

from console.indexing.service import apply_report
from console.settings import TOPICS, Settings, get_settings
from console.workspaces.service import ensure_workspace
from contracts import auth, indexer
from outbox import ConsumerSettings, EventContext, IdempotentConsumer, OutboxWriter, Reject
from servicekit.consumer_process import run_consumer
from servicekit.db import Database


class EnsureWorkspace(Protocol):
    async def __call__(self, session: AsyncSession, account_id: str, email: str, name: str, /) -> object: ...


class ApplyReport(Protocol):
    async def __call__(self, session: AsyncSession, report: indexer.Report, version: int, /) -> bool: ...


def register(
    consumer: IdempotentConsumer,
    *,
    ensure: EnsureWorkspace = ensure_workspace,
    apply: ApplyReport = apply_report,
) -> None:
    """Console's handlers on `consumer`; `ensure` and `apply` are the service functions they call (a test
    passes its own to run the handlers in `outbox.testing.HandlerHarness`, without PostgreSQL)."""

    # Creation is idempotent by itself (unique owner), so no version guard is needed.
    @consumer.handler(auth.AccountRegistered.TYPE, payload=auth.AccountRegistered, version_guard=False)
    async def account_registered(ctx: EventContext[auth.AccountRegistered]) -> None:
        registered = ctx.payload
        # Canonical UUID text, the same form a token's `sub` takes on the lazy path.
        await ensure(ctx.session, str(registered.account_id), registered.email, registered.name)

    # The library's guard drops reports older than one already applied for the document; apply_report
    # also compares with the document's own version, which moves without any report.
    async def index_report(ctx: EventContext[indexer.Report]) -> None:
        event = ctx.event
        version = event.version if event.version is not None else event.data.get("version")
        if not isinstance(version, int):
            raise Reject(f"{event.type} without a version")  # it cannot become applicable
        await apply(ctx.session, ctx.payload, version)

    for model in indexer.REPORTS.values():
        consumer.handler(model.TYPE.value, payload=model, version_guard=True)(index_report)
    consumer.ignore(f"{indexer.TOPIC}.*")  # report types this contract does not know: nothing to move
    consumer.ignore(f"{auth.ACCOUNT_TOPIC}.*")


def build_consumer(
    db: Database, settings: Settings, consumer_settings: ConsumerSettings | None = None
) -> IdempotentConsumer:
    # One event per transaction: a report locks its document row, and a batch of reports locking rows in
    # delivery order could deadlock with a request locking several documents in id order. Alone, a report
    # holds a single document lock and cannot be part of a cycle. Reports are few; throughput is ample.
    consumer_settings = consumer_settings or dataclasses.replace(ConsumerSettings.from_env(), max_batch=1)
    consumer = IdempotentConsumer(settings.consumer_name, TOPICS, db.sessions, consumer_settings)
    register(consumer)
    return consumer


async def main() -> None:
    settings = get_settings()
    db = Database(settings.database_url, OutboxWriter(source="console"), pool_size=2)
    await run_consumer("console", db, lambda db: build_consumer(db, settings))


if __name__ == "__main__":
    asyncio.run(main())
