"""Helpers for tests of code built on the outbox against the real broker and PostgreSQL (no mocks)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from aiokafka import ConsumerRecord
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from outbox.consumer.runner import BatchContext, EventContext
from outbox.kafka import topic_prefix
from outbox.kafka.clients import KafkaConsumer
from outbox.relay.runner import Relay, RelaySettings


async def read_topic(
    bootstrap: str, topic: str, *, expect: int, timeout: float = 30.0
) -> list[ConsumerRecord[bytes, bytes]]:
    """Read from the beginning of `topic` until `expect` records arrived or the deadline passed."""
    consumer = KafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=None,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        metadata_max_age_ms=1000,
    )
    await consumer.start()
    records: list[ConsumerRecord[bytes, bytes]] = []
    try:
        deadline = time.monotonic() + timeout
        while len(records) < expect and time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=200)
            for recs in batch.values():
                records.extend(recs)
            await asyncio.sleep(0)
    finally:
        await consumer.stop()
    return records


def wire(topic: str) -> str:
    """The name a logical topic has on the broker (under OUTBOX_TOPIC_PREFIX)."""
    return topic_prefix() + topic


def headers_of(record: ConsumerRecord[bytes, bytes]) -> dict[str, str]:
    return {k: v.decode() for k, v in (record.headers or ())}


async def drain_outbox(engine: AsyncEngine, bootstrap: str, **settings: Any) -> Relay:
    """Publish every pending row once with a relay of the given settings; returns it (for its stats)."""
    relay = Relay(engine, RelaySettings(bootstrap=bootstrap, **settings))
    await relay.start()
    try:
        while await relay.publish_batch_with_retries():
            pass
    finally:
        await relay.close()
    return relay


EFFECTS_DDL = """
CREATE TABLE IF NOT EXISTS effects (
    seq bigserial PRIMARY KEY, consumer text NOT NULL, event_id uuid NOT NULL, aggregate_id text NOT NULL,
    version bigint, applied_at timestamptz NOT NULL DEFAULT clock_timestamp()
)
"""
_RECORD_EFFECT = text(
    "INSERT INTO effects (consumer, event_id, aggregate_id, version, applied_at) "
    "VALUES (:c, :e, :a, :v, clock_timestamp())"
)


async def record_effect(ctx: EventContext[Any]) -> None:
    """A handler whose effect is one row in `effects` (no unique key: applying twice shows as two rows)."""
    await ctx.session.execute(
        _RECORD_EFFECT, {"c": ctx.consumer, "e": ctx.event.id, "a": ctx.event.subject, "v": ctx.event.version}
    )


_RECORD_EFFECTS = text(
    "INSERT INTO effects (consumer, event_id, aggregate_id, version, applied_at) "
    "SELECT :c, unnest(CAST(:ids AS uuid[])), unnest(CAST(:aggs AS text[])), unnest(CAST(:vs AS bigint[])), "
    "clock_timestamp()"
)


async def record_effects(ctx: BatchContext[Any]) -> None:
    """The batch-handler form of `record_effect`: one statement for the whole run of events."""
    await ctx.session.execute(
        _RECORD_EFFECTS,
        {
            "c": ctx.consumer,
            "ids": [e.id for e in ctx.events],
            "aggs": [e.subject for e in ctx.events],
            "vs": [e.version for e in ctx.events],
        },
    )
