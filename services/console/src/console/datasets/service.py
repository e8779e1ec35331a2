"""Dataset use cases."""

from __future__ import annotations

import uuid

from console.datasets import repository
from console.datasets.schemas import DatasetCreate, DatasetOut, DatasetUpdate
from console.documents import repository as documents
from console.documents.service import delete_locked
from console.models import Dataset, Workspace, utcnow
from servicekit.db import UnitOfWork
from servicekit.errors import Conflict, NotFound
from servicekit.pagination import Page, PageParams


def _name_conflict(name: str) -> Conflict:
    return Conflict(f"a dataset named {name!r} already exists in this workspace")


async def _out(uow: UnitOfWork, dataset: Dataset) -> DatasetOut:
    counts = await repository.document_counts(uow.session, [dataset.id])
    return DatasetOut(
        id=dataset.id,
        name=dataset.name,
        description=dataset.description,
        document_count=counts.get(dataset.id, 0),
        created_at=dataset.created_at,
        updated_at=dataset.updated_at,
    )


async def create(uow: UnitOfWork, workspace: Workspace, body: DatasetCreate) -> DatasetOut:
    if await repository.name_taken(uow.session, workspace.id, body.name):
        raise _name_conflict(body.name)
    now = utcnow()
    dataset = Dataset(
        id=uuid.uuid4(),
        workspace_id=workspace.id,
        name=body.name,
        description=body.description,
        created_at=now,
        updated_at=now,
    )
    uow.session.add(dataset)
    if not await repository.flush_unique(uow.session):
        raise _name_conflict(body.name)
    return await _out(uow, dataset)


async def _get(
    uow: UnitOfWork, workspace: Workspace, dataset_id: uuid.UUID, *, lock: str | None = None
) -> Dataset:
    dataset = await repository.get(uow.session, workspace.id, dataset_id, lock=lock)
    if dataset is None:
        raise NotFound(f"dataset {dataset_id} not found")
    return dataset


async def get(uow: UnitOfWork, workspace: Workspace, dataset_id: uuid.UUID) -> DatasetOut:
    return await _out(uow, await _get(uow, workspace, dataset_id))


async def list_page(uow: UnitOfWork, workspace: Workspace, page: PageParams) -> Page[DatasetOut]:
    rows, total = await repository.list_page(uow.session, workspace.id, offset=page.offset, limit=page.limit)
    counts = await repository.document_counts(uow.session, [d.id for d in rows])
    items = [
        DatasetOut(
            id=d.id,
            name=d.name,
            description=d.description,
            document_count=counts.get(d.id, 0),
            created_at=d.created_at,
            updated_at=d.updated_at,
        )
        for d in rows
    ]
    return Page[DatasetOut].of(items, page, total)


async def update(
    uow: UnitOfWork, workspace: Workspace, dataset_id: uuid.UUID, body: DatasetUpdate
) -> DatasetOut:
    dataset = await _get(uow, workspace, dataset_id, lock="update")
    if body.name is not None and body.name != dataset.name:
        if await repository.name_taken(uow.session, workspace.id, body.name, other_than=dataset.id):
            raise _name_conflict(body.name)
        dataset.name = body.name
    if body.description is not None:
        dataset.description = body.description
    dataset.updated_at = utcnow()
    if not await repository.flush_unique(uow.session):
        raise _name_conflict(dataset.name)
    return await _out(uow, dataset)


async def delete(uow: UnitOfWork, workspace: Workspace, dataset_id: uuid.UUID) -> None:
    """Deletes the dataset and its documents; each document emits `deleted` so the index drops it."""
    # FOR UPDATE on the dataset waits for document inserts (FOR SHARE) in flight, so none is left behind.
    dataset = await _get(uow, workspace, dataset_id, lock="update")
    await delete_locked(uow, workspace, await documents.lock_all_in_dataset(uow.session, dataset.id))
    await repository.delete_row(uow.session, dataset.id)
