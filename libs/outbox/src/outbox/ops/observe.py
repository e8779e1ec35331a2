"""Figures read from outside the relay and the consumers: an outbox's backlog, a consumer group's lag.

Lag = the partition's highwater minus the group's committed offset. The highwater comes from a fetch
response, not from ListOffsets(latest): some brokers (Tansu, see docs/broker.md) answer the latter
with the first offset of the last batch + 1, which under-reports lag whenever batches hold several records.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import Any

from aiokafka import TopicPartition
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from outbox.kafka import topic_prefix
from outbox.kafka.clients import KafkaAdmin, KafkaConsumer
from outbox.ops.admin_store import OutboxAdmin
from outbox.telemetry.metrics import BacklogSnapshot

Lag = dict[tuple[str, int], int]


async def read_backlog(engine: AsyncEngine) -> BacklogSnapshot:
    backlog = await OutboxAdmin(engine).backlog()
    return BacklogSnapshot(
        pending=backlog.pending, oldest_pending_age_s=backlog.oldest_due_age_s, dead=backlog.dead
    )


class LagUnknown(Exception):
    """The broker did not say enough to compute a true lag (no highwater in time, unknown topic)."""


async def group_lag(
    bootstrap: str, group: str, topics: Sequence[str] | None, *, timeout_s: float = 5.0
) -> Lag:
    """Per (wire topic, partition): highwater minus committed offset (minus the log start when nothing
    committed). `topics=None`: every topic under OUTBOX_TOPIC_PREFIX (dead-letter topics aside) on which
    the group has committed an offset, so a stopped consumer's lag is still seen."""
    probe = KafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=None,
        enable_auto_commit=False,
        fetch_max_wait_ms=10,
        max_partition_fetch_bytes=1024,
        request_timeout_ms=int(timeout_s * 1000) + 1000,
    )
    admin = KafkaAdmin(bootstrap_servers=bootstrap, request_timeout_ms=int(timeout_s * 1000))
    await probe.start()
    try:
        await admin.start()
        try:
            known = await probe.topics()
            discover = topics is None
            if topics is None:
                topics = sorted(t for t in known if t.startswith(topic_prefix()) and not t.endswith(".dlq"))
            partitions: list[TopicPartition] = []
            for topic in topics:
                if topic not in known:
                    continue
                ids = probe.partitions_for_topic(topic) or set()
                partitions += [TopicPartition(topic, p) for p in sorted(ids)]
            if not partitions:
                return {}
            # Explicit partitions: some brokers answer the no-partitions form with a malformed response.
            committed_raw = await admin.list_consumer_group_offsets(group, partitions=partitions)
        finally:
            await admin.close()
        if discover:
            consumed = {
                tp.topic for tp, meta in committed_raw.items() if meta is not None and meta.offset >= 0
            }
            partitions = [tp for tp in partitions if tp.topic in consumed]
            if not partitions:
                return {}
        starts = await probe.beginning_offsets(partitions)
        committed: dict[TopicPartition, int] = {}
        for tp in partitions:
            meta = committed_raw.get(tp)
            offset = meta.offset if meta is not None else -1
            committed[tp] = offset if offset >= 0 else starts[tp]
        probe.assign(partitions)
        for tp in partitions:
            probe.seek(tp, committed[tp])
        deadline = time.monotonic() + timeout_s
        while any(probe.highwater(tp) is None for tp in partitions):
            if time.monotonic() > deadline:
                raise LagUnknown(f"no fetch highwater within {timeout_s}s for group {group}")
            await probe.getmany(timeout_ms=50, max_records=1)
        return {
            (tp.topic, tp.partition): max(int(probe.highwater(tp)) - committed[tp], 0) for tp in partitions
        }
    finally:
        await probe.stop()


class CachedGroupLag:
    """Group lag computed at most every `interval_s` (a scrape should not cost a broker probe each time)."""

    def __init__(self, bootstrap: str, group: str, topics: Sequence[str], interval_s: float = 5.0) -> None:
        self.bootstrap, self.group, self.topics, self.interval_s = bootstrap, group, list(topics), interval_s
        self._value: Lag | None = None
        self._at = -float("inf")
        self._lock = asyncio.Lock()

    async def get(self) -> Lag | None:
        async with self._lock:
            if time.monotonic() - self._at >= self.interval_s:
                try:  # bounded: an unreachable broker costs a scrape seconds, not minutes
                    self._value = await asyncio.wait_for(
                        group_lag(self.bootstrap, self.group, self.topics), timeout=10
                    )
                except Exception:
                    self._value = None  # absent rather than stale
                self._at = time.monotonic()
            return self._value


# The inbox's consumers without scanning it: a skip scan over its primary key (consumer, event_id).
_CONSUMERS = text(
    """
    WITH RECURSIVE c AS (
        (SELECT consumer FROM inbox ORDER BY consumer LIMIT 1)
        UNION ALL
        SELECT (SELECT i.consumer FROM inbox i WHERE i.consumer > c.consumer ORDER BY i.consumer LIMIT 1)
        FROM c WHERE c.consumer IS NOT NULL
    )
    SELECT consumer FROM c WHERE consumer IS NOT NULL
    """
)


async def inbox_consumers(engine: AsyncEngine) -> list[str]:
    """The consumer groups that applied events into this database (its inbox's `consumer` values)."""
    async with engine.connect() as conn:
        return [row[0] for row in await conn.execute(_CONSUMERS)]


async def consumer_lag_report(
    engine: AsyncEngine, bootstrap: str, groups: Sequence[str] | None = None
) -> dict[str, Any]:
    """Per consumer group of this database: total lag and lag per topic-partition (None when unknown)."""
    report: dict[str, Any] = {}
    for group in groups or await inbox_consumers(engine):
        try:
            lag = await group_lag(bootstrap, group, None)
        except Exception as exc:
            report[group] = {"lag": None, "error": f"{type(exc).__name__}: {exc}"}
            continue
        report[group] = {
            "lag": sum(lag.values()),
            "partitions": {
                f"{topic}[{partition}]": value for (topic, partition), value in sorted(lag.items())
            },
        }
    return report


def render_status(status: dict[str, Any]) -> str:
    """`outbox status` for a person: the relay's figures, then one line per consumer group."""
    lines = [
        f"outbox  pending {status.get('pending')}  oldest pending {status.get('oldest_pending_age_s')} s  "
        f"dead {status.get('dead_lettered')}  retained ~{status.get('published_retained')}",
        f"  pending: ready {status.get('ready')}  behind a failed row {status.get('behind_backoff')}  "
        f"behind a dead row {status.get('behind_dead')}  "
        f"behind a later-ready row {status.get('held_behind_pending')}  in backoff {status.get('backoff')}",
    ]
    for row in status.get("dead_letter_sample") or []:
        lines.append(f"  dead #{row['id']} {row['event_type']} {row['aggregate_id']}: {row['last_error']}")
    for group, lag in (status.get("consumer_groups") or {}).items():
        if lag.get("lag") is None:
            lines.append(f"group {group}  lag unknown ({lag.get('error')})")
            continue
        parts = "  ".join(f"{tp}={value}" for tp, value in lag["partitions"].items() if value)
        lines.append(f"group {group}  lag {lag['lag']}" + (f"  ({parts})" if parts else ""))
    return "\n".join(lines)
