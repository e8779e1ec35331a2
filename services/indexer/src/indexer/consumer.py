"""`python -m indexer.consumer`: applies `console.document.*` to the index, exactly once in effect.

The handler gets console's `DocumentState` validated (`payload=`; a record that does not fit is dead-lettered
as malformed) and records its reports with `ctx.emit`: the consumer writes them into the indexer's outbox in
the message's transaction.

SIGTERM/SIGINT → `consumer.stop()`: the batch in hand finishes and its offsets are committed.
"""

from __future__ import annotations

import asyncio
from typing import Protocol

from contracts.console import TOPIC, DocumentEventType, DocumentState
from indexer.indexing import service
from indexer.settings import TOPICS, Settings, get_settings
from outbox import ConsumerSettings, EventContext, IdempotentConsumer, OutboxWriter
from servicekit.consumer_process import run_consumer
from servicekit.db import Database


class Apply(Protocol):
    """`service.apply`'s shape."""

    async def __call__(
        self, uow: service.Changes, state: DocumentState, *, snapshot: bool = False
    ) -> object: ...


def register(consumer: IdempotentConsumer, apply: Apply = service.apply) -> None:
    """The indexer's handler on `consumer`; `apply` is the service function it calls (a test passes its own
    to run the handler in `outbox.testing.HandlerHarness`, without PostgreSQL)."""

    @consumer.handler(f"{TOPIC}.*", payload=DocumentState, version_guard=True, gap_aware=True)
    async def document_changed(ctx: EventContext[DocumentState]) -> None:
        # The context is the unit of work: its session is the message's transaction (the inbox row's), and
        # the reports `apply` emits are written into it when the handler returns. One commit, by the consumer.
        await apply(ctx, ctx.payload, snapshot=ctx.event.type == DocumentEventType.SNAPSHOT)


def build_consumer(
    db: Database, settings: Settings, consumer_settings: ConsumerSettings | None = None
) -> IdempotentConsumer:
    consumer = IdempotentConsumer(
        settings.consumer_name, TOPICS, db.sessions, consumer_settings, writer=db.writer
    )
    register(consumer)
    return consumer


async def main() -> None:
    settings = get_settings()
    db = Database(settings.database_url, OutboxWriter(source="indexer"), pool_size=2)
    await run_consumer("indexer", db, lambda db: build_consumer(db, settings))


if __name__ == "__main__":
    asyncio.run(main())
