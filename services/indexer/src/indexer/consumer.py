"""`python -m indexer.consumer`: applies `console.document.*` to the index, exactly once in effect.

SIGTERM/SIGINT → `consumer.stop()`: the batch in hand finishes and its offsets are committed.
"""

from __future__ import annotations

import asyncio

from contracts.console import TOPIC, DocumentEventType, DocumentState
from indexer.indexing import service
from indexer.settings import TOPICS, Settings, get_settings
from outbox import ConsumerSettings, EventContext, IdempotentConsumer, OutboxWriter
from servicekit.consumer_process import run_consumer
from servicekit.db import Database


def build_consumer(
    db: Database, settings: Settings, consumer_settings: ConsumerSettings | None = None
) -> IdempotentConsumer:
    consumer = IdempotentConsumer(settings.consumer_name, TOPICS, db.sessions, consumer_settings)

    @consumer.handler(f"{TOPIC}.*", version_guard=True, gap_aware=True)
    async def document_changed(ctx: EventContext) -> None:
        state = DocumentState.model_validate(ctx.event.data)
        # The reports join the message's transaction (its inbox row): one commit, by the consumer.
        async with db.joined(ctx.session) as uow:
            await service.apply(uow, state, snapshot=ctx.event.type == DocumentEventType.SNAPSHOT)

    return consumer


async def main() -> None:
    settings = get_settings()
    db = Database(settings.database_url, OutboxWriter(source="indexer"), pool_size=2)
    await run_consumer("indexer", db, lambda db: build_consumer(db, settings))


if __name__ == "__main__":
    asyncio.run(main())
