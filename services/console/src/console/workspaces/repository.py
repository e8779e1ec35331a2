"""SQL for workspaces."""

from __future__ import annotations

import uuid

from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncSession

from console.models import Workspace, utcnow


async def get_by_owner(session: AsyncSession, account_id: str) -> Workspace | None:
    return (
        await session.execute(select(Workspace).where(Workspace.owner_account_id == account_id))
    ).scalar_one_or_none()


async def insert_if_absent(session: AsyncSession, account_id: str, name: str) -> bool:
    """Insert the account's workspace unless it exists; True when this call created it.

    ON CONFLICT on the unique owner: a concurrent creator makes this wait for its commit, then do nothing,
    so the lazy path and the `auth.account.registered` consumer converge on one row.
    """
    result = await session.execute(
        pg_insert(Workspace)
        .values(id=uuid.uuid4(), owner_account_id=account_id, name=name, created_at=utcnow())
        .on_conflict_do_nothing(index_elements=[Workspace.owner_account_id])
        .returning(Workspace.id)
    )
    return result.first() is not None
