"""The events a document emits: topic `console.document`, key = document id, version = document version.

Event-carried state: each event holds everything the indexer needs to converge on this version without
reading console (the indexer applies the newest state and drops anything older).
"""

from __future__ import annotations

from enum import StrEnum

from console.models import Document
from outbox import Event

TOPIC = "console.document"


class DocumentEventType(StrEnum):
    CREATED = "console.document.created"
    UPDATED = "console.document.updated"
    ENABLED = "console.document.enabled"
    DISABLED = "console.document.disabled"
    ARCHIVED = "console.document.archived"
    UNARCHIVED = "console.document.unarchived"
    DELETED = "console.document.deleted"
    # The current state re-announced without a change (reconcile, rebuild-index): same version, so the
    # indexer applies it when its own version is not newer (console/snapshots.py).
    SNAPSHOT = "console.document.snapshot"


def document_event(document: Document, event_type: DocumentEventType, *, owner_account_id: str) -> Event:
    deleted = event_type is DocumentEventType.DELETED
    return Event(
        topic=TOPIC,
        type=event_type.value,
        aggregate_id=str(document.id),
        version=document.version,
        data={
            "document_id": str(document.id),
            "dataset_id": str(document.dataset_id),
            "workspace_id": str(document.workspace_id),
            # Whose searches may see it: the indexer has no other way to map a caller to a workspace.
            "owner_account_id": owner_account_id,
            "name": document.name,
            "text": "" if deleted else document.text,
            "enabled": document.enabled,
            "archived": document.archived,
            "deleted": deleted,
        },
    )
