"""The status actions of Dify's batch endpoint and which of them are allowed.

Like Dify, an action that would not change anything (enabling an enabled document) is skipped without a
new version or event. Unlike Dify there is no "document is being indexed, try later" refusal: every change
is a new version and the indexer applies them in order, so nothing can race.
"""

from __future__ import annotations

from enum import StrEnum

from console.documents.events import DocumentEventType
from console.models import Document
from servicekit.errors import Conflict


class StatusAction(StrEnum):
    ENABLE = "enable"
    DISABLE = "disable"
    ARCHIVE = "archive"
    UN_ARCHIVE = "un_archive"


def apply_action(document: Document, action: StatusAction) -> DocumentEventType | None:
    """Change the document's flags in memory; the event type to emit, or None when nothing changes."""
    if action in (StatusAction.ENABLE, StatusAction.DISABLE) and document.archived:
        raise Conflict(f"document {document.id} is archived: un_archive it before you {action.value} it")
    if action is StatusAction.ENABLE:
        if document.enabled:
            return None
        document.enabled = True
        return DocumentEventType.ENABLED
    if action is StatusAction.DISABLE:
        if not document.enabled:
            return None
        document.enabled = False
        return DocumentEventType.DISABLED
    if action is StatusAction.ARCHIVE:
        if document.archived:
            return None
        document.archived = True
        return DocumentEventType.ARCHIVED
    if not document.archived:
        return None
    document.archived = False
    return DocumentEventType.UNARCHIVED
