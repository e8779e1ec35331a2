"""snapshot_runs: the resumable cursor of a re-snapshot of every document (make rebuild-index)

Revision ID: 0002_snapshot_runs
Revises: 0001
Create Date: 2026-11-24
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import TIMESTAMP, UUID

revision: str = "0002_snapshot_runs"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "snapshot_runs",
        sa.Column("name", sa.Text, primary_key=True),
        sa.Column("after_id", UUID(as_uuid=True), nullable=True),
        sa.Column("announced", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("started_at", TIMESTAMP(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.Column("finished_at", TIMESTAMP(timezone=True), nullable=True),
    )


def downgrade() -> None:
    op.drop_table("snapshot_runs")
