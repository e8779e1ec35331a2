"""the outbox library's schema step 2: the index of rows in backoff (the relay's claim skips what waits behind them)

Revision ID: 0002_outbox_v2
Revises: 0001
Create Date: 2026-11-25
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

import outbox.migrations

revision: str = "0002_outbox_v2"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    outbox.migrations.v2(op.get_bind())


def downgrade() -> None:
    outbox.migrations.v2_downgrade(op.get_bind())
