"""The entry point of a service's consumer process: logging, tracing, SIGTERM = finish the batch and stop."""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Callable

from outbox import IdempotentConsumer, setup_tracing
from outbox.logs import configure_logging
from outbox.metrics import serve_metrics_from_env, setup_metrics
from servicekit.db import Database


async def run_consumer(service: str, db: Database, build: Callable[[Database], IdempotentConsumer]) -> None:
    configure_logging(f"{service}-consumer")
    setup_tracing(f"{service}-consumer")
    setup_metrics(f"{service}-consumer")
    serve_metrics_from_env()
    consumer = build(db)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, consumer.stop)
    try:
        await consumer.run()
    finally:
        await db.dispose()
        logging.getLogger(f"{service}.consumer").info("%s consumer stopped: %s", service, consumer.stats)
