"""GET /indexer/api/documents/{document_id}"""

from __future__ import annotations

import uuid

from fastapi import APIRouter

from indexer.deps import ContextDep, CurrentAccountDep
from indexer.documents import service
from indexer.documents.schemas import IndexedDocumentOut

router = APIRouter(prefix="/indexer/api/documents", tags=["documents"])


@router.get("/{document_id}", response_model=IndexedDocumentOut)
async def get_indexed_document(
    document_id: uuid.UUID, account: CurrentAccountDep, ctx: ContextDep
) -> IndexedDocumentOut:
    """What the index holds: the version applied, segment count, and whether it is searchable."""
    document = await ctx.run(lambda uow: service.get_indexed(uow, str(account.id), document_id))
    return IndexedDocumentOut(
        document_id=document.id,
        dataset_id=document.dataset_id,
        version=document.version,
        segment_count=document.segment_count,
        enabled=document.enabled,
        archived=document.archived,
        searchable=document.searchable,
        updated_at=document.updated_at,
    )
