"""The full-text query: ranked segments of searchable documents of one owner's dataset.

Snippets are HTML-safe: PostgreSQL marks the matches with private-use characters, the snippet is escaped,
and only then do the markers become <b>…</b>. Documents' own markup is shown as text, never rendered.
"""

from __future__ import annotations

import html
import uuid

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from indexer.models import TS_CONFIG
from indexer.search.schemas import SearchHit

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
) -> list[SearchHit]:
    rows = await session.execute(
        _SEARCH, {"owner": owner_account_id, "dataset_id": dataset_id, "q": q, "limit": limit}
    )
    return [
        SearchHit(
            document_id=r.document_id,
            segment_id=r.segment_id,
            score=float(r.score),
            snippet=highlight(r.snippet),
        )
        for r in rows
    ]


def highlight(snippet: str) -> str:
    return html.escape(snippet).replace(START, "<b>").replace(STOP, "</b>")
