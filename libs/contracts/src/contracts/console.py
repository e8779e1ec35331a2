"""What console publishes: topic `console.document`, key = document id, version = document version.

Event-carried state: every event holds everything the indexer needs to converge on that version without
reading console (the indexer applies the newest state and drops anything older).
"""

from __future__ import annotations

import uuid
from enum import StrEnum
from typing import ClassVar

from pydantic import ConfigDict

from contracts.base import Payload
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
    # indexer applies it when its own version is not newer.
    SNAPSHOT = "console.document.snapshot"


class DocumentState(Payload):
    """The payload of every `console.document.*` event. Consumers ignore fields they do not know."""

    TOPIC: ClassVar[str] = TOPIC
    KEY: ClassVar[str] = "document_id"
    model_config = ConfigDict(extra="ignore")

    document_id: uuid.UUID
    dataset_id: uuid.UUID
    workspace_id: uuid.UUID
    # Whose searches may see it: the indexer has no other way to map a caller to a workspace.
    owner_account_id: str
    name: str
    text: str = ""  # empty in `deleted` events
    enabled: bool
    archived: bool
    deleted: bool = False
    version: int

    def to_event(self, event_type: DocumentEventType) -> Event:
        # A snapshot is the whole state and follows no particular event: standalone (no previous version),
        # so a gap-aware consumer applies it whatever it applied before.
        return self.event(
            event_type.value, version=self.version, standalone=event_type is DocumentEventType.SNAPSHOT
        )
