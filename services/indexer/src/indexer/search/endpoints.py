"""GET /indexer/api/search"""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Query

from indexer.deps import ContextDep, CurrentAccountDep
from indexer.search import service
from indexer.search.schemas import SearchHit, SearchResults

router = APIRouter(prefix="/indexer/api", tags=["search"])


@router.get("/search", response_model=SearchResults)
async def search(
    dataset_id: uuid.UUID,
    q: Annotated[str, Query(min_length=1, max_length=1000)],
    account: CurrentAccountDep,
    ctx: ContextDep,
    limit: Annotated[int, Query(ge=1, le=100)] = 10,
) -> SearchResults:
    """Ranked segments from the caller's own enabled, non-archived documents of `dataset_id`."""
    hits = await ctx.run(
        lambda uow: service.search(
            uow, owner_account_id=str(account.id), dataset_id=dataset_id, q=q, limit=limit
        )
    )
    return SearchResults(
        query=q,
        data=[
            SearchHit(document_id=h.document_id, segment_id=h.segment_id, score=h.score, snippet=h.snippet)
            for h in hits
        ],
    )
