"""the outbox library's schema step 4: what retention of heads and consumer versions needs

Revision ID: 0004_outbox_v4
Revises: 0003_outbox_v3
Create Date: 2026-12-02
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

import outbox.migrations

revision: str = "0004_outbox_v4"
down_revision: str | None = "0003_outbox_v3"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    outbox.migrations.v4(op.get_bind())


def downgrade() -> None:
    outbox.migrations.v4_downgrade(op.get_bind())
