"""What the indexer reports back through its own outbox: topic `indexer.document`, key = document id,
version = the document version the report is about (console ignores reports on older versions)."""

from __future__ import annotations

from enum import StrEnum

from indexer.indexing.schemas import DocumentState
from outbox import Event

TOPIC = "indexer.document"


class ReportType(StrEnum):
    INDEXING = "indexer.document.indexing"
    INDEXED = "indexer.document.indexed"
    INDEX_FAILED = "indexer.document.index_failed"


def report(state: DocumentState, report_type: ReportType, **extra: object) -> Event:
    return Event(
        topic=TOPIC,
        type=report_type.value,
        aggregate_id=str(state.document_id),
        version=state.version,
        data={"document_id": str(state.document_id), "dataset_id": str(state.dataset_id), **extra},
    )
