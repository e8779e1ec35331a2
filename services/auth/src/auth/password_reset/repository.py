"""SQL for password reset codes. Functions of the caller's session."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from auth.models import PasswordReset


async def invalidate_open(session: AsyncSession, account_id: uuid.UUID, now: datetime) -> None:
    """Cancel every open code (the account-wide guessing ceiling was reached, or one code reset the
    password)."""
    await session.execute(
        update(PasswordReset)
        .where(
            PasswordReset.account_id == account_id,
            PasswordReset.used_at.is_(None),
            PasswordReset.invalidated_at.is_(None),
        )
        .values(invalidated_at=now)
    )


async def add(session: AsyncSession, reset: PasswordReset) -> None:
    session.add(reset)
    await session.flush()


async def open_for_update(
    session: AsyncSession, account_id: uuid.UUID, now: datetime
) -> Sequence[PasswordReset]:
    """Every unexpired, unused code of the account (a new request does not cancel older ones, so a
    stranger cannot keep cancelling the owner's codes; the request limit bounds how many are open)."""
    rows = await session.scalars(
        select(PasswordReset)
        .where(
            PasswordReset.account_id == account_id,
            PasswordReset.used_at.is_(None),
            PasswordReset.invalidated_at.is_(None),
            PasswordReset.expires_at > now,
        )
        .order_by(PasswordReset.created_at.desc())
        .with_for_update()
    )
    return rows.all()
