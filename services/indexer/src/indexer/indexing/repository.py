"""SQL for the indexer's documents and segments."""

from __future__ import annotations

import uuid
from collections.abc import Sequence

from sqlalchemy import delete, insert, select
from sqlalchemy.ext.asyncio import AsyncSession

from indexer.indexing.segmentation import SegmentText
from indexer.models import IndexedDocument, Segment


async def lock(session: AsyncSession, document_id: uuid.UUID) -> IndexedDocument | None:
    stmt = select(IndexedDocument).where(IndexedDocument.id == document_id).with_for_update()
    return (await session.execute(stmt)).scalar_one_or_none()


async def replace_segments(
    session: AsyncSession, document_id: uuid.UUID, segments: Sequence[SegmentText]
) -> None:
    await delete_segments(session, document_id)
    if segments:
        await session.execute(
            insert(Segment),
            [
                {"id": s.id, "document_id": document_id, "position": s.position, "content": s.content}
                for s in segments
            ],
        )


async def delete_segments(session: AsyncSession, document_id: uuid.UUID) -> None:
    await session.execute(delete(Segment).where(Segment.document_id == document_id))
