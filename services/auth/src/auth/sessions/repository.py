"""SQL for login sessions (refresh-token families) and refresh tokens. Functions of the caller's session."""

from __future__ import annotations

import uuid
from collections.abc import Sequence

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from auth.models import LoginSession, RefreshToken


async def add(session: AsyncSession, *rows: LoginSession | RefreshToken) -> None:
    session.add_all(rows)
    await session.flush()


async def refresh_token_for_update(
    session: AsyncSession, token_hash: bytes
) -> tuple[RefreshToken, LoginSession] | None:
    """The token and its family, locked: two concurrent refreshes with one token serialise here."""
    row = (
        await session.execute(
            select(RefreshToken, LoginSession)
            .join(LoginSession, LoginSession.id == RefreshToken.session_id)
            .where(RefreshToken.token_hash == token_hash)
            .with_for_update()
        )
    ).first()
    return (row[0], row[1]) if row else None


async def get_for_update(session: AsyncSession, session_id: uuid.UUID) -> LoginSession | None:
    return await session.get(LoginSession, session_id, with_for_update=True)


async def active_for_account(session: AsyncSession, account_id: uuid.UUID) -> Sequence[LoginSession]:
    rows = await session.scalars(
        select(LoginSession)
        .where(LoginSession.account_id == account_id, LoginSession.revoked_at.is_(None))
        .with_for_update()
    )
    return rows.all()
