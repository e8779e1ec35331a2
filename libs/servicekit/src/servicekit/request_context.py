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

import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar

from psycopg.errors import DeadlockDetected, SerializationFailure
from sqlalchemy.exc import DBAPIError
from tenacity import AsyncRetrying, retry_if_exception, stop_after_attempt, wait_random_exponential

from servicekit.db import Database, UnitOfWork

T = TypeVar("T")

log = logging.getLogger("servicekit.request")


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
        if not self.retry_deadlocks:
            async with self.db.unit_of_work(commit_on=self.commit_on) as uow:
                return await fn(uow)
        async for attempt in retry_on_deadlock():
            with attempt:
                async with self.db.unit_of_work(commit_on=self.commit_on) as uow:
                    return await fn(uow)
        raise AssertionError("unreachable: the retry loop returns or raises")


def _is_deadlock(exc: BaseException) -> bool:
    return isinstance(exc, DBAPIError) and isinstance(exc.orig, DeadlockDetected | SerializationFailure)


def retry_on_deadlock() -> AsyncRetrying:
    """Rerun a whole unit of work that PostgreSQL chose as a deadlock victim.

    Everything rolled back (changes, events, an idempotency claim), so running again is safe for a use
    case whose only effects are in the database (not auth's: its throttle counters live in Redis).
    """
    return AsyncRetrying(
        retry=retry_if_exception(_is_deadlock),
        stop=stop_after_attempt(5),
        wait=wait_random_exponential(multiplier=0.02, max=0.5),
        reraise=True,
        before_sleep=lambda state: log.warning(
            "deadlock victim, running the unit of work again (%d)", state.attempt_number
        ),
    )
