"""What the indexer reports back: topic `indexer.document`, key = document id, version = the document
version the report is about (console applies a report only to its document's current version).

Every report names the document's tenancy as the indexer applied it (`dataset_id`, `workspace_id`, both
from console's event): console dead-letters a report whose tenancy is not its own document's.
"""

from __future__ import annotations

import uuid
from enum import StrEnum
from typing import ClassVar

from contracts.base import Payload
from outbox import Event

TOPIC = "indexer.document"


class ReportType(StrEnum):
    INDEXING = "indexer.document.indexing"
    INDEXED = "indexer.document.indexed"
    INDEX_FAILED = "indexer.document.index_failed"


class Report(Payload):
    """Common to every report. The version travels in the envelope (and the writer copies it into the data)."""

    TOPIC: ClassVar[str] = TOPIC
    KEY: ClassVar[str] = "document_id"
    TYPE: ClassVar[ReportType]

    document_id: uuid.UUID
    dataset_id: uuid.UUID
    # Absent from reports of indexers older than this field: console then checks the dataset alone (a
    # dataset belongs to one workspace, so that still pins the tenant; the workspace is a second check).
    workspace_id: uuid.UUID | None = None

    def to_event(self, version: int) -> Event:
        return self.event(version=version, exclude_none=True)


class DocumentIndexing(Report):
    TYPE: ClassVar[ReportType] = ReportType.INDEXING


class DocumentIndexed(Report):
    TYPE: ClassVar[ReportType] = ReportType.INDEXED

    segment_count: int
    # Whether the version is searchable (enabled, not archived); informational, absent from older reports.
    searchable: bool | None = None


class DocumentIndexFailed(Report):
    TYPE: ClassVar[ReportType] = ReportType.INDEX_FAILED

    reason: str


REPORTS: dict[str, type[Report]] = {
    model.TYPE.value: model for model in (DocumentIndexing, DocumentIndexed, DocumentIndexFailed)
}


def parse_report(event_type: str, data: dict[str, object]) -> Report | None:
    """The typed report of an `indexer.document.*` event; None for a type this contract does not know."""
    model = REPORTS.get(event_type)
    return model.model_validate(data) if model is not None else None
