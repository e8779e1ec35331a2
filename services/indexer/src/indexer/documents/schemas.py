"""What the index holds for a document."""

from __future__ import annotations

import uuid
from datetime import datetime

from pydantic import BaseModel


class IndexedDocumentOut(BaseModel):
    document_id: uuid.UUID
    dataset_id: uuid.UUID
    version: int
    segment_count: int
    enabled: bool
    archived: bool
    searchable: bool
    updated_at: datetime
