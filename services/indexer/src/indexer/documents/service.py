"""What the index holds: for one of the caller's documents (the API), or for every document (`held`, the
index's side of `make reconcile` and `make rebuild-index`: console.reconcile compares it with console)."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass

from indexer.documents import repository
from indexer.models import IndexedDocument
from servicekit.db import Database, UnitOfWork
from servicekit.errors import NotFound


async def get_indexed(uow: UnitOfWork, owner_account_id: str, document_id: uuid.UUID) -> IndexedDocument:
    document = await repository.get_live(uow.session, owner_account_id, document_id)
    if document is None:
        raise NotFound(f"document {document_id} is not indexed")
    return document


@dataclass(frozen=True, slots=True)
class Held:
    """What the index holds for a document: the version applied, whether search serves it, whether it is a
    tombstone, and the identity its events carried (a deletion announced for it names the same)."""

    document_id: uuid.UUID
    version: int
    searchable: bool
    deleted: bool
    dataset_id: uuid.UUID
    workspace_id: uuid.UUID
    owner_account_id: str
    name: str


async def held(db: Database, ids: Sequence[uuid.UUID] | None = None) -> dict[uuid.UUID, Held]:
    """The index's documents of `ids` (all when None), read in a read-only transaction."""
    async with db.sessions() as session, session.begin():
        await repository.read_only(session)
        rows = await repository.all_documents(session, ids)
        return {
            d.id: Held(
                d.id,
                d.version,
                d.searchable,
                d.deleted,
                d.dataset_id,
                d.workspace_id,
                d.owner_account_id,
                d.name,
            )
            for d in rows
        }
