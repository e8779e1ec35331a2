"""SQL for signing keys. Functions of the caller's session."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import or_, select, text
from sqlalchemy.ext.asyncio import AsyncSession

from auth.models import SigningKey

# Serialises key creation/rotation across auth processes (transaction-scoped advisory lock).
_KEYS_LOCK = 0x61757468_6B657973 & 0x7FFFFFFFFFFFFFFF


async def lock(session: AsyncSession) -> None:
    await session.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _KEYS_LOCK})


async def active(session: AsyncSession) -> SigningKey | None:
    return await session.scalar(select(SigningKey).where(SigningKey.retired_at.is_(None)))


async def published(session: AsyncSession, now: datetime) -> Sequence[SigningKey]:
    """The active key and retired keys whose tokens may still be unexpired, newest first."""
    rows = await session.scalars(
        select(SigningKey)
        .where(or_(SigningKey.retired_at.is_(None), SigningKey.publish_until > now))
        .order_by(SigningKey.created_at.desc())
    )
    return rows.all()


async def add(session: AsyncSession, key: SigningKey) -> None:
    session.add(key)
    await session.flush()
