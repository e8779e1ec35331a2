"""The writer process: toggles documents, the way each approach does it.

    baseline  the seed's dual write: commit the document change, then publish to Kafka directly
              (the `.delay()` moment); a failed publish is logged and the request goes on;
    outbox    the document change and an outbox row (OutboxWriter) in one transaction; the relay publishes.

Faults at exact points of the plan:
    crash_after_commit      SIGKILL this process right after the commit, before any publish;
    outage_start/_end       ask the orchestrator to cut the broker link after this op's commit
                            (and to restore it, no sooner than the minimum outage, after the end op);
    rollback_after_publish  the baseline publishes inside the transaction, which then rolls back;
                            the outbox writes its row, then the same rollback.

Lines on stdout: `READY` once connected, `CTL CUT` / `CTL RESTORE` (answered `OK` on stdin), `CRASH i`,
`ROLLBACK i`, `PUBLISH_FAILED i`, and a final `DONE {stats}`.

    python -m bench.consistency.writer --approach A --source-url URL --bootstrap HOST:PORT --topic T \
        --plan plan.json --start I --end J
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

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker, create_async_engine

from bench.consistency.common import Op, load_plan
from outbox import Event, OutboxWriter


class _Rollback(Exception):
    """The request fails after the publish: the transaction rolls back."""


def _say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


async def _control(command: str) -> None:
    _say(f"CTL {command}")
    reply = await asyncio.to_thread(sys.stdin.readline)
    if reply.strip() != "OK":
        raise RuntimeError(f"orchestrator answered {reply!r} to {command}")


async def run(args: argparse.Namespace) -> None:
    plan = load_plan(Path(args.plan))[args.start : args.end]
    engine = create_async_engine(args.source_url, pool_size=2)
    sessions = async_sessionmaker(engine, expire_on_commit=False)
    outbox_writer = OutboxWriter(source="bench-console")
    producer: AIOKafkaProducer | None = None
    if args.approach != "baseline":
        _say("READY")
    else:
        producer = AIOKafkaProducer(
            bootstrap_servers=args.bootstrap,
            acks="all",
            request_timeout_ms=int(args.publish_timeout * 1000),
            metadata_max_age_ms=2000,
            retry_backoff_ms=50,
        )
        await producer.start()
    _say("READY")
    stats = {"committed": 0, "rolled_back": 0, "publish_failed": 0, "published": 0}

    async def publish(payload: dict[str, object]) -> None:
        assert producer is not None
        value = json.dumps(payload).encode()
        await asyncio.wait_for(
            producer.send_and_wait(args.topic, value, key=str(payload["doc_id"]).encode()),
            args.publish_timeout * 2,
        )

    try:
        for op in plan:
            event_id = uuid.uuid4()
            payload: dict[str, object] = {}
            try:
                async with sessions() as session, session.begin():
                    payload = await _change(session, op, event_id)
                    if args.approach == "baseline" and op.fault == "rollback_after_publish":
                        await publish(payload)  # .delay() inside the transaction...
                        stats["published"] += 1
                        raise _Rollback  # ...which then fails
                    if args.approach == "outbox":
                        await outbox_writer.add(
                            session,
                            Event(
                                topic=args.topic,
                                type="bench.document.toggled",
                                aggregate_id=op.doc_id,
                                data=payload,
                                version=int(str(payload["version"])),
                                id=event_id,
                            ),
                        )
                        if op.fault == "rollback_after_publish":
                            raise _Rollback
            except _Rollback:
                stats["rolled_back"] += 1
                _say(f"ROLLBACK {op.i}")
                continue
            stats["committed"] += 1
            # -- committed; the dual write's window opens here -----------------------------------------
            if op.fault == "crash_after_commit":
                _say(f"CRASH {op.i}")
                os.kill(os.getpid(), signal.SIGKILL)
            if op.fault == "outage_start":
                await _control("CUT")
            if args.approach == "baseline":
                try:
                    await publish(payload)
                    stats["published"] += 1
                except (KafkaError, TimeoutError) as exc:
                    stats["publish_failed"] += 1  # the request errors out after the commit
                    _say(f"PUBLISH_FAILED {op.i} {type(exc).__name__}")
            if op.fault == "outage_end":
                await _control("RESTORE")
    finally:
        if producer is not None:
            await producer.stop()
        await engine.dispose()
    _say("DONE " + json.dumps(stats))


async def _change(session: AsyncSession, op: Op, event_id: uuid.UUID) -> dict[str, object]:
    row = (
        await session.execute(
            text("SELECT enabled, version FROM documents WHERE id = :id FOR UPDATE"), {"id": op.doc_id}
        )
    ).one()
    enabled, version = (not row.enabled), row.version + 1
    await session.execute(
        text("UPDATE documents SET enabled = :e, version = :v WHERE id = :id"),
        {"e": enabled, "v": version, "id": op.doc_id},
    )
    await session.execute(
        text(
            "INSERT INTO changes (event_id, op, doc_id, version, enabled) VALUES (:event_id, :op, :doc, :v, :e)"
        ),
        {"event_id": event_id, "op": op.i, "doc": op.doc_id, "v": version, "e": enabled},
    )
    return {
        "event_id": str(event_id),
        "doc_id": op.doc_id,
        "enabled": enabled,
        "version": version,
        "kill_consumer": op.fault == "kill_consumer",
    }


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--approach", choices=["baseline", "outbox"], required=True)
    p.add_argument("--source-url", required=True)
    p.add_argument("--bootstrap", required=True)
    p.add_argument("--topic", required=True)
    p.add_argument("--plan", required=True)
    p.add_argument("--start", type=int, default=0)
    p.add_argument("--end", type=int, default=None)
    p.add_argument("--publish-timeout", type=float, default=1.5)
    asyncio.run(run(p.parse_args()))


if __name__ == "__main__":
    main()
