from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from auth.models import PasswordReset


class PasswordResetRepository:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def invalidate_open(self, account_id: uuid.UUID, now: datetime) -> None:
        """A new code supersedes older ones: only the latest mail works."""
        await self.session.execute(
            update(PasswordReset)
            .where(
                PasswordReset.account_id == account_id,
                PasswordReset.used_at.is_(None),
                PasswordReset.invalidated_at.is_(None),
            )
            .values(invalidated_at=now)
        )

    async def add(self, reset: PasswordReset) -> None:
        self.session.add(reset)
        await self.session.flush()

    async def open_for_update(self, account_id: uuid.UUID, now: datetime) -> PasswordReset | None:
        return await self.session.scalar(
            select(PasswordReset)
            .where(
                PasswordReset.account_id == account_id,
                PasswordReset.used_at.is_(None),
                PasswordReset.invalidated_at.is_(None),
                PasswordReset.expires_at > now,
            )
            .order_by(PasswordReset.created_at.desc())
            .limit(1)
            .with_for_update()
        )
