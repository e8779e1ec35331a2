"""workspaces, datasets, documents; outbox/inbox and idempotency keys

Revision ID: 0001
Revises:
Create Date: 2025-01-01
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import TIMESTAMP, UUID

import outbox.migrations
from servicekit import idempotency

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "workspaces",
        sa.Column("id", UUID(as_uuid=True), primary_key=True),
        sa.Column("owner_account_id", sa.Text, nullable=False),
        sa.Column("name", sa.Text, nullable=False),
        sa.Column("created_at", TIMESTAMP(timezone=True), nullable=False),
        sa.UniqueConstraint("owner_account_id", name="uq_workspaces_owner_account_id"),
    )
    op.create_table(
        "datasets",
        sa.Column("id", UUID(as_uuid=True), primary_key=True),
        sa.Column("workspace_id", UUID(as_uuid=True), sa.ForeignKey("workspaces.id"), nullable=False),
        sa.Column("name", sa.Text, nullable=False),
        sa.Column("description", sa.Text, nullable=False),
        sa.Column("created_at", TIMESTAMP(timezone=True), nullable=False),
        sa.Column("updated_at", TIMESTAMP(timezone=True), nullable=False),
        sa.UniqueConstraint("workspace_id", "name", name="uq_datasets_workspace_id_name"),
    )
    op.create_index("ix_datasets_workspace_created", "datasets", ["workspace_id", "created_at", "id"])
    op.create_table(
        "documents",
        sa.Column("id", UUID(as_uuid=True), primary_key=True),
        sa.Column("dataset_id", UUID(as_uuid=True), sa.ForeignKey("datasets.id"), nullable=False),
        sa.Column("workspace_id", UUID(as_uuid=True), sa.ForeignKey("workspaces.id"), nullable=False),
        sa.Column("name", sa.Text, nullable=False),
        sa.Column("text", sa.Text, nullable=False),
        sa.Column("enabled", sa.Boolean, nullable=False),
        sa.Column("archived", sa.Boolean, nullable=False),
        sa.Column("version", sa.BigInteger, nullable=False),
        sa.Column("indexing_status", sa.Text, nullable=False),
        sa.Column("indexing_error", sa.Text, nullable=True),
        sa.Column("segment_count", sa.Integer, nullable=True),
        sa.Column("created_at", TIMESTAMP(timezone=True), nullable=False),
        sa.Column("updated_at", TIMESTAMP(timezone=True), nullable=False),
        sa.Column("completed_at", TIMESTAMP(timezone=True), nullable=True),
        sa.CheckConstraint(
            "indexing_status IN ('waiting', 'indexing', 'completed', 'error')",
            name="ck_documents_indexing_status",
        ),
    )
    op.create_index("ix_documents_dataset_created", "documents", ["dataset_id", "created_at", "id"])
    bind = op.get_bind()
    outbox.migrations.v1(bind)
    idempotency.create_tables(bind)


def downgrade() -> None:
    op.drop_table("idempotency_keys")
    outbox.migrations.v1_downgrade(op.get_bind())
    op.drop_table("documents")
    op.drop_table("datasets")
    op.drop_table("workspaces")
