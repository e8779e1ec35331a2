"""A consumer process for crash tests and the bench: applies each event as one row in `effects` (no unique
key there, so an event applied twice would show as two rows).

    python effect_consumer.py DB_URL GROUP TOPIC [DELAY_S] [per-event|per-event-guarded|batch|batch-guarded]

`*-guarded`: the configuration a user runs (inbox + version guard, gap-aware).
"""

from __future__ import annotations

import asyncio
import dataclasses
import signal
import sys

from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine

from outbox import ConsumerSettings, EventContext, IdempotentConsumer
from outbox.testing import record_effect, record_effects


async def main(url: str, group: str, topic: str, delay_s: float, mode: str) -> None:
    engine = create_async_engine(url)
    consumer = IdempotentConsumer(
        group,
        [topic],
        async_sessionmaker(engine, expire_on_commit=False),
        dataclasses.replace(
            ConsumerSettings.from_env(), max_batch=200, session_timeout_ms=6000, request_timeout_ms=10000
        ),
    )

    if mode == "batch":
        consumer.batch_handler("*", version_guard=False)(record_effects)
    elif mode == "batch-guarded":
        consumer.batch_handler("*", version_guard=True, gap_aware=True)(record_effects)
    else:

        @consumer.handler(
            "*", version_guard=mode == "per-event-guarded", gap_aware=mode == "per-event-guarded"
        )
        async def apply(ctx: EventContext) -> None:
            await record_effect(ctx)
            if delay_s:
                await asyncio.sleep(delay_s)

    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, consumer.stop)
    await consumer.run()
    await engine.dispose()


if __name__ == "__main__":
    args = sys.argv[1:]
    asyncio.run(
        main(
            args[0],
            args[1],
            args[2],
            float(args[3]) if len(args) > 3 else 0.0,
            args[4] if len(args) > 4 else "per-event",
        )
    )
