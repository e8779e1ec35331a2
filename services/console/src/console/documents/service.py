"""Document use cases. Each state change bumps the version under the row lock and records its event in the
unit of work, which writes it to the outbox in the same transaction. Services flush, never commit."""

from __future__ import annotations

import uuid
from collections.abc import Sequence

from console.datasets import repository as datasets
from console.documents import repository
from console.documents.events import DocumentEventType, document_event
from console.documents.schemas import DocumentCreate, DocumentUpdate, StatusFilter
from console.documents.transitions import StatusAction, apply_action
from console.locking import Lock
from console.models import Dataset, Document, IndexingStatus, Workspace, utcnow
from servicekit.db import UnitOfWork
from servicekit.errors import Conflict, NotFound
from servicekit.pagination import PageParams


async def _dataset(
    uow: UnitOfWork, workspace: Workspace, dataset_id: uuid.UUID, *, lock: Lock | None = None
) -> Dataset:
    dataset = await datasets.get(uow.session, workspace.id, dataset_id, lock=lock)
    if dataset is None:
        raise NotFound(f"dataset {dataset_id} not found")
    return dataset


async def _locked(
    uow: UnitOfWork, workspace: Workspace, dataset_id: uuid.UUID, document_id: uuid.UUID
) -> Document:
    await _dataset(uow, workspace, dataset_id)
    document = await repository.get(uow.session, workspace.id, dataset_id, document_id, lock="update")
    if document is None:
        raise NotFound(f"document {document_id} not found")
    return document


def _changed(
    uow: UnitOfWork, workspace: Workspace, document: Document, event_type: DocumentEventType
) -> None:
    """A new version: the index has not seen it yet, so its status starts over."""
    now = utcnow()
    if event_type is not DocumentEventType.CREATED:
        document.version += 1
    document.updated_at = now
    document.indexing_status = IndexingStatus.WAITING.value
    document.indexing_error = None
    document.completed_at = None
    uow.emit(document_event(document, event_type, owner_account_id=workspace.owner_account_id))


async def create(
    uow: UnitOfWork, workspace: Workspace, dataset_id: uuid.UUID, body: DocumentCreate
) -> Document:
    # FOR SHARE: a concurrent dataset delete waits for this insert (and then deletes this document too).
    await _dataset(uow, workspace, dataset_id, lock="share")
    now = utcnow()
    document = Document(
        id=uuid.uuid4(),
        dataset_id=dataset_id,
        workspace_id=workspace.id,
        name=body.name,
        text=body.text,
        enabled=body.enabled,
        archived=False,
        version=1,
        created_at=now,
    )
    uow.session.add(document)
    _changed(uow, workspace, document, DocumentEventType.CREATED)
    await uow.session.flush()
    return document


async def get(
    uow: UnitOfWork, workspace: Workspace, dataset_id: uuid.UUID, document_id: uuid.UUID
) -> Document:
    await _dataset(uow, workspace, dataset_id)
    document = await repository.get(uow.session, workspace.id, dataset_id, document_id)
    if document is None:
        raise NotFound(f"document {document_id} not found")
    return document


async def list_page(
    uow: UnitOfWork,
    workspace: Workspace,
    dataset_id: uuid.UUID,
    status: StatusFilter | None,
    page: PageParams,
) -> tuple[list[Document], int]:
    await _dataset(uow, workspace, dataset_id)
    return await repository.list_page(
        uow.session, workspace.id, dataset_id, status=status, offset=page.offset, limit=page.limit
    )


async def update(
    uow: UnitOfWork, workspace: Workspace, dataset_id: uuid.UUID, document_id: uuid.UUID, body: DocumentUpdate
) -> Document:
    document = await _locked(uow, workspace, dataset_id, document_id)
    if document.archived:
        raise Conflict(f"document {document_id} is archived: un_archive it before editing it")
    name = body.name if body.name is not None else document.name
    text = body.text if body.text is not None else document.text
    if (name, text) != (document.name, document.text):
        document.name, document.text = name, text
        _changed(uow, workspace, document, DocumentEventType.UPDATED)
        await uow.session.flush()
    return document


async def change_status(
    uow: UnitOfWork,
    workspace: Workspace,
    dataset_id: uuid.UUID,
    action: StatusAction,
    document_ids: Sequence[uuid.UUID],
) -> list[Document]:
    """Dify's batch status action: all or nothing (any unknown id or refused transition changes nothing)."""
    await _dataset(uow, workspace, dataset_id)
    wanted = sorted(set(document_ids))
    documents = await repository.get_many(uow.session, workspace.id, dataset_id, wanted, lock="update")
    missing = set(wanted) - {d.id for d in documents}
    if missing:
        raise NotFound(f"documents not found: {', '.join(sorted(map(str, missing)))}")
    for document in documents:
        event_type = apply_action(document, action)
        if event_type is not None:
            _changed(uow, workspace, document, event_type)
    await uow.session.flush()
    by_id = {d.id: d for d in documents}
    return [by_id[i] for i in dict.fromkeys(document_ids)]


async def delete(
    uow: UnitOfWork, workspace: Workspace, dataset_id: uuid.UUID, document_id: uuid.UUID
) -> None:
    document = await _locked(uow, workspace, dataset_id, document_id)
    await delete_locked(uow, workspace, [document])


async def delete_locked(uow: UnitOfWork, workspace: Workspace, documents: Sequence[Document]) -> None:
    """Delete locked documents; each one's `deleted` event carries its last version + 1."""
    for document in documents:
        _changed(uow, workspace, document, DocumentEventType.DELETED)
    await uow.session.flush()
    await repository.delete_rows(uow.session, [d.id for d in documents])
