"""The entry point of a service's consumer process: logging, tracing, SIGTERM = finish the batch and stop."""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Callable

from outbox import IdempotentConsumer, setup_tracing
from outbox.kafka.connection import KafkaConnection, KafkaSettingError
from outbox.telemetry.logs import configure_logging
from outbox.telemetry.metrics import serve_metrics_from_env, setup_metrics
from servicekit.db import Database


async def run_consumer(service: str, db: Database, build: Callable[[Database], IdempotentConsumer]) -> None:
    configure_logging(f"{service}-consumer")
    setup_tracing(f"{service}-consumer")
    setup_metrics(f"{service}-consumer")
    serve_metrics_from_env()
    log = logging.getLogger(f"{service}.consumer")
    try:  # settings that cannot work stop the process here, with one line naming the variables
        connection = KafkaConnection.from_env()
    except KafkaSettingError as exc:
        log.error("%s consumer cannot start: %s", service, exc)
        await db.dispose()
        raise SystemExit(2) from None
    consumer = build(db)
    log.info(
        "%s consumer starting (broker %s, %s)", service, consumer.settings.bootstrap, connection.describe()
    )
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, consumer.stop)
    try:
        await consumer.run()
    finally:
        await db.dispose()
        log.info("%s consumer stopped: %s", service, consumer.stats)
