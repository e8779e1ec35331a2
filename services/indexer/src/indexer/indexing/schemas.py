"""What the indexer reads from a `console.document.*` event (event-carried state; unknown fields ignored)."""

from __future__ import annotations

import uuid

from pydantic import BaseModel, ConfigDict


class DocumentState(BaseModel):
    model_config = ConfigDict(extra="ignore")

    document_id: uuid.UUID
    dataset_id: uuid.UUID
    workspace_id: uuid.UUID
    owner_account_id: str
    name: str
    text: str = ""
    enabled: bool
    archived: bool
    deleted: bool = False
    version: int
