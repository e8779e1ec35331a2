"""FastAPI dependencies: the current account (verified by servicekit.auth) and the database."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from servicekit.auth import Account, CurrentAccount
from servicekit.db import Database

__all__ = ["Account", "CurrentAccountDep", "DatabaseDep"]

CurrentAccountDep = CurrentAccount


async def get_database(request: Request) -> Database:
    db: Database = request.state.db
    return db


DatabaseDep = Annotated[Database, Depends(get_database)]
