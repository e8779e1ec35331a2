"""`GET /metrics` of a service: the process's OpenTelemetry metrics as Prometheus text.

Before each scrape the API refreshes the figures it can see from where it stands: its own database's
outbox (backlog, oldest pending age, dead rows) and its consumer group's lag per topic-partition (broker
highwater from a fetch minus the group's committed offset, cached a few seconds). The relay and consumer
processes' own counters are served on their own ports (`OUTBOX_METRICS_PORT`), see ARCHITECTURE.md.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Mapping, Sequence
from typing import Any

from outbox.kafka import bootstrap_from_env, topic_prefix
from outbox.metrics import outbox_gauges, prometheus_text
from outbox.observe import CachedGroupLag, read_backlog

log = logging.getLogger("servicekit.metrics")


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

    async def render(self, db: Any) -> tuple[bytes, str]:
        await asyncio.gather(self._refresh_backlog(db), *(self._refresh_lag(g) for g in self._lags))
        return prometheus_text()

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
