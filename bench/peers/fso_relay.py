"""The peer under `make bench-peers`: faststream-outbox relaying its outbox table to Kafka.

Its documented relay shape (a Kafka publisher stacked on an outbox subscriber), in the configuration a
sweep found fastest here: asyncpg (LISTEN/NOTIFY wake-ups), a fetch batch of 1,000, batched terminal
deletes, N workers. With more than one worker it gives up per-key order (workers race); one worker is its
setting for strict order. acks=all and linger 0, like our relay.

argv: DATABASE_URL (postgresql+asyncpg://...) QUEUE TOPIC WORKERS
"""

from __future__ import annotations

import asyncio
import logging
import sys
from typing import Any

from faststream import FastStream
from faststream.kafka import KafkaBroker, KafkaResponse
from faststream_outbox import OutboxBroker, make_outbox_table
from sqlalchemy import MetaData
from sqlalchemy.ext.asyncio import create_async_engine

from outbox.kafka import bootstrap_from_env

TABLE = "fso_outbox"
FETCH_BATCH = 1000


def table() -> Any:
    return make_outbox_table(MetaData(), table_name=TABLE)


def build(url: str, queue: str, topic: str, workers: int) -> FastStream:
    engine = create_async_engine(url, pool_size=workers + 4)  # it holds one connection per worker
    outbox = OutboxBroker(engine, outbox_table=table(), logger=None)
    kafka = KafkaBroker(bootstrap_from_env(), acks="all", linger_ms=0, logger=None)
    publisher = kafka.publisher(topic)

    @publisher
    @outbox.subscriber(
        queue,
        max_workers=workers,
        fetch_batch_size=FETCH_BATCH,
        min_fetch_interval=0.001,
        max_fetch_interval=0.5,
        terminal_flush_batch_size=FETCH_BATCH,
    )
    async def relay(body: dict[str, Any]) -> KafkaResponse:
        return KafkaResponse(body, key=str(body["k"]).encode())

    return FastStream(outbox, on_startup=[kafka.connect], logger=None)


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING)
    url, queue, topic, workers = sys.argv[1:5]
    asyncio.run(build(url, queue, topic, int(workers)).run())
