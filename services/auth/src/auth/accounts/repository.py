from __future__ import annotations

import uuid

from sqlalchemy import Select, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from auth.models import Account


class AccountRepository:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def get(self, account_id: uuid.UUID, *, for_update: bool = False) -> Account | None:
        return await self._one(select(Account).where(Account.id == account_id), for_update)

    async def get_by_email(self, email: str, *, for_update: bool = False) -> Account | None:
        return await self._one(select(Account).where(Account.email == email), for_update)

    async def _one(self, stmt: Select[Account], for_update: bool) -> Account | None:
        if for_update:
            # A locked read must see the row as it is now, not the copy this session loaded earlier.
            stmt = stmt.with_for_update().execution_options(populate_existing=True)
        return await self.session.scalar(stmt)

    async def add(self, account: Account) -> bool:
        """Insert; False when the email is taken (the savepoint keeps the transaction usable)."""
        try:
            async with self.session.begin_nested():
                self.session.add(account)
        except IntegrityError:
            return False
        return True
