"""`GET /metrics` of a service: the process's OpenTelemetry metrics as Prometheus text.

Before each scrape the API refreshes the figures it can see from where it stands: its own database's
outbox (backlog, oldest pending age, dead rows), its consumer group's lag per topic-partition (broker
highwater from a fetch minus the group's committed offset, cached a few seconds), and its readiness checks
(`service_ready{check=...}`: 1 or 0, the same checks as `GET /readyz`). The relay and consumer
processes' own counters are served on their own ports (`OUTBOX_METRICS_PORT`), see ARCHITECTURE.md.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from opentelemetry import metrics
from opentelemetry.metrics import CallbackOptions, Observation

from outbox.kafka import bootstrap_from_env, topic_prefix
from outbox.ops.observe import CachedGroupLag, read_backlog
from outbox.telemetry.metrics import outbox_gauges, prometheus_text
from servicekit.readiness import check_readiness

log = logging.getLogger("servicekit.metrics")

# One gauge per process (an app factory may run more than once in a test process).
_ready: dict[str, int] = {}
_ready_lock = threading.Lock()
_ready_gauge: list[object] = []


def _observe_ready(options: CallbackOptions) -> Iterable[Observation]:
    with _ready_lock:
        items = list(_ready.items())
    return [Observation(value, {"check": name}) for name, value in items]


def _ensure_ready_gauge() -> None:
    with _ready_lock:
        if not _ready_gauge:
            _ready_gauge.append(
                metrics.get_meter("servicekit").create_observable_gauge(
                    "service.ready",
                    callbacks=[_observe_ready],
                    description="1 when the readiness check passes, else 0 (the checks of GET /readyz)",
                )
            )


class MetricsSources:
    def __init__(self, service: str, consumer_groups: Mapping[str, Sequence[str]]) -> None:
        self.service = service
        interval = float(os.environ.get("OUTBOX_METRICS_LAG_INTERVAL_S", "5"))
        self._lags = {
            group: CachedGroupLag(
                bootstrap_from_env(), group, [topic_prefix() + t for t in topics], interval_s=interval
            )
            for group, topics in consumer_groups.items()
        }
        _ensure_ready_gauge()

    async def render(self, state: Any) -> tuple[bytes, str]:
        db = getattr(state, "db", None)
        await asyncio.gather(
            self._refresh_backlog(db),
            self._refresh_ready(state),
            *(self._refresh_lag(g) for g in self._lags),
        )
        return prometheus_text()

    async def _refresh_ready(self, state: Any) -> None:
        results = await check_readiness(state)
        with _ready_lock:
            _ready.clear()
            _ready.update({name: int(result == "ok") for name, result in results.items()})

    async def _refresh_backlog(self, db: Any) -> None:
        gauges = outbox_gauges()
        if db is None:
            return
        try:
            gauges.set_backlog(self.service, await read_backlog(db.engine))
        except Exception as exc:  # database down: the gauges disappear rather than lie
            log.warning("metrics: outbox backlog of %s unavailable (%s)", self.service, exc)
            gauges.set_backlog(self.service, None)

    async def _refresh_lag(self, group: str) -> None:
        outbox_gauges().set_group_lag(group, await self._lags[group].get())
