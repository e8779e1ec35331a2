"""Auth's request context: servicekit's (one unit of work per call, commits once when the use case returns)
plus the resources the use cases need. Errors marked `CommitsChanges` commit their bookkeeping before they
are answered (a reused refresh token revokes its family, a wrong reset code counts an attempt). No rerun on
deadlock: a use case's throttle counters live in Redis and would count twice.

    account = await ctx.run(lambda uow: service.register(uow, ctx.resources, ...))
    return AccountOut.model_validate(account, from_attributes=True)
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends

from auth.deps import DatabaseDep, Resources, ResourcesDep
from auth.errors import CommitsChanges
from servicekit.db import Database
from servicekit.request_context import RequestContext as UnitOfWorkContext


class RequestContext(UnitOfWorkContext):
    def __init__(self, db: Database, resources: Resources) -> None:
        super().__init__(db, commit_on=(CommitsChanges,))
        self.resources = resources


async def request_context(db: DatabaseDep, resources: ResourcesDep) -> RequestContext:
    return RequestContext(db, resources)


ContextDep = Annotated[RequestContext, Depends(request_context)]
