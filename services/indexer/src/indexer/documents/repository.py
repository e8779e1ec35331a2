"""SQL for reading indexed documents."""

from __future__ import annotations

import uuid
from collections.abc import Sequence

from sqlalchemy import select, text
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


async def all_documents(
    session: AsyncSession, ids: Sequence[uuid.UUID] | None = None
) -> list[IndexedDocument]:
    """Every indexed document of `ids` (all when None), tombstones included, any owner."""
    stmt = select(IndexedDocument)
    if ids is not None:
        stmt = stmt.where(IndexedDocument.id.in_(ids))
    return list((await session.execute(stmt)).scalars())


async def read_only(session: AsyncSession) -> None:
    """Make the session's transaction read-only (first statement of the transaction)."""
    await session.execute(text("SET TRANSACTION READ ONLY"))
