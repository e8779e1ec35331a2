"""`python -m console.consumer`: console's idempotent consumer.

- `auth.account.registered` → create the account's workspace (a no-op when its first request already did).
- `indexer.document.*` → move `indexing_status` (version-guarded; a report naming another dataset or
  workspace than the document's is dead-lettered).
SIGTERM/SIGINT → `consumer.stop()`: the batch in hand finishes and its offsets are committed.
"""

from __future__ import annotations

import asyncio
import dataclasses

from console.indexing.service import apply_report
from console.settings import TOPICS, Settings, get_settings
from console.workspaces.service import ensure_workspace
from contracts import auth, indexer
from outbox import ConsumerSettings, EventContext, IdempotentConsumer, OutboxWriter
from servicekit.consumer_process import run_consumer
from servicekit.db import Database


def build_consumer(
    db: Database, settings: Settings, consumer_settings: ConsumerSettings | None = None
) -> IdempotentConsumer:
    # One event per transaction: a report locks its document row, and a batch of reports locking rows in
    # delivery order could deadlock with a request locking several documents in id order. Alone, a report
    # holds a single document lock and cannot be part of a cycle. Reports are few; throughput is ample.
    consumer_settings = consumer_settings or dataclasses.replace(ConsumerSettings.from_env(), max_batch=1)
    consumer = IdempotentConsumer(settings.consumer_name, TOPICS, db.sessions, consumer_settings)

    # Creation is idempotent by itself (unique owner), so no version guard is needed.
    @consumer.handler(auth.AccountRegistered.TYPE, version_guard=False)
    async def account_registered(ctx: EventContext) -> None:
        registered = auth.AccountRegistered.model_validate(ctx.event.data)
        # Canonical UUID text, the same form a token's `sub` takes on the lazy path.
        await ensure_workspace(ctx.session, str(registered.account_id), registered.email, registered.name)

    # The library's guard drops reports older than one already applied for the document; apply_report
    # also compares with the document's own version, which moves without any report.
    @consumer.handler(f"{indexer.TOPIC}.*", version_guard=True)
    async def index_report(ctx: EventContext) -> None:
        event = ctx.event
        version = event.version if event.version is not None else event.data.get("version")
        if not isinstance(version, int):
            raise ValueError(f"{event.type} without a version")
        report = indexer.parse_report(event.type, event.data)  # ValidationError (a ValueError) if malformed
        if report is not None:  # None: a report type this contract does not know; nothing to move
            await apply_report(ctx.session, report, version)

    consumer.ignore(f"{auth.ACCOUNT_TOPIC}.*")
    return consumer


async def main() -> None:
    settings = get_settings()
    db = Database(settings.database_url, OutboxWriter(source="console"), pool_size=2)
    await run_consumer("console", db, lambda db: build_consumer(db, settings))


if __name__ == "__main__":
    asyncio.run(main())
