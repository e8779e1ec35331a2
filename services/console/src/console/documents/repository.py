"""SQL for documents. Every read is scoped to (workspace, dataset); writers lock the rows they change."""

from __future__ import annotations

import uuid
from collections.abc import Sequence

from sqlalchemy import ColumnElement, and_, delete, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from console.documents.schemas import StatusFilter
from console.models import Document, IndexingStatus


def _scope(workspace_id: uuid.UUID, dataset_id: uuid.UUID) -> ColumnElement[bool]:
    return and_(Document.workspace_id == workspace_id, Document.dataset_id == dataset_id)


async def get(
    session: AsyncSession,
    workspace_id: uuid.UUID,
    dataset_id: uuid.UUID,
    document_id: uuid.UUID,
    *,
    for_update: bool = False,
) -> Document | None:
    stmt = select(Document).where(_scope(workspace_id, dataset_id), Document.id == document_id)
    if for_update:
        # The row lock serialises writers of one document: versions strictly increase and its outbox rows
        # are inserted in version order (the next writer inserts only after this one committed).
        stmt = stmt.with_for_update()
    return (await session.execute(stmt)).scalar_one_or_none()


async def lock_many(
    session: AsyncSession, workspace_id: uuid.UUID, dataset_id: uuid.UUID, document_ids: Sequence[uuid.UUID]
) -> list[Document]:
    """Lock in id order, so two batches over overlapping documents cannot deadlock."""
    rows = await session.execute(
        select(Document)
        .where(_scope(workspace_id, dataset_id), Document.id.in_(document_ids))
        .order_by(Document.id)
        .with_for_update()
    )
    return list(rows.scalars())


async def lock_all_in_dataset(session: AsyncSession, dataset_id: uuid.UUID) -> list[Document]:
    rows = await session.execute(
        select(Document).where(Document.dataset_id == dataset_id).order_by(Document.id).with_for_update()
    )
    return list(rows.scalars())


async def lock_by_id(session: AsyncSession, document_id: uuid.UUID) -> Document | None:
    """For the consumer: no workspace scope (the event names the document)."""
    stmt = select(Document).where(Document.id == document_id).with_for_update()
    return (await session.execute(stmt)).scalar_one_or_none()


def _status_condition(status: StatusFilter) -> ColumnElement[bool]:
    if status is StatusFilter.AVAILABLE:
        return and_(
            Document.enabled.is_(True),
            Document.archived.is_(False),
            Document.indexing_status == IndexingStatus.COMPLETED.value,
        )
    if status is StatusFilter.ENABLED:
        return and_(Document.enabled.is_(True), Document.archived.is_(False))
    if status is StatusFilter.DISABLED:
        return and_(Document.enabled.is_(False), Document.archived.is_(False))
    if status is StatusFilter.ARCHIVED:
        return Document.archived.is_(True)
    return Document.indexing_status == status.value


async def list_page(
    session: AsyncSession,
    workspace_id: uuid.UUID,
    dataset_id: uuid.UUID,
    *,
    status: StatusFilter | None,
    offset: int,
    limit: int,
) -> tuple[list[Document], int]:
    where = [_scope(workspace_id, dataset_id)]
    if status is not None:
        where.append(_status_condition(status))
    total = (await session.execute(select(func.count()).select_from(Document).where(*where))).scalar_one()
    rows = await session.execute(
        select(Document)
        .where(*where)
        .order_by(Document.created_at.desc(), Document.id)
        .offset(offset)
        .limit(limit)
    )
    return list(rows.scalars()), total


async def delete_rows(session: AsyncSession, document_ids: Sequence[uuid.UUID]) -> None:
    if document_ids:
        await session.execute(delete(Document).where(Document.id.in_(document_ids)))
