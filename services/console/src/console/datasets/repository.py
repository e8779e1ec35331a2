"""SQL for datasets. Reads are scoped to a workspace: another workspace's dataset does not exist here."""

from __future__ import annotations

import uuid
from collections.abc import Sequence

from sqlalchemy import bindparam, delete, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from console.locking import Lock, with_lock
from console.models import Dataset, Document


async def get(
    session: AsyncSession, workspace_id: uuid.UUID, dataset_id: uuid.UUID, *, lock: Lock | None = None
) -> Dataset | None:
    """`lock`: "share" when adding documents, "update" when changing or deleting the dataset."""
    stmt = select(Dataset).where(Dataset.id == dataset_id, Dataset.workspace_id == workspace_id)
    return (await session.execute(with_lock(stmt, lock))).scalar_one_or_none()


# Built once: composing the statement (operators, the count function, the select) was a sizeable part of
# the request's CPU; the values are bound at execution.
_GET_WITH_COUNT = select(
    Dataset,
    select(func.count()).select_from(Document).where(Document.dataset_id == Dataset.id).scalar_subquery(),
).where(Dataset.id == bindparam("dataset_id"), Dataset.workspace_id == bindparam("workspace_id"))


async def get_with_count(
    session: AsyncSession, workspace_id: uuid.UUID, dataset_id: uuid.UUID
) -> tuple[Dataset, int] | None:
    """The dataset and its document count in one statement (what `get` then `document_counts` read)."""
    params = {"dataset_id": dataset_id, "workspace_id": workspace_id}
    row = (await session.execute(_GET_WITH_COUNT, params)).first()  # a Row unpacks as a tuple
    return (row[0], row[1]) if row is not None else None


async def name_taken(
    session: AsyncSession, workspace_id: uuid.UUID, name: str, *, other_than: uuid.UUID | None = None
) -> bool:
    stmt = select(Dataset.id).where(Dataset.workspace_id == workspace_id, Dataset.name == name)
    if other_than is not None:
        stmt = stmt.where(Dataset.id != other_than)
    return (await session.execute(stmt.limit(1))).first() is not None


async def flush_unique(session: AsyncSession) -> bool:
    """Flush inside a savepoint; False when a concurrent insert took the same unique name."""
    try:
        async with session.begin_nested():
            await session.flush()
    except IntegrityError:
        return False
    return True


async def document_counts(session: AsyncSession, dataset_ids: Sequence[uuid.UUID]) -> dict[uuid.UUID, int]:
    if not dataset_ids:
        return {}
    rows = await session.execute(
        select(Document.dataset_id, func.count())
        .where(Document.dataset_id.in_(dataset_ids))
        .group_by(Document.dataset_id)
    )
    return {dataset_id: count for dataset_id, count in rows.tuples()}


async def list_page(
    session: AsyncSession, workspace_id: uuid.UUID, *, offset: int, limit: int
) -> tuple[list[Dataset], int]:
    where = Dataset.workspace_id == workspace_id
    total = (await session.execute(select(func.count()).select_from(Dataset).where(where))).scalar_one()
    rows = await session.execute(
        select(Dataset)
        .where(where)
        .order_by(Dataset.created_at.desc(), Dataset.id)
        .offset(offset)
        .limit(limit)
    )
    return list(rows.scalars()), total


async def delete_row(session: AsyncSession, dataset_id: uuid.UUID) -> None:
    await session.execute(delete(Dataset).where(Dataset.id == dataset_id))
