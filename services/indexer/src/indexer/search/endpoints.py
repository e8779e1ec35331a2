"""GET /indexer/api/search"""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Query

from indexer.deps import CurrentAccountDep, SessionDep
from indexer.search import repository
from indexer.search.schemas import SearchResults

router = APIRouter(prefix="/indexer/api", tags=["search"])


@router.get("/search", response_model=SearchResults)
async def search(
    dataset_id: uuid.UUID,
    q: Annotated[str, Query(min_length=1, max_length=1000)],
    account: CurrentAccountDep,
    session: SessionDep,
    limit: Annotated[int, Query(ge=1, le=100)] = 10,
) -> SearchResults:
    """Ranked segments from the caller's own enabled, non-archived documents of `dataset_id`."""
    hits = await repository.search(
        session, owner_account_id=str(account.id), dataset_id=dataset_id, q=q, limit=limit
    )
    return SearchResults(query=q, data=hits)
