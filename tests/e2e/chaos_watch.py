"""Where the chaos test's system is while it waits, and the load's back-pressure.

`Watch.snapshot()` reads, per stage: console changes not yet relayed, changes relayed but not applied by
the indexer, reports not relayed, reports not applied by console; and per partition of console.document:
the last offset the indexer applied, and the group's lag on the broker (highwater minus committed, from
`outbox.observe.group_lag`). A phase that waits prints it every few seconds, and a failure carries it.

`Backpressure` holds the load while the indexer is far behind. The storm's clients offer a fixed rate
(~20 changes/s); a host that applies less than that (slow cores, a durable broker stand-in whose fetches
slow down with history, see test_chaos.py) would otherwise build a backlog that grows with every fault,
and every later recovery would wait for it. The test is about what faults lose, not about capacity: the
clients pause while the two hops together are more than `high` events behind and go on below `low`, and
the figures say how long they paused.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass, field

from outbox.ops.observe import LagUnknown, group_lag
from tests.e2e.chaos_audit import backlog
from tests.e2e.system import System


@dataclass
class Snapshot:
    backlog: dict[str, int]
    applied_offsets: dict[int, int]  # partition -> last offset the indexer applied
    lag: dict[int, int] | str  # partition -> broker lag, or why it is unknown

    def __str__(self) -> str:
        return (
            f"backlog {self.backlog}; indexer applied offsets {self.applied_offsets}; broker lag {self.lag}"
        )


class Watch:
    def __init__(self, system: System) -> None:
        self.system = system
        self.topic = f"{system.topic_prefix}console.document"
        self.group = system.groups["indexer-consumer"]

    def behind(self) -> int:
        """Changes not yet applied by the indexer plus reports not yet applied by console."""
        stages = backlog(self.system)
        return stages["to_index"] + stages["to_report"]

    async def snapshot(self) -> Snapshot:
        stages = await asyncio.to_thread(backlog, self.system)
        rows = await asyncio.to_thread(
            self.system.rows,
            "indexer",
            'SELECT partition, max("offset") FROM inbox WHERE consumer = %s AND topic = %s GROUP BY partition',
            self.group,
            "console.document",
        )
        lag: dict[int, int] | str
        try:
            by_tp = await asyncio.wait_for(
                group_lag(self.system.bootstrap, self.group, [self.topic], timeout_s=3.0), timeout=8.0
            )
            lag = {partition: n for (_, partition), n in sorted(by_tp.items())}
        except (LagUnknown, TimeoutError, OSError) as exc:
            lag = f"unknown ({type(exc).__name__})"
        except Exception as exc:  # the broker is down or cut: say so, the phase goes on
            lag = f"unknown ({type(exc).__name__}: {exc})"
        return Snapshot(stages, {int(p): int(o) for p, o in sorted(rows)}, lag)


@dataclass
class Backpressure:
    high: int = 200
    low: int = 60
    open: asyncio.Event = field(default_factory=asyncio.Event)
    held_s: float = 0.0
    holds: int = 0
    _since: float | None = None

    def __post_init__(self) -> None:
        self.open.set()

    def update(self, behind: int) -> None:
        if self.open.is_set() and behind > self.high:
            self.open.clear()
            self.holds += 1
            self._since = time.monotonic()
        elif not self.open.is_set() and behind < self.low:
            self.release()

    def release(self) -> None:
        if self._since is not None:
            self.held_s += time.monotonic() - self._since
            self._since = None
        self.open.set()

    async def run(self, watch: Watch, stop: asyncio.Event, interval: float = 0.5) -> None:
        """Update from the indexer's backlog until `stop`; then let everything through."""
        try:
            while not stop.is_set():
                with contextlib.suppress(Exception):  # a database blip: keep the last state, look again
                    self.update(await asyncio.to_thread(watch.behind))
                await asyncio.sleep(interval)  # polling interval
        finally:
            self.release()
