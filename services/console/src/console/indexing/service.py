"""Moves a document's `indexing_status` from the indexer's reports (`indexer.document.*`).

A report names the document version it is about. It applies only to the document's current version (an
older version's report is stale: that version's status no longer matters), and within one version the
status only moves forward (waiting → indexing → completed | error), so a reordered `indexing` cannot undo
`completed`.
"""

from __future__ import annotations

import uuid

from sqlalchemy.ext.asyncio import AsyncSession

from console.documents import repository
from console.models import IndexingStatus, utcnow

INDEXING = "indexer.document.indexing"
INDEXED = "indexer.document.indexed"
INDEX_FAILED = "indexer.document.index_failed"

_STATUS_OF_EVENT = {
    INDEXING: IndexingStatus.INDEXING,
    INDEXED: IndexingStatus.COMPLETED,
    INDEX_FAILED: IndexingStatus.ERROR,
}
_RANK = {
    IndexingStatus.WAITING: 0,
    IndexingStatus.INDEXING: 1,
    IndexingStatus.COMPLETED: 2,
    IndexingStatus.ERROR: 2,
}


async def apply_report(
    session: AsyncSession, event_type: str, document_id: uuid.UUID, version: int, data: dict[str, object]
) -> bool:
    """True when the report changed the document's status."""
    new_status = _STATUS_OF_EVENT.get(event_type)
    if new_status is None:
        return False
    document = await repository.lock_by_id(session, document_id)
    if document is None or document.version != version:
        return False  # deleted since, or a report on an older version
    current = IndexingStatus(document.indexing_status)
    if _RANK[new_status] <= _RANK[current]:
        return False
    document.indexing_status = new_status.value
    if new_status is IndexingStatus.COMPLETED:
        count = data.get("segment_count")
        document.segment_count = count if isinstance(count, int) else None
        document.indexing_error = None
        document.completed_at = utcnow()
    elif new_status is IndexingStatus.ERROR:
        document.indexing_error = str(data.get("reason") or "indexing failed")[:2000]
    await session.flush()
    return True
