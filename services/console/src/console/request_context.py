"""Console's request context: servicekit's (one unit of work per call, rerun as a deadlock victim) plus the
caller's workspace and the Idempotency-Key.

Every endpoint runs its service call through `read` or `write`. Both resolve (lazily create) the caller's
workspace in the same transaction. `write` also claims the Idempotency-Key first and stores the response
before the unit of work commits once: the change, its outbox events and the stored response are one commit.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated, TypeVar

from fastapi import Depends, Header, Request, Response
from pydantic import BaseModel

from console.deps import Account, get_database
from console.models import Workspace
from console.workspaces.service import ensure_workspace
from servicekit import idempotency
from servicekit.auth import CurrentToken
from servicekit.db import Database, UnitOfWork
from servicekit.request_context import RequestContext as UnitOfWorkContext

T = TypeVar("T")

REPLAY_HEADER = "Idempotent-Replayed"


class RequestContext(UnitOfWorkContext):
    def __init__(self, request: Request, db: Database, account: Account, idempotency_key: str | None) -> None:
        # Requests lock documents in id order and the consumer locks one document per transaction, so a
        # deadlock should not form; the retry is the safety net if one does (everything rolled back).
        super().__init__(db, retry_deadlocks=True)
        self.request = request
        self.account = account
        self.idempotency_key = (
            idempotency.validate_key(idempotency_key) if idempotency_key is not None else None
        )

    async def _workspace(self, uow: UnitOfWork) -> Workspace:
        return await ensure_workspace(uow.session, str(self.account.id), self.account.email, cached=True)

    async def read(self, fn: Callable[[UnitOfWork, Workspace], Awaitable[T]]) -> T:
        async def use_case(uow: UnitOfWork) -> T:
            return await fn(uow, await self._workspace(uow))

        return await self.run(use_case)

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
        scope = str(self.account.id)

        async def use_case(uow: UnitOfWork) -> Response:
            if key is not None:
                stored = await idempotency.claim(uow.session, scope=scope, key=key, fingerprint=fingerprint)
                if stored is not None:
                    return _response(stored.status_code, stored.body, replayed=True)
            result = await fn(uow, await self._workspace(uow))
            payload = result.model_dump_json() if result is not None else ""
            if key is not None:
                await idempotency.complete(
                    uow.session, scope=scope, key=key, status_code=status_code, body=payload
                )
            return _response(status_code, payload, replayed=False)

        return await self.run(use_case)


def _response(status_code: int, body: str, *, replayed: bool) -> Response:
    headers = {REPLAY_HEADER: "true"} if replayed else {}
    if status_code == 204 or not body:
        return Response(status_code=status_code, headers=headers)
    return Response(content=body, status_code=status_code, media_type="application/json", headers=headers)


# The verified token and the request directly (not through DatabaseDep and CurrentAccountDep): each
# dependency FastAPI solves is work on every request, and these two only read request.state and the token.
async def read_context(request: Request, token: CurrentToken) -> RequestContext:
    return RequestContext(request, await get_database(request), token.account, None)


async def write_context(
    request: Request,
    token: CurrentToken,
    idempotency_key: Annotated[
        str | None,
        Header(
            alias=idempotency.HEADER,
            description="Makes a retried POST/PATCH/DELETE safe: the same key and body replay the first response.",
        ),
    ] = None,
) -> RequestContext:
    return RequestContext(request, await get_database(request), token.account, idempotency_key)


ReadDep = Annotated[RequestContext, Depends(read_context)]
WriteDep = Annotated[RequestContext, Depends(write_context)]
