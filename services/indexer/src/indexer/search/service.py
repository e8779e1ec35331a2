"""Search: ranked segments from the caller's own searchable documents of one dataset.

Snippets are HTML-safe: PostgreSQL marks the matches with private-use characters, the snippet is escaped,
and only then do the markers become <b>…</b>. Documents' own markup is shown as text, never rendered.
"""

from __future__ import annotations

import html
import uuid
from dataclasses import dataclass

from indexer.search import repository
from indexer.search.repository import START, STOP
from servicekit.db import UnitOfWork


@dataclass(frozen=True, slots=True)
class Hit:
    document_id: uuid.UUID
    segment_id: uuid.UUID
    score: float
    snippet: str  # HTML-safe, matches in <b>…</b>


async def search(
    uow: UnitOfWork, *, owner_account_id: str, dataset_id: uuid.UUID, q: str, limit: int
) -> list[Hit]:
    rows = await repository.search(
        uow.session, owner_account_id=owner_account_id, dataset_id=dataset_id, q=q, limit=limit
    )
    return [Hit(r.document_id, r.segment_id, float(r.score), highlight(r.snippet)) for r in rows]


def highlight(snippet: str) -> str:
    return html.escape(snippet).replace(START, "<b>").replace(STOP, "</b>")
