"""The per-request context: the caller's workspace, one unit of work, and the Idempotency-Key.

Every endpoint runs its service call through `read` or `write`. Both resolve (lazily create) the caller's
workspace in the same transaction. `write` also claims the Idempotency-Key first and stores the response
before the unit of work commits once: the change, its outbox events and the stored response are one commit.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated, TypeVar

from fastapi import Depends, Header, Request, Response
from pydantic import BaseModel
from servicekit import idempotency
from servicekit.db import Database, UnitOfWork

from console.deps import Account, CurrentAccountDep, DatabaseDep
from console.models import Workspace
from console.workspaces.service import ensure_workspace

T = TypeVar("T")

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
        async with self.db.unit_of_work() as uow:
            workspace = await ensure_workspace(uow.session, str(self.account.id), self.account.email)
            return await fn(uow, workspace)

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
