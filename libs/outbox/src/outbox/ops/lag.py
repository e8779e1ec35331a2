"""Consumer groups' lag seen from outside: the partition's highwater minus the group's committed offset.

The highwater comes from a fetch response, not from ListOffsets(latest): some brokers (Tansu, see
docs/broker.md) answer the latter with the first offset of the last batch + 1, which under-reports
lag whenever batches hold several records. Neither SQLAlchemy nor OpenTelemetry is imported here
(`outbox status` stays fast).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import Any

from aiokafka import TopicPartition
from aiokafka.errors import KafkaError

from outbox.kafka import bootstrap_from_env, topic_prefix
from outbox.kafka.clients import KafkaAdmin, KafkaConsumer

Lag = dict[tuple[str, int], int]


class LagUnknown(Exception):
    """The broker did not say enough to compute a true lag (no highwater in time, unknown topic)."""


async def group_lag(
    bootstrap: str, group: str, topics: Sequence[str] | None, *, timeout_s: float = 5.0
) -> Lag:
    """Per (wire topic, partition): highwater minus committed offset (minus the log start when nothing
    committed). `topics=None`: every topic under OUTBOX_TOPIC_PREFIX (dead-letter topics aside) on which
    the group has committed an offset, so a stopped consumer's lag is still seen."""
    return (await groups_lag(bootstrap, [group], topics, timeout_s=timeout_s))[group]


async def groups_lag(
    bootstrap: str, groups: Sequence[str], topics: Sequence[str] | None, *, timeout_s: float = 5.0
) -> dict[str, Lag]:
    """`group_lag` of several groups with one probe consumer and one admin client: the highwater of a
    partition is the same for every group, and each client's start costs a bootstrap and a metadata round."""
    probe = KafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=None,
        enable_auto_commit=False,
        fetch_max_wait_ms=10,
        max_partition_fetch_bytes=1024,
        request_timeout_ms=int(timeout_s * 1000) + 1000,
    )
    admin = KafkaAdmin(bootstrap_servers=bootstrap, request_timeout_ms=int(timeout_s * 1000))
    try:  # stopped whatever happens, a failed or cancelled start included: no "Unclosed AIOKafkaConsumer"
        await probe.start()
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
            # Explicit partitions: some brokers answer the no-partitions form with a malformed response.
            fetched = (
                await asyncio.gather(
                    *(admin.list_consumer_group_offsets(group, partitions=partitions) for group in groups)
                )
                if partitions
                else [{} for _ in groups]
            )
            committed_raw = dict(zip(groups, fetched, strict=True))
        finally:
            await admin.close()
        mine: dict[str, list[TopicPartition]] = {}
        for group in groups:
            consumed = {
                tp.topic for tp, meta in committed_raw[group].items() if meta is not None and meta.offset >= 0
            }
            mine[group] = [tp for tp in partitions if tp.topic in consumed] if discover else partitions
        wanted = sorted({tp for tps in mine.values() for tp in tps})
        if not wanted:
            return {group: {} for group in groups}
        starts = await probe.beginning_offsets(wanted)
        committed: dict[str, dict[TopicPartition, int]] = {}
        for group in groups:
            committed[group] = {}
            for tp in mine[group]:
                meta = committed_raw[group].get(tp)
                offset = meta.offset if meta is not None else -1
                committed[group][tp] = offset if offset >= 0 else starts[tp]
        # Any valid position gets the partition's highwater in the fetch response: the log start does.
        probe.assign(wanted)
        for tp in wanted:
            probe.seek(tp, starts[tp])
        deadline = time.monotonic() + timeout_s
        while any(probe.highwater(tp) is None for tp in wanted):
            if time.monotonic() > deadline:
                raise LagUnknown(f"no fetch highwater within {timeout_s}s for group(s) {', '.join(groups)}")
            await probe.getmany(timeout_ms=50, max_records=1)
        return {
            group: {
                (tp.topic, tp.partition): max(int(probe.highwater(tp)) - offset, 0)
                for tp, offset in committed[group].items()
            }
            for group in groups
        }
    finally:
        await probe.stop()


async def lag_report(bootstrap: str, groups: Sequence[str], *, timeout_s: float = 5.0) -> dict[str, Any]:
    """`consumer_groups` (per group: `lag`, `partitions`; `lag` None and an `error` when unknown) and
    `broker_error`: one sentence when the broker could not be asked at all (then every lag is unknown)."""
    report: dict[str, Any] = {"consumer_groups": {}, "broker_error": None}
    if not groups:
        return report
    try:
        lags = await asyncio.wait_for(groups_lag(bootstrap, groups, None, timeout_s=timeout_s), timeout_s * 3)
    except (KafkaError, OSError, TimeoutError, LagUnknown) as exc:
        message = _one_line(exc)
        if not isinstance(exc, LagUnknown):
            report["broker_error"] = message
        for group in groups:
            report["consumer_groups"][group] = {"lag": None, "error": message}
        return report
    for group in groups:
        lag = lags[group]
        report["consumer_groups"][group] = {
            "lag": sum(lag.values()),
            "partitions": {
                f"{topic}[{partition}]": value for (topic, partition), value in sorted(lag.items())
            },
        }
    return report


def _one_line(exc: BaseException) -> str:
    """The client's own sentence (kafka.clients names the cause and the setting), without a class prefix."""
    if isinstance(exc, TimeoutError):
        return f"no answer from the broker in time (KAFKA_BOOTSTRAP={bootstrap_from_env()})"
    text = str(exc).strip() or type(exc).__name__
    for _ in range(2):  # aiokafka prefixes its message with the class name, sometimes twice
        text = text.removeprefix(f"{type(exc).__name__}: ")
    return text.splitlines()[0]
