"""Search results."""

from __future__ import annotations

import uuid

from pydantic import BaseModel


class SearchHit(BaseModel):
    document_id: uuid.UUID
    segment_id: uuid.UUID
    score: float
    snippet: str


class SearchResults(BaseModel):
    query: str
    data: list[SearchHit]
