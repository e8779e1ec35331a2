"""Request and response bodies for documents."""

from __future__ import annotations

import uuid
from datetime import datetime
from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field, model_validator

from console.models import IndexingStatus

MAX_TEXT_CHARS = 200_000
MAX_BATCH = 100


class DocumentCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=255)
    text: str = Field(min_length=1, max_length=MAX_TEXT_CHARS)
    enabled: bool = True


class DocumentUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str | None = Field(default=None, min_length=1, max_length=255)
    text: str | None = Field(default=None, min_length=1, max_length=MAX_TEXT_CHARS)

    @model_validator(mode="after")
    def _something(self) -> DocumentUpdate:
        if self.name is None and self.text is None:
            raise ValueError("give at least one of name, text")
        return self


class StatusFilter(StrEnum):
    """Filter for the document list: an indexing status, or Dify's display states."""

    WAITING = IndexingStatus.WAITING.value
    INDEXING = IndexingStatus.INDEXING.value
    COMPLETED = IndexingStatus.COMPLETED.value
    ERROR = IndexingStatus.ERROR.value
    AVAILABLE = "available"  # enabled, not archived, indexed
    ENABLED = "enabled"
    DISABLED = "disabled"
    ARCHIVED = "archived"


class DocumentOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    dataset_id: uuid.UUID
    name: str
    enabled: bool
    archived: bool
    indexing_status: IndexingStatus = Field(
        description="about `version`: waiting until the indexer reports on it"
    )
    indexing_error: str | None
    segment_count: int | None
    version: int
    created_at: datetime
    updated_at: datetime
    completed_at: datetime | None


class DocumentDetail(DocumentOut):
    text: str


class BatchResult(BaseModel):
    result: str = "success"
    data: list[DocumentOut]
