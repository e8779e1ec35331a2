"""The relay's and the consumer's background chores: the one "every N seconds until stopped" loop, and their stop."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence

from outbox.log_throttle import LogThrottle


async def every(
    interval_s: float,
    chore: Callable[[], Awaitable[object]],
    *,
    stopping: asyncio.Event,
    log: LogThrottle,
    failed: str,
) -> None:
    """Run `chore` now and every `interval_s` until `stopping` is set. A failure is logged as
    "<failed> (<error>); will retry" (at most once per interval: `LogThrottle`) and the loop goes on; a stop interrupts the wait at once."""
    while not stopping.is_set():
        try:
            await chore()
        except Exception as exc:
            log.log(logging.WARNING, failed, "%s (%s); will retry", failed, exc)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stopping.wait(), interval_s)


async def cancel_and_wait(tasks: Sequence[asyncio.Task[None]]) -> None:
    """Stop a process's background chores (cancelled, then awaited so none outlives the call)."""
    for task in tasks:
        task.cancel()
    for task in tasks:
        with contextlib.suppress(asyncio.CancelledError):
            await task
