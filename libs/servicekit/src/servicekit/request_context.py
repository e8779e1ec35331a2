"""The request context every service's endpoints run their use cases through.

Endpoints → service functions → repositories. An endpoint hands its use case, a function of one
`UnitOfWork`, to `RequestContext.run`: the unit of work commits once when the use case returns (the
changes and the events it recorded with `uow.emit`), rolls back when it raises (except the `commit_on`
refusals), and with `retry_deadlocks` runs again from scratch when PostgreSQL chose it as a deadlock
victim. Services never commit; the use case returns domain objects (ORM rows, dataclasses) and the
endpoint maps them to its response schema. Console's context adds the workspace and the Idempotency-Key
on top (console/request_context.py); auth's adds the refusals that commit; the indexer's only reads.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable
from typing import TypeVar

from psycopg.errors import DeadlockDetected, SerializationFailure
from sqlalchemy.exc import DBAPIError

from servicekit.db import Database, UnitOfWork

T = TypeVar("T")

log = logging.getLogger("servicekit.request")

# Rerun a whole unit of work that PostgreSQL chose as a deadlock victim, up to this many attempts in all.
# Everything rolled back (changes, events, an idempotency claim), so running again is safe for a use case
# whose only effects are in the database (not auth's: its throttle counters live in Redis). A plain loop,
# not tenacity's: its iterator protocol cost ~2% of a GET's CPU on every request, deadlock or not.
DEADLOCK_ATTEMPTS = 5


class RequestContext:
    def __init__(
        self,
        db: Database,
        *,
        commit_on: tuple[type[object], ...] = (),
        retry_deadlocks: bool = False,
    ) -> None:
        self.db = db
        self.commit_on = commit_on
        self.retry_deadlocks = retry_deadlocks

    async def run(self, fn: Callable[[UnitOfWork], Awaitable[T]]) -> T:
        """`fn` in one unit of work; its result once the unit of work has committed."""
        attempt = 1
        while True:
            try:
                async with self.db.unit_of_work(commit_on=self.commit_on) as uow:
                    return await fn(uow)
            except DBAPIError as exc:
                if not self.retry_deadlocks or not _is_deadlock(exc) or attempt >= DEADLOCK_ATTEMPTS:
                    raise
            log.warning("deadlock victim, running the unit of work again (%d)", attempt)
            await asyncio.sleep(deadlock_backoff(attempt))
            attempt += 1


def _is_deadlock(exc: BaseException) -> bool:
    return isinstance(exc, DBAPIError) and isinstance(exc.orig, DeadlockDetected | SerializationFailure)


def deadlock_backoff(attempt: int) -> float:
    """Seconds before rerunning after failed attempt `attempt` (1, 2, ...): random up to 20 ms x 2^(n-1),
    at most 0.5 s, so two victims of one deadlock do not collide again in step."""
    return random.uniform(0, min(0.5, 0.02 * 2 ** (attempt - 1)))
