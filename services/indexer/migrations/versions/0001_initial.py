"""indexed documents and segments (tsvector + GIN); outbox/inbox

Revision ID: 0001
Revises:
Create Date: 2025-01-01
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import TIMESTAMP, TSVECTOR, UUID

import outbox.migrations

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "indexed_documents",
        sa.Column("id", UUID(as_uuid=True), primary_key=True),
        sa.Column("dataset_id", UUID(as_uuid=True), nullable=False),
        sa.Column("workspace_id", UUID(as_uuid=True), nullable=False),
        sa.Column("owner_account_id", sa.Text, nullable=False),
        sa.Column("name", sa.Text, nullable=False),
        sa.Column("version", sa.BigInteger, nullable=False),
        sa.Column("enabled", sa.Boolean, nullable=False),
        sa.Column("archived", sa.Boolean, nullable=False),
        sa.Column("deleted", sa.Boolean, nullable=False),
        sa.Column("text_sha256", sa.Text, nullable=False),
        sa.Column("segment_count", sa.Integer, nullable=False),
        sa.Column("updated_at", TIMESTAMP(timezone=True), nullable=False),
    )
    op.create_index(
        "ix_indexed_documents_owner_dataset", "indexed_documents", ["owner_account_id", "dataset_id"]
    )
    op.create_table(
        "segments",
        sa.Column("id", UUID(as_uuid=True), primary_key=True),
        sa.Column(
            "document_id",
            UUID(as_uuid=True),
            sa.ForeignKey("indexed_documents.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("position", sa.Integer, nullable=False),
        sa.Column("content", sa.Text, nullable=False),
        sa.Column(
            "tsv", TSVECTOR, sa.Computed("to_tsvector('english', content)", persisted=True), nullable=False
        ),
    )
    op.create_index("ix_segments_document_position", "segments", ["document_id", "position"], unique=True)
    op.create_index("ix_segments_tsv", "segments", ["tsv"], postgresql_using="gin")
    outbox.migrations.v1(op.get_bind())


def downgrade() -> None:
    outbox.migrations.v1_downgrade(op.get_bind())
    op.drop_table("segments")
    op.drop_table("indexed_documents")
