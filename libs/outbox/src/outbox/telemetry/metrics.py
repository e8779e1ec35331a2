"""Metrics: OpenTelemetry instruments for the relay, the consumer and the outbox tables.

`setup_metrics(service)` installs one SDK MeterProvider per process (beside the tracer provider) with a
Prometheus reader (text for `GET /metrics`, or for `serve_metrics(port)` in relay and consumer processes)
and, when `OTEL_EXPORTER_OTLP_ENDPOINT` (or the metrics-specific variable) is set, a periodic OTLP exporter.
Without it the instruments are no-ops: the hooks in relay.py and consumer.py then cost next to nothing.

Names follow the OpenTelemetry semantic conventions where one exists (`messaging.client.sent.messages`,
`messaging.client.consumed.messages`, `messaging.process.duration`); the outbox's own figures live under
`outbox.*`. Gauges are observed from snapshots refreshed by their owner (`BacklogSnapshot`, the lag
tables), so a collection never blocks on a database or a broker: a figure that could not be refreshed is
dropped, never reported stale (a metric tells the truth or is absent).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol, TypeVar, cast

from aiokafka.errors import KafkaError
from opentelemetry import metrics
from opentelemetry.metrics import CallbackOptions, Observation

METER_NAME = "outbox"
SYSTEM = {"messaging.system": "kafka"}
# Seconds: from a few ms (commit → ack on an idle relay) to minutes (a backlog).
_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)
_BATCH_BUCKETS = (1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000)

_setup_lock = threading.Lock()
_installed = False


def setup_metrics(service_name: str) -> None:
    """Install the process's MeterProvider (Prometheus reader, plus OTLP when configured). Idempotent."""
    global _installed
    with _setup_lock:
        if _installed or os.environ.get("OTEL_SDK_DISABLED", "").lower() == "true":
            return
        try:
            from opentelemetry.exporter.prometheus import PrometheusMetricReader
            from opentelemetry.sdk.metrics import MeterProvider
            from opentelemetry.sdk.metrics.export import MetricReader, PeriodicExportingMetricReader
            from opentelemetry.sdk.metrics.view import ExplicitBucketHistogramAggregation, View
            from opentelemetry.sdk.resources import SERVICE_NAME, Resource
        except ImportError:  # the `otel` extra is not installed: the instruments stay no-ops
            logging.getLogger("outbox.metrics").info(
                "metrics off: install kafka-txoutbox[otel] to export them"
            )
            return

        readers: list[MetricReader] = [PrometheusMetricReader()]
        if os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or os.environ.get(
            "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT"
        ):
            from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter

            readers.append(PeriodicExportingMetricReader(OTLPMetricExporter()))
        views = [
            View(
                instrument_name="outbox.relay.batch.size",
                aggregation=ExplicitBucketHistogramAggregation(_BATCH_BUCKETS),
            ),
            View(
                instrument_name="*duration*", aggregation=ExplicitBucketHistogramAggregation(_LATENCY_BUCKETS)
            ),
        ]
        resource = Resource.create({SERVICE_NAME: os.environ.get("OTEL_SERVICE_NAME", service_name)})
        metrics.set_meter_provider(MeterProvider(resource=resource, metric_readers=readers, views=views))
        _installed = True


def prometheus_text() -> tuple[bytes, str]:
    """The process's metrics in the Prometheus text format, and its content type."""
    from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST


def serve_metrics(port: int, host: str = "127.0.0.1") -> None:
    """Serve `/metrics` from a background thread (relay and consumer processes have no HTTP server)."""
    from prometheus_client import start_http_server

    start_http_server(port, addr=host)


def serve_metrics_from_env() -> int | None:
    """`OUTBOX_METRICS_PORT` (and `OUTBOX_METRICS_HOST`, default 127.0.0.1): serve there; the port or None.

    A port already taken costs the metrics endpoint, never the relay or consumer: a warning, and on."""
    port = int(os.environ.get("OUTBOX_METRICS_PORT") or 0)
    if not port:
        return None
    try:
        serve_metrics(port, os.environ.get("OUTBOX_METRICS_HOST", "127.0.0.1"))
    except OSError as exc:
        logging.getLogger("outbox.metrics").warning("metrics not served on port %d: %s", port, exc)
        return None
    return port


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


_LAG_EVERY_S = 0.5
_lag_observed_at: dict[str, float] = {}


async def observe_consumer_lag(group: str, consumer: Any) -> None:
    """Lag of each assigned partition of an aiokafka consumer: the highwater its last fetch reported minus
    its position (next record to hand out). Partitions without a fetch response yet are left out.
    Called from the consumer's loop; does the work at most every 0.5 s."""
    now = time.monotonic()
    if now - _lag_observed_at.get(group, -_LAG_EVERY_S) < _LAG_EVERY_S:
        return
    _lag_observed_at[group] = now
    lag: dict[tuple[str, int], int] = {}
    for tp in consumer.assignment():
        highwater = consumer.highwater(tp)
        if highwater is None:
            continue
        try:  # a valid position answers at once; one being reset would wait for the broker: skip it
            position = await asyncio.wait_for(consumer.position(tp), 0.1)
        except (TimeoutError, KafkaError):
            continue
        lag[(tp.topic, tp.partition)] = max(int(highwater) - int(position), 0)
    consumer_metrics().set_lag(group, lag)


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


_singletons: dict[type[Any], Any] = {}
_T = TypeVar("_T")


def _singleton(factory: Callable[[], _T]) -> _T:
    with _setup_lock:
        if factory not in _singletons:
            _singletons[factory] = factory()  # type: ignore[index]
        return cast(_T, _singletons[factory])  # type: ignore[index]


def relay_metrics() -> RelayMetrics:
    return _singleton(RelayMetrics)


def consumer_metrics() -> ConsumerMetrics:
    return _singleton(ConsumerMetrics)


def outbox_gauges() -> OutboxGauges:
    return _singleton(OutboxGauges)
