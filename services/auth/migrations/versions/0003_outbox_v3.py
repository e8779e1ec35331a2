"""the outbox library's schema step 3: previous versions, ready-order claims, parked events

Revision ID: 0003_outbox_v3
Revises: 0002_outbox_v2
Create Date: 2026-12-01
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

import outbox.migrations

revision: str = "0003_outbox_v3"
down_revision: str | None = "0002_outbox_v2"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    outbox.migrations.v3(op.get_bind())


def downgrade() -> None:
    outbox.migrations.v3_downgrade(op.get_bind())
