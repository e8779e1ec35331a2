"""FastAPI dependencies: the current account (verified by servicekit.auth) and the request context."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from servicekit.auth import CurrentAccount
from servicekit.db import Database
from servicekit.request_context import RequestContext

CurrentAccountDep = CurrentAccount


async def request_context(request: Request) -> RequestContext:
    """The indexer's endpoints only read; its writes come from console's events (indexer.consumer)."""
    db: Database = request.state.db
    return RequestContext(db)


ContextDep = Annotated[RequestContext, Depends(request_context)]
