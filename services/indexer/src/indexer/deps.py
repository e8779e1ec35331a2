"""FastAPI dependencies: the current account (verified by servicekit.auth) and a read-only session."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.ext.asyncio import AsyncSession

from servicekit.auth import CurrentAccount
from servicekit.db import Database

CurrentAccountDep = CurrentAccount


async def read_session(request: Request) -> AsyncIterator[AsyncSession]:
    db: Database = request.state.db
    async with db.sessions() as session:
        yield session


SessionDep = Annotated[AsyncSession, Depends(read_session)]
