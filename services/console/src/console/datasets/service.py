"""Dataset use cases. They return domain objects (a dataset row with its document count); the endpoints
map them to `DatasetOut`."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from console.datasets import repository
from console.datasets.schemas import DatasetCreate, DatasetUpdate
from console.documents import repository as documents
from console.documents.service import delete_locked
from console.locking import Lock
from console.models import Dataset, Workspace, utcnow
from servicekit.db import UnitOfWork
from servicekit.errors import Conflict, NotFound
from servicekit.pagination import PageParams


def _not_found(dataset_id: uuid.UUID) -> NotFound:
    return NotFound(f"dataset {dataset_id} not found")


def _name_conflict(name: str) -> Conflict:
    return Conflict(f"a dataset named {name!r} already exists in this workspace")


@dataclass(frozen=True, slots=True)
class DatasetView:
    dataset: Dataset
    document_count: int


async def _view(uow: UnitOfWork, dataset: Dataset) -> DatasetView:
    counts = await repository.document_counts(uow.session, [dataset.id])
    return DatasetView(dataset, counts.get(dataset.id, 0))


async def create(uow: UnitOfWork, workspace: Workspace, body: DatasetCreate) -> DatasetView:
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
    return await _view(uow, dataset)


async def _get(
    uow: UnitOfWork, workspace: Workspace, dataset_id: uuid.UUID, *, lock: Lock | None = None
) -> Dataset:
    dataset = await repository.get(uow.session, workspace.id, dataset_id, lock=lock)
    if dataset is None:
        raise _not_found(dataset_id)
    return dataset


async def get(uow: UnitOfWork, workspace: Workspace, dataset_id: uuid.UUID) -> DatasetView:
    found = await repository.get_with_count(uow.session, workspace.id, dataset_id)
    if found is None:
        raise _not_found(dataset_id)
    return DatasetView(*found)


async def list_page(uow: UnitOfWork, workspace: Workspace, page: PageParams) -> tuple[list[DatasetView], int]:
    rows, total = await repository.list_page(uow.session, workspace.id, offset=page.offset, limit=page.limit)
    counts = await repository.document_counts(uow.session, [d.id for d in rows])
    return [DatasetView(d, counts.get(d.id, 0)) for d in rows], total


async def update(
    uow: UnitOfWork, workspace: Workspace, dataset_id: uuid.UUID, body: DatasetUpdate
) -> DatasetView:
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
    return await _view(uow, dataset)


async def delete(uow: UnitOfWork, workspace: Workspace, dataset_id: uuid.UUID) -> None:
    """Deletes the dataset and its documents; each document emits `deleted` so the index drops it."""
    # FOR UPDATE on the dataset waits for document inserts (FOR SHARE) in flight, so none is left behind.
    dataset = await _get(uow, workspace, dataset_id, lock="update")
    await delete_locked(uow, workspace, await documents.in_dataset(uow.session, dataset.id, lock="update"))
    await repository.delete_row(uow.session, dataset.id)
