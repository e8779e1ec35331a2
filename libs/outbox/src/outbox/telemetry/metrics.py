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
import logging
import os
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar, cast

from aiokafka.errors import KafkaError
from opentelemetry import metrics

from outbox.telemetry.instruments import (
    METER_NAME,
    BacklogSnapshot,
    ConsumerMetrics,
    OutboxGauges,
    RelayMetrics,
)

# Seconds: from a few ms (commit → ack on an idle relay) to minutes (a backlog).
_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)
_BATCH_BUCKETS = (1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000)

__all__ = [
    "METER_NAME",
    "BacklogSnapshot",
    "ConsumerMetrics",
    "OutboxGauges",
    "RelayMetrics",
    "consumer_metrics",
    "observe_consumer_lag",
    "outbox_gauges",
    "prometheus_text",
    "relay_metrics",
    "serve_metrics",
    "serve_metrics_from_env",
    "setup_metrics",
]

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
