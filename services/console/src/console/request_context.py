"""The per-request context: the caller's workspace, one unit of work, and the Idempotency-Key.

Every endpoint runs its service call through `read` or `write`. Both resolve (lazily create) the caller's
workspace in the same transaction. `write` also claims the Idempotency-Key first and stores the response
before the unit of work commits once: the change, its outbox events and the stored response are one commit.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Annotated, TypeVar

from fastapi import Depends, Header, Request, Response
from psycopg.errors import DeadlockDetected, SerializationFailure
from pydantic import BaseModel
from sqlalchemy.exc import DBAPIError
from tenacity import AsyncRetrying, retry_if_exception, stop_after_attempt, wait_random_exponential

from console.deps import Account, CurrentAccountDep, DatabaseDep
from console.models import Workspace
from console.workspaces.service import ensure_workspace
from servicekit import idempotency
from servicekit.db import Database, UnitOfWork

T = TypeVar("T")

log = logging.getLogger("console.request")

REPLAY_HEADER = "Idempotent-Replayed"


class RequestContext:
    def __init__(self, request: Request, db: Database, account: Account, idempotency_key: str | None) -> None:
        self.request = request
        self.db = db
        self.account = account
        self.idempotency_key = (
            idempotency.validate_key(idempotency_key) if idempotency_key is not None else None
        )

    async def read(self, fn: Callable[[UnitOfWork, Workspace], Awaitable[T]]) -> T:
        async for attempt in retry_on_deadlock():
            with attempt:
                async with self.db.unit_of_work() as uow:
                    workspace = await ensure_workspace(uow.session, str(self.account.id), self.account.email)
                    return await fn(uow, workspace)
        raise AssertionError("unreachable: the retry loop returns or raises")

    async def write(
        self, fn: Callable[[UnitOfWork, Workspace], Awaitable[BaseModel | None]], *, status_code: int = 200
    ) -> Response:
        key = self.idempotency_key
        fingerprint = ""
        if key is not None:
            body = await self.request.body()
            fingerprint = idempotency.request_fingerprint(
                self.request.method, self.request.url.path, self.request.url.query, body
            )
        async for attempt in retry_on_deadlock():
            with attempt:
                return await self._write_once(fn, status_code, key, fingerprint)
        raise AssertionError("unreachable: the retry loop returns or raises")

    async def _write_once(
        self,
        fn: Callable[[UnitOfWork, Workspace], Awaitable[BaseModel | None]],
        status_code: int,
        key: str | None,
        fingerprint: str,
    ) -> Response:
        async with self.db.unit_of_work() as uow:
            if key is not None:
                stored = await idempotency.claim(
                    uow.session, scope=str(self.account.id), key=key, fingerprint=fingerprint
                )
                if stored is not None:
                    return _response(stored.status_code, stored.body, replayed=True)
            workspace = await ensure_workspace(uow.session, str(self.account.id), self.account.email)
            result = await fn(uow, workspace)
            payload = result.model_dump_json() if result is not None else ""
            if key is not None:
                await idempotency.complete(
                    uow.session, scope=str(self.account.id), key=key, status_code=status_code, body=payload
                )
        return _response(status_code, payload, replayed=False)


def _is_deadlock(exc: BaseException) -> bool:
    return isinstance(exc, DBAPIError) and isinstance(exc.orig, DeadlockDetected | SerializationFailure)


def retry_on_deadlock() -> AsyncRetrying:
    """Rerun a whole unit of work that PostgreSQL chose as a deadlock victim.

    Requests lock documents in id order and the consumer locks one document per transaction, so a cycle
    should not form; this is the safety net if one does (a future code path locking in another order).
    Everything rolled back (changes, events, the idempotency claim), so running again is safe.
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


def _response(status_code: int, body: str, *, replayed: bool) -> Response:
    headers = {REPLAY_HEADER: "true"} if replayed else {}
    if status_code == 204 or not body:
        return Response(status_code=status_code, headers=headers)
    return Response(content=body, status_code=status_code, media_type="application/json", headers=headers)


def read_context(request: Request, db: DatabaseDep, account: CurrentAccountDep) -> RequestContext:
    return RequestContext(request, db, account, None)


def write_context(
    request: Request,
    db: DatabaseDep,
    account: CurrentAccountDep,
    idempotency_key: Annotated[
        str | None,
        Header(
            alias=idempotency.HEADER,
            description="Makes a retried POST/PATCH/DELETE safe: the same key and body replay the first response.",
        ),
    ] = None,
) -> RequestContext:
    return RequestContext(request, db, account, idempotency_key)


ReadDep = Annotated[RequestContext, Depends(read_context)]
WriteDep = Annotated[RequestContext, Depends(write_context)]
