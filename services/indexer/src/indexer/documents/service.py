"""What the index holds for one of the caller's documents."""

from __future__ import annotations

import uuid

from indexer.documents import repository
from indexer.models import IndexedDocument
from servicekit.db import UnitOfWork
from servicekit.errors import NotFound


async def get_indexed(uow: UnitOfWork, owner_account_id: str, document_id: uuid.UUID) -> IndexedDocument:
    document = await repository.get_live(uow.session, owner_account_id, document_id)
    if document is None:
        raise NotFound(f"document {document_id} is not indexed")
    return document
