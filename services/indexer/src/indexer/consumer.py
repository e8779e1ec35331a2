"""`python -m indexer.consumer`: applies `console.document.*` to the index, exactly once in effect.

SIGTERM/SIGINT → `consumer.stop()`: the batch in hand finishes and its offsets are committed.
"""

from __future__ import annotations

import asyncio
import logging
import signal

from indexer.indexing import service
from indexer.indexing.schemas import DocumentState
from indexer.settings import Settings, get_settings
from outbox import ConsumerSettings, EventContext, IdempotentConsumer, OutboxWriter, setup_tracing
from servicekit.db import Database

log = logging.getLogger("indexer.consumer")

TOPICS = ("console.document",)


def build_consumer(
    db: Database, settings: Settings, consumer_settings: ConsumerSettings | None = None
) -> IdempotentConsumer:
    consumer = IdempotentConsumer(settings.consumer_name, TOPICS, db.sessions, consumer_settings)

    @consumer.handler("console.document.*", version_guard=True)
    async def document_changed(ctx: EventContext) -> None:
        state = DocumentState.model_validate(ctx.event.data)
        await service.apply(ctx.session, db.writer, state)

    return consumer


async def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = get_settings()
    setup_tracing("indexer-consumer")
    db = Database(settings.database_url, OutboxWriter(source="indexer"), pool_size=2)
    consumer = build_consumer(db, settings)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, consumer.stop)
    try:
        await consumer.run()
    finally:
        await db.dispose()
        log.info("indexer consumer stopped: %s", consumer.stats)


if __name__ == "__main__":
    asyncio.run(main())
