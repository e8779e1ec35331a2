"""SQL for reading indexed documents."""

from __future__ import annotations

import uuid

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from indexer.models import IndexedDocument


async def get_live(
    session: AsyncSession, owner_account_id: str, document_id: uuid.UUID
) -> IndexedDocument | None:
    stmt = select(IndexedDocument).where(
        IndexedDocument.id == document_id,
        IndexedDocument.owner_account_id == owner_account_id,
        IndexedDocument.deleted.is_(False),
    )
    return (await session.execute(stmt)).scalar_one_or_none()
