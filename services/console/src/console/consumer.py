"""`python -m console.consumer`: console's idempotent consumer.

- `auth.account.registered` → create the account's workspace (a no-op when its first request already did).
- `indexer.document.*` → move `indexing_status` (version-guarded).
SIGTERM/SIGINT → `consumer.stop()`: the batch in hand finishes and its offsets are committed.
"""

from __future__ import annotations

import asyncio
import dataclasses
import uuid

from console.indexing.service import apply_report
from console.settings import Settings, get_settings
from console.workspaces.service import ensure_workspace
from outbox import ConsumerSettings, EventContext, IdempotentConsumer, OutboxWriter
from servicekit.consumer_process import run_consumer
from servicekit.db import Database

TOPICS = ("auth.account", "indexer.document")


def build_consumer(
    db: Database, settings: Settings, consumer_settings: ConsumerSettings | None = None
) -> IdempotentConsumer:
    # One event per transaction: a report locks its document row, and a batch of reports locking rows in
    # delivery order could deadlock with a request locking several documents in id order. Alone, a report
    # holds a single document lock and cannot be part of a cycle. Reports are few; throughput is ample.
    consumer_settings = consumer_settings or dataclasses.replace(ConsumerSettings.from_env(), max_batch=1)
    consumer = IdempotentConsumer(settings.consumer_name, TOPICS, db.sessions, consumer_settings)

    # Creation is idempotent by itself (unique owner), so no version guard is needed.
    @consumer.handler("auth.account.registered", version_guard=False)
    async def account_registered(ctx: EventContext) -> None:
        # Canonical UUID text, the same form a token's `sub` takes on the lazy path.
        account_id = str(uuid.UUID(str(ctx.event.data.get("account_id") or ctx.event.subject)))
        data = ctx.event.data
        await ensure_workspace(
            ctx.session, account_id, str(data.get("email") or ""), str(data.get("name") or "")
        )

    # The library's guard drops reports older than one already applied for the document; apply_report
    # also compares with the document's own version, which moves without any report.
    @consumer.handler("indexer.document.*", version_guard=True)
    async def index_report(ctx: EventContext) -> None:
        event = ctx.event
        document_id = event.data.get("document_id") or event.subject
        version = event.version if event.version is not None else event.data.get("version")
        if document_id is None or not isinstance(version, int):
            raise ValueError(f"{event.type} without document_id/version")
        await apply_report(ctx.session, event.type, uuid.UUID(str(document_id)), version, event.data)

    consumer.ignore("auth.account.*")
    return consumer


async def main() -> None:
    settings = get_settings()
    db = Database(settings.database_url, OutboxWriter(source="console"), pool_size=2)
    await run_consumer("console", db, lambda db: build_consumer(db, settings))


if __name__ == "__main__":
    asyncio.run(main())
