"""The consumer process: applies document events to the index, the way each approach does it.

    baseline  naive at-least-once: per record, apply in its own transaction and commit; after the batch,
              commit the Kafka offsets (a crash in between re-applies the batch);
    outbox    the library's IdempotentConsumer: inbox row + effect in one transaction, offsets after.

Fault: an event flagged `kill_consumer` SIGKILLs this process once, right after the database commit that
applied it and before the offset commit; the orchestrator starts a new process, the batch is redelivered.

    python -m bench.consistency.consumer --approach A --index-url URL --bootstrap HOST:PORT --topic T \
        --group G --state-dir DIR
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
import uuid
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer
from sqlalchemy import event as sa_event
from sqlalchemy import text
from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine

from bench.consistency.common import APPLY_SQL, kill_self_once
from outbox import ConsumerSettings, EventContext, IdempotentConsumer

# Small group timeouts so a killed member is replaced quickly; request timeout > session/2 (docs/broker.md).
GROUP: dict[str, Any] = {
    "session_timeout_ms": 6000,
    "heartbeat_interval_ms": 500,
    "request_timeout_ms": 10000,
}


def _params(data: dict[str, Any]) -> dict[str, Any]:
    return {
        "event_id": uuid.UUID(str(data["event_id"])),
        "doc_id": data["doc_id"],
        "version": int(data["version"]),
        "enabled": bool(data["enabled"]),
    }


async def run_baseline(args: argparse.Namespace, stop: asyncio.Event) -> None:
    engine = create_async_engine(args.index_url, pool_size=2)
    consumer = AIOKafkaConsumer(
        args.topic,
        bootstrap_servers=args.bootstrap,
        group_id=args.group,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        metadata_max_age_ms=2000,
        **GROUP,
    )
    await consumer.start()
    try:
        while not stop.is_set():
            batches = await consumer.getmany(timeout_ms=200, max_records=200)
            for records in batches.values():
                for record in records:
                    assert record.value is not None
                    data = json.loads(record.value)
                    async with engine.begin() as conn:
                        for sql in APPLY_SQL:
                            await conn.execute(text(sql), _params(data))
                    if data.get("kill_consumer"):
                        kill_self_once(Path(args.state_dir), str(data["event_id"]))
            if batches:
                await consumer.commit()
    finally:
        await consumer.stop()
        await engine.dispose()


async def run_outbox(args: argparse.Namespace, stop: asyncio.Event) -> None:
    engine = create_async_engine(args.index_url, pool_size=4)
    sessions = async_sessionmaker(engine, expire_on_commit=False)
    settings = ConsumerSettings(bootstrap=args.bootstrap, max_batch=200, **GROUP)
    consumer = IdempotentConsumer(args.group, [args.topic], sessions, settings)

    @consumer.handler("bench.document.*", version_guard=True)
    async def apply(ctx: EventContext) -> None:
        data = ctx.event.data
        for sql in APPLY_SQL:
            await ctx.session.execute(text(sql), _params(data))
        if data.get("kill_consumer"):
            marker = str(data["event_id"])
            # Right after the transaction holding the inbox row and the effect commits, before the offset.
            sa_event.listen(
                ctx.session.sync_session,
                "after_commit",
                lambda _s: kill_self_once(Path(args.state_dir), marker),
                once=True,
            )

    task = asyncio.create_task(consumer.run())
    stopping = asyncio.create_task(stop.wait())
    try:
        # Whichever comes first: SIGTERM, or the consumer failing (say the broker is unreachable at start).
        await asyncio.wait([task, stopping], return_when=asyncio.FIRST_COMPLETED)
        consumer.stop()
        await task
    finally:
        stopping.cancel()
        await engine.dispose()


async def amain(args: argparse.Namespace) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print("READY", flush=True)
    if args.approach == "baseline":
        await run_baseline(args, stop)
    else:
        await run_outbox(args, stop)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--approach", choices=["baseline", "outbox"], required=True)
    p.add_argument("--index-url", required=True)
    p.add_argument("--bootstrap", required=True)
    p.add_argument("--topic", required=True)
    p.add_argument("--group", required=True)
    p.add_argument("--state-dir", required=True)
    args = p.parse_args()
    try:
        asyncio.run(amain(args))
    except Exception as exc:  # e.g. the broker is unreachable at start: the supervisor starts us again
        print(f"consumer failed: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
        sys.stderr.flush()
        os._exit(3)


if __name__ == "__main__":
    main()
