from __future__ import annotations

import uuid

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from auth.models import Account


class AccountRepository:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def get(self, account_id: uuid.UUID, *, for_update: bool = False) -> Account | None:
        stmt = select(Account).where(Account.id == account_id)
        return await self.session.scalar(stmt.with_for_update() if for_update else stmt)

    async def get_by_email(self, email: str, *, for_update: bool = False) -> Account | None:
        stmt = select(Account).where(Account.email == email)
        return await self.session.scalar(stmt.with_for_update() if for_update else stmt)

    async def add(self, account: Account) -> bool:
        """Insert; False when the email is taken (the savepoint keeps the transaction usable)."""
        try:
            async with self.session.begin_nested():
                self.session.add(account)
        except IntegrityError:
            return False
        return True
