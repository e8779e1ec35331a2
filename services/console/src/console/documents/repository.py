"""SQL for documents. Reads by the API are scoped to (workspace, dataset); the consumer's and the snapshots'
are not (an event or an operator names the documents). Every read that may lock takes `lock: Lock | None`;
rows of several documents come in id order, so two transactions locking overlapping sets cannot deadlock."""

from __future__ import annotations

import uuid
from collections.abc import Sequence

from sqlalchemy import ColumnElement, and_, delete, func, not_, select, text
from sqlalchemy.ext.asyncio import AsyncSession

from console.documents.schemas import StatusFilter
from console.locking import Lock, with_lock
from console.models import Document, IndexingStatus, SnapshotRun, Workspace


def _scope(workspace_id: uuid.UUID, dataset_id: uuid.UUID) -> ColumnElement[bool]:
    return and_(Document.workspace_id == workspace_id, Document.dataset_id == dataset_id)


async def get(
    session: AsyncSession,
    workspace_id: uuid.UUID,
    dataset_id: uuid.UUID,
    document_id: uuid.UUID,
    *,
    lock: Lock | None = None,
) -> Document | None:
    """`lock="update"` serialises writers of one document: versions strictly increase and its outbox rows
    are inserted in version order (the next writer inserts only after this one committed)."""
    stmt = select(Document).where(_scope(workspace_id, dataset_id), Document.id == document_id)
    return (await session.execute(with_lock(stmt, lock))).scalar_one_or_none()


async def get_many(
    session: AsyncSession,
    workspace_id: uuid.UUID,
    dataset_id: uuid.UUID,
    document_ids: Sequence[uuid.UUID],
    *,
    lock: Lock | None = None,
) -> list[Document]:
    stmt = select(Document).where(_scope(workspace_id, dataset_id), Document.id.in_(document_ids))
    return list((await session.execute(with_lock(stmt.order_by(Document.id), lock))).scalars())


async def in_dataset(
    session: AsyncSession, dataset_id: uuid.UUID, *, lock: Lock | None = None
) -> list[Document]:
    stmt = select(Document).where(Document.dataset_id == dataset_id).order_by(Document.id)
    return list((await session.execute(with_lock(stmt, lock))).scalars())


async def get_by_id(
    session: AsyncSession, document_id: uuid.UUID, *, lock: Lock | None = None
) -> Document | None:
    """For the consumer: no workspace scope (the event names the document)."""
    stmt = select(Document).where(Document.id == document_id)
    return (await session.execute(with_lock(stmt, lock))).scalar_one_or_none()


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


# Snapshots and reconcile (console.snapshots, console.reconcile): every document, no workspace scope.


async def with_owners(
    session: AsyncSession,
    *,
    ids: Sequence[uuid.UUID] | None = None,
    after: uuid.UUID | None = None,
    limit: int | None = None,
    lock: Lock | None = None,
) -> list[tuple[Document, str]]:
    """Documents with their workspace's owner in id order: those of `ids` (all when None), after `after`,
    at most `limit`. `lock` locks the documents only (not their workspaces)."""
    stmt = select(Document, Workspace.owner_account_id).join(Workspace, Workspace.id == Document.workspace_id)
    if ids is not None:
        stmt = stmt.where(Document.id.in_(ids))
    if after is not None:
        stmt = stmt.where(Document.id > after)
    stmt = with_lock(stmt.order_by(Document.id).limit(limit), lock, of=Document)
    return [(doc, owner) for doc, owner in (await session.execute(stmt)).tuples()]


async def existing_ids(session: AsyncSession, ids: Sequence[uuid.UUID]) -> set[uuid.UUID]:
    return set((await session.execute(select(Document.id).where(Document.id.in_(ids)))).scalars())


async def count(session: AsyncSession) -> int:
    return int((await session.execute(select(func.count()).select_from(Document))).scalar_one())


async def states(
    session: AsyncSession, ids: Sequence[uuid.UUID] | None = None
) -> list[tuple[uuid.UUID, int, bool]]:
    """(id, version, searchable) of the documents of `ids` (all when None); searchable = enabled, not
    archived. A deleted document is absent."""
    stmt = select(Document.id, Document.version, and_(Document.enabled, not_(Document.archived)))
    if ids is not None:
        stmt = stmt.where(Document.id.in_(ids))
    return list((await session.execute(stmt)).tuples())


async def snapshot_run(session: AsyncSession, name: str, *, lock: Lock | None = None) -> SnapshotRun | None:
    """The cursor row of the re-snapshot `name` (`make rebuild-index`)."""
    stmt = select(SnapshotRun).where(SnapshotRun.name == name)
    return (await session.execute(with_lock(stmt, lock))).scalar_one_or_none()


async def read_only(session: AsyncSession) -> None:
    """Make the session's transaction read-only (first statement of the transaction)."""
    await session.execute(text("SET TRANSACTION READ ONLY"))
