"""The indexer's tables: what it knows of each document, and its segments with a full-text vector."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

from sqlalchemy import BigInteger, Boolean, Computed, ForeignKey, Index, Integer, MetaData, Text
from sqlalchemy.dialects.postgresql import TIMESTAMP, TSVECTOR, UUID
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

# The text search configuration of the generated vector and of every query against it.
TS_CONFIG = "english"


def utcnow() -> datetime:
    return datetime.now(UTC)


class Base(DeclarativeBase):
    metadata = MetaData()


class IndexedDocument(Base):
    """The newest state of a document the indexer applied; a deleted one stays as a tombstone (its version
    keeps guarding against stale events) without segments."""

    __tablename__ = "indexed_documents"
    __table_args__ = (Index("ix_indexed_documents_owner_dataset", "owner_account_id", "dataset_id"),)

    id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True)
    dataset_id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True))
    workspace_id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True))
    owner_account_id: Mapped[str] = mapped_column(Text)
    name: Mapped[str] = mapped_column(Text)
    version: Mapped[int] = mapped_column(BigInteger)
    enabled: Mapped[bool] = mapped_column(Boolean)
    archived: Mapped[bool] = mapped_column(Boolean)
    deleted: Mapped[bool] = mapped_column(Boolean, default=False)
    text_sha256: Mapped[str] = mapped_column(Text)
    segment_count: Mapped[int] = mapped_column(Integer, default=0)
    updated_at: Mapped[datetime] = mapped_column(TIMESTAMP(timezone=True), default=utcnow)

    @property
    def searchable(self) -> bool:
        return self.enabled and not self.archived and not self.deleted


class Segment(Base):
    __tablename__ = "segments"
    __table_args__ = (
        Index("ix_segments_document_position", "document_id", "position", unique=True),
        Index("ix_segments_tsv", "tsv", postgresql_using="gin"),
    )

    id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True)
    document_id: Mapped[uuid.UUID] = mapped_column(
        UUID(as_uuid=True), ForeignKey("indexed_documents.id", ondelete="CASCADE")
    )
    position: Mapped[int] = mapped_column(Integer)
    content: Mapped[str] = mapped_column(Text)
    tsv: Mapped[str] = mapped_column(
        TSVECTOR, Computed(f"to_tsvector('{TS_CONFIG}', content)", persisted=True)
    )
