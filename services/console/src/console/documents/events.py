"""The event a document change records: `contracts.console.DocumentState` built from the row, on topic
`console.document`, key = document id, version = document version."""

from __future__ import annotations

from console.models import Document
from contracts.console import DocumentEventType, DocumentState
from outbox import Event

__all__ = ["DocumentEventType", "document_event"]


def document_event(document: Document, event_type: DocumentEventType, *, owner_account_id: str) -> Event:
    deleted = event_type is DocumentEventType.DELETED
    return DocumentState(
        document_id=document.id,
        dataset_id=document.dataset_id,
        workspace_id=document.workspace_id,
        owner_account_id=owner_account_id,
        name=document.name,
        text="" if deleted else document.text,
        enabled=document.enabled,
        archived=document.archived,
        deleted=deleted,
        version=document.version,
    ).to_event(event_type)
