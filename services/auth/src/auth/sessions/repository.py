from __future__ import annotations

import uuid
from collections.abc import Sequence

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from auth.models import LoginSession, RefreshToken


class SessionRepository:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def add(self, *rows: LoginSession | RefreshToken) -> None:
        self.session.add_all(rows)
        await self.session.flush()

    async def refresh_token_for_update(self, token_hash: bytes) -> tuple[RefreshToken, LoginSession] | None:
        """The token and its family, locked: two concurrent refreshes with one token serialise here."""
        row = (
            await self.session.execute(
                select(RefreshToken, LoginSession)
                .join(LoginSession, LoginSession.id == RefreshToken.session_id)
                .where(RefreshToken.token_hash == token_hash)
                .with_for_update()
            )
        ).first()
        return (row[0], row[1]) if row else None

    async def get(self, session_id: uuid.UUID) -> LoginSession | None:
        return await self.session.get(LoginSession, session_id, with_for_update=True)

    async def active_for_account(self, account_id: uuid.UUID) -> Sequence[LoginSession]:
        rows = await self.session.scalars(
            select(LoginSession)
            .where(LoginSession.account_id == account_id, LoginSession.revoked_at.is_(None))
            .with_for_update()
        )
        return rows.all()
