"""The full-text query: ranked segments of searchable documents of one owner's dataset.

Matches in a snippet are marked with the private-use characters START and STOP (indexer.search.service
turns them into HTML-safe <b>…</b>).
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any

from sqlalchemy import Row, text
from sqlalchemy.ext.asyncio import AsyncSession

from indexer.models import TS_CONFIG

START, STOP = "\ue000", "\ue001"  # private-use characters: no text legitimately needs them
_SEARCH = text(
    f"""
    SELECT s.document_id, s.id AS segment_id, ts_rank(s.tsv, query) AS score,
           ts_headline('{TS_CONFIG}', s.content, query,
                       'StartSel={START}, StopSel={STOP}, MaxWords=35, MinWords=15, MaxFragments=1') AS snippet
    FROM segments s
    JOIN indexed_documents d ON d.id = s.document_id,
         websearch_to_tsquery('{TS_CONFIG}', :q) AS query
    WHERE d.owner_account_id = :owner AND d.dataset_id = :dataset_id
      AND d.enabled AND NOT d.archived AND NOT d.deleted
      AND s.tsv @@ query
    ORDER BY score DESC, s.document_id, s.position
    LIMIT :limit
    """
)


async def search(
    session: AsyncSession, *, owner_account_id: str, dataset_id: uuid.UUID, q: str, limit: int
) -> Sequence[Row[Any]]:
    """Rows of (document_id, segment_id, score, snippet), best first."""
    result = await session.execute(
        _SEARCH, {"owner": owner_account_id, "dataset_id": dataset_id, "q": q, "limit": limit}
    )
    return result.all()
