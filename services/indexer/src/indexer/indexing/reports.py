"""The reports the indexer records about a document version (`contracts.indexer`), built from the state
it applied: topic `indexer.document`, key = document id, version = the version the report is about. Each
names the document's dataset and workspace, which console checks against its own document."""

from __future__ import annotations

from contracts.console import DocumentState
from contracts.indexer import DocumentIndexed, DocumentIndexFailed, DocumentIndexing
from outbox import Event


def indexing(state: DocumentState) -> Event:
    return DocumentIndexing(
        document_id=state.document_id, dataset_id=state.dataset_id, workspace_id=state.workspace_id
    ).to_event(state.version)


def indexed(state: DocumentState, *, segment_count: int, searchable: bool) -> Event:
    return DocumentIndexed(
        document_id=state.document_id,
        dataset_id=state.dataset_id,
        workspace_id=state.workspace_id,
        segment_count=segment_count,
        searchable=searchable,
    ).to_event(state.version)


def index_failed(state: DocumentState, *, reason: str) -> Event:
    return DocumentIndexFailed(
        document_id=state.document_id,
        dataset_id=state.dataset_id,
        workspace_id=state.workspace_id,
        reason=reason,
    ).to_event(state.version)
