"""the outbox library's schema step 5: outbox_analyze(), the relay's ANALYZE as the app role

Revision ID: 0005_outbox_v5
Revises: 0004_outbox_v4
Create Date: 2026-12-02
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

import outbox.migrations

revision: str = "0005_outbox_v5"
down_revision: str | None = "0004_outbox_v4"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    outbox.migrations.v5(op.get_bind())


def downgrade() -> None:
    outbox.migrations.v5_downgrade(op.get_bind())
