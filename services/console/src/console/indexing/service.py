"""Moves a document's `indexing_status` from the indexer's reports (`indexer.document.*`, `contracts.indexer`).

A report names the document version it is about. It applies only to the document's current version (an
older version's report is stale: that version's status no longer matters), and within one version the
status only moves forward (waiting → indexing → completed | error), so a reordered `indexing` cannot undo
`completed`.

Tenancy comes from console's own row: a report must name the document's dataset (and its workspace, when the
report carries one; reports from indexers older than that field do not). Any other report is forged or
mistaken: it is refused (`ReportTenancyMismatch`, a `Reject`: dead-lettered at once) and changes nothing,
whatever its version. (Who may produce to `indexer.document` at all is the broker's ACL: see ARCHITECTURE.md.)
"""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncSession

from console.documents import repository
from console.models import IndexingStatus, utcnow
from contracts.indexer import DocumentIndexed, DocumentIndexFailed, Report, ReportType
from outbox import Reject

_STATUS_OF_REPORT = {
    ReportType.INDEXING: IndexingStatus.INDEXING,
    ReportType.INDEXED: IndexingStatus.COMPLETED,
    ReportType.INDEX_FAILED: IndexingStatus.ERROR,
}


class ReportTenancyMismatch(Reject):
    """A report names another dataset or workspace than console's document: never applied, dead-lettered."""


_RANK = {
    IndexingStatus.WAITING: 0,
    IndexingStatus.INDEXING: 1,
    IndexingStatus.COMPLETED: 2,
    IndexingStatus.ERROR: 2,
}


async def apply_report(session: AsyncSession, report: Report, version: int) -> bool:
    """True when the report (on document `version`) changed the document's status."""
    new_status = _STATUS_OF_REPORT[report.TYPE]
    document = await repository.get_by_id(session, report.document_id, lock="update")
    if document is None:
        return False  # deleted since
    if report.dataset_id != document.dataset_id or (
        report.workspace_id is not None and report.workspace_id != document.workspace_id
    ):
        raise ReportTenancyMismatch(
            f"report on document {report.document_id} names another dataset/workspace than the document's"
        )
    if document.version != version:
        return False  # a report on an older version (or on one console never produced)
    current = IndexingStatus(document.indexing_status)
    if _RANK[new_status] <= _RANK[current]:
        return False
    document.indexing_status = new_status.value
    if isinstance(report, DocumentIndexed):
        document.segment_count = report.segment_count
        document.indexing_error = None
        document.completed_at = utcnow()
    elif isinstance(report, DocumentIndexFailed):
        document.indexing_error = (report.reason or "indexing failed")[:2000]
    await session.flush()
    return True
