"""The instruments: what a relay, a consumer and an outbox's owner record (see `metrics` for the provider
and the per-process singletons)."""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from opentelemetry import metrics
from opentelemetry.metrics import CallbackOptions, Observation

METER_NAME = "outbox"
SYSTEM = {"messaging.system": "kafka"}


def _meter() -> metrics.Meter:
    return metrics.get_meter(METER_NAME)


class _RowLike(Protocol):
    @property
    def topic(self) -> str: ...
    @property
    def occurred_at(self) -> Any: ...


# Latency measurements per topic per batch at most (about: an even stride over the batch's rows).
LATENCY_SAMPLES = 32


class RelayMetrics:
    """What one relay process publishes; created lazily so `setup_metrics` may run first."""

    def __init__(self) -> None:
        meter = _meter()
        self.sent = meter.create_counter(
            "messaging.client.sent.messages", unit="{message}", description="Events the broker acked"
        )
        self.failures = meter.create_counter(
            "outbox.relay.publish.failures",
            unit="{message}",
            description="Rows the broker refused (non-retriable), counted per attempt",
        )
        self.dead = meter.create_counter(
            "outbox.relay.dead_lettered", unit="{message}", description="Rows dead-lettered by the relay"
        )
        self.batch_size = meter.create_histogram(
            "outbox.relay.batch.size", unit="{row}", description="Rows claimed per batch"
        )
        self.latency = meter.create_histogram(
            "outbox.relay.commit_to_ack.duration",
            unit="s",
            description="From the writer's transaction (occurred_at) to the broker's ack",
        )

    def claimed(self, relay: str, rows: int) -> None:
        self.batch_size.record(rows, {"outbox.relay.name": relay})

    def published(self, relay: str, rows: Iterable[_RowLike]) -> None:
        """Count every acked row; time at most LATENCY_SAMPLES rows per topic of a batch, evenly spaced.

        One histogram measurement costs the OpenTelemetry SDK ~5 µs, a sixth of the relay's whole per-row
        budget during a backlog; a sample of a batch's rows (which share one ack) gives the same percentiles."""
        now = time.time()
        by_topic: dict[str, list[_RowLike]] = {}
        for row in rows:
            group = by_topic.get(row.topic)
            if group is None:
                group = by_topic[row.topic] = []
            group.append(row)
        for topic, group in by_topic.items():
            attrs = {"outbox.relay.name": relay, "messaging.destination.name": topic}
            record = self.latency.record
            for row in group[:: max(1, len(group) // LATENCY_SAMPLES)]:
                occurred = _epoch(row.occurred_at)
                if occurred is not None:
                    record(now - occurred, attrs)
            self.sent.add(len(group), {**SYSTEM, **attrs})

    def failed(self, relay: str, topic: str, error: BaseException, *, dead: bool) -> None:
        attrs = {"outbox.relay.name": relay, "messaging.destination.name": topic}
        self.failures.add(1, {**attrs, "error.type": type(error).__name__})
        if dead:
            self.dead.add(1, attrs)


def _epoch(value: Any) -> float | None:
    if isinstance(value, datetime):
        return value.timestamp()
    if isinstance(value, str):
        try:
            return datetime.fromisoformat(value).timestamp()
        except ValueError:
            return None
    return None


# Consumer stats fields → the `outbox.outcome` attribute of `outbox.consumer.messages`.
_OUTCOMES = {
    "applied": "applied",
    "duplicates": "duplicate",
    "stale": "stale",
    "ignored": "ignored",
    "dead_lettered": "dead_lettered",
    "parked": "parked",
    "released": "released",
    "gap_expired": "gap_expired",
}


class ConsumerMetrics:
    """What consumer processes apply; lag per topic-partition from the fetch highwater, not end_offsets."""

    def __init__(self) -> None:
        meter = _meter()
        self.consumed = meter.create_counter(
            "messaging.client.consumed.messages", unit="{message}", description="Records fetched"
        )
        self.outcomes = meter.create_counter(
            "outbox.consumer.messages",
            unit="{message}",
            description="Records by outcome: applied, duplicate, stale, ignored, dead_lettered",
        )
        self.duration = meter.create_histogram(
            "messaging.process.duration",
            unit="s",
            description="Time to apply one fetched batch (one transaction), recorded once per batch",
        )
        self._last_stats: dict[str, dict[str, int]] = {}
        self._lag: dict[str, dict[tuple[str, int], int]] = {}
        self._lock = threading.Lock()
        meter.create_observable_gauge(
            "outbox.consumer.lag",
            callbacks=[self._observe_lag],
            unit="{message}",
            description="Fetch highwater minus the consumer's position, per topic-partition",
        )
        # Parked events (gap-aware handlers), refreshed by each park sweep, and the age past which the
        # consumer logs an error about them (OUTBOX_CONSUMER_PARK_ALERT_S): the alert rule compares the two.
        self._parked: dict[str, tuple[int, float, float]] = {}
        for name, unit, pick, description in (
            ("outbox.consumer.parked.messages", "{message}", 0, "Events parked waiting for a version"),
            ("outbox.consumer.parked.oldest_age", "s", 1, "Age of the oldest parked event (0 when none)"),
            ("outbox.consumer.parked.alert_after", "s", 2, "OUTBOX_CONSUMER_PARK_ALERT_S of this consumer"),
        ):
            meter.create_observable_gauge(
                name, callbacks=[self._observe_parked(pick)], unit=unit, description=description
            )

    def set_parked(self, group: str, events: int, oldest_age_s: float, alert_after_s: float) -> None:
        with self._lock:
            self._parked[group] = (events, oldest_age_s, alert_after_s)

    def _observe_parked(self, pick: int) -> Callable[[CallbackOptions], Iterable[Observation]]:
        def callback(options: CallbackOptions) -> Iterable[Observation]:
            with self._lock:
                items = list(self._parked.items())
            return [Observation(v[pick], {"messaging.consumer.group.name": g}) for g, v in items]

        return callback

    def batch_done(
        self, group: str, records: Mapping[tuple[str, int], int], stats: object, started: float
    ) -> None:
        """After a batch: `records` per (wire topic, partition), the consumer's cumulative stats object."""
        elapsed = time.monotonic() - started
        base = {**SYSTEM, "messaging.consumer.group.name": group}
        for (topic, partition), count in records.items():
            self.consumed.add(
                count,
                {
                    **base,
                    "messaging.destination.name": topic,
                    "messaging.destination.partition.id": str(partition),
                },
            )
        self.duration.record(elapsed, base)
        self.stats_changed(group, stats)

    def stats_changed(self, group: str, stats: object) -> None:
        if not dataclasses.is_dataclass(stats) or isinstance(stats, type):
            return
        current = {k: v for k, v in dataclasses.asdict(stats).items() if isinstance(v, int)}
        with self._lock:
            previous = self._last_stats.get(group, {})
            self._last_stats[group] = current
        for field_name, outcome in _OUTCOMES.items():
            delta = current.get(field_name, 0) - previous.get(field_name, 0)
            if delta > 0:
                self.outcomes.add(delta, {"messaging.consumer.group.name": group, "outbox.outcome": outcome})

    def set_lag(self, group: str, lag: Mapping[tuple[str, int], int]) -> None:
        """Replace the group's lag table (partitions no longer assigned disappear)."""
        with self._lock:
            self._lag[group] = dict(lag)

    def _observe_lag(self, options: CallbackOptions) -> Iterable[Observation]:
        with self._lock:
            tables = {group: dict(lag) for group, lag in self._lag.items()}
        for group, lag in tables.items():
            for (topic, partition), value in lag.items():
                yield Observation(
                    value,
                    {
                        "messaging.consumer.group.name": group,
                        "messaging.destination.name": topic,
                        "messaging.destination.partition.id": str(partition),
                    },
                )


@dataclass(slots=True)
class BacklogSnapshot:
    """One database's outbox figures, refreshed by the API before each scrape."""

    pending: int
    oldest_pending_age_s: float
    dead: int


class OutboxGauges:
    """Backlog, oldest pending age and dead rows per database, and consumer-group lag seen from outside."""

    def __init__(self) -> None:
        meter = _meter()
        self._lock = threading.Lock()
        self._backlog: dict[str, BacklogSnapshot] = {}
        self._group_lag: dict[str, dict[tuple[str, int], int]] = {}
        meter.create_observable_gauge(
            "outbox.pending.messages",
            callbacks=[self._observe(lambda s: s.pending)],
            unit="{message}",
            description="Outbox rows not yet published (nor dead)",
        )
        meter.create_observable_gauge(
            "outbox.pending.oldest_age",
            callbacks=[self._observe(lambda s: s.oldest_pending_age_s)],
            unit="s",
            description="Age of the oldest pending outbox row (0 when none)",
        )
        meter.create_observable_gauge(
            "outbox.dead.messages",
            callbacks=[self._observe(lambda s: s.dead)],
            unit="{message}",
            description="Outbox rows the relay dead-lettered",
        )
        meter.create_observable_gauge(
            "outbox.consumer_group.lag",
            callbacks=[self._observe_group_lag],
            unit="{message}",
            description="Fetch highwater minus the group's committed offset, per topic-partition",
        )

    def set_backlog(self, database: str, snapshot: BacklogSnapshot | None) -> None:
        with self._lock:
            if snapshot is None:
                self._backlog.pop(database, None)
            else:
                self._backlog[database] = snapshot

    def set_group_lag(self, group: str, lag: Mapping[tuple[str, int], int] | None) -> None:
        with self._lock:
            if lag is None:
                self._group_lag.pop(group, None)
            else:
                self._group_lag[group] = dict(lag)

    def _observe(self, pick: Any) -> Any:
        def callback(options: CallbackOptions) -> Iterable[Observation]:
            with self._lock:
                items = list(self._backlog.items())
            return [Observation(pick(snapshot), {"outbox.database": name}) for name, snapshot in items]

        return callback

    def _observe_group_lag(self, options: CallbackOptions) -> Iterable[Observation]:
        with self._lock:
            tables = {group: dict(lag) for group, lag in self._group_lag.items()}
        return [
            Observation(
                value,
                {
                    "messaging.consumer.group.name": group,
                    "messaging.destination.name": topic,
                    "messaging.destination.partition.id": str(partition),
                },
            )
            for group, lag in tables.items()
            for (topic, partition), value in lag.items()
        ]
