"""SQL for accounts. Functions of the caller's session; they return ORM rows."""

from __future__ import annotations

import uuid

from sqlalchemy import Select, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from auth.models import Account


async def get(session: AsyncSession, account_id: uuid.UUID, *, for_update: bool = False) -> Account | None:
    return await _one(session, select(Account).where(Account.id == account_id), for_update)


async def get_by_email(session: AsyncSession, email: str, *, for_update: bool = False) -> Account | None:
    return await _one(session, select(Account).where(Account.email == email), for_update)


async def _one(session: AsyncSession, stmt: Select[Account], for_update: bool) -> Account | None:
    if for_update:
        # A locked read must see the row as it is now, not the copy this session loaded earlier.
        stmt = stmt.with_for_update().execution_options(populate_existing=True)
    return await session.scalar(stmt)


async def add(session: AsyncSession, account: Account) -> bool:
    """Insert; False when the email is taken (the savepoint keeps the transaction usable)."""
    try:
        async with session.begin_nested():
            session.add(account)
    except IntegrityError:
        return False
    return True
