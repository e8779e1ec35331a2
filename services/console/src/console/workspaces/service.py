"""Every account owns exactly one workspace, created by whichever comes first: its first request or the
`auth.account.registered` event."""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncSession

from console.models import Workspace
from console.workspaces import repository


def default_name(email: str, display_name: str = "") -> str:
    """Dify's "<name>'s Workspace"; the lazy path knows only the email, so its local part stands in."""
    owner = display_name.strip() or (email.split("@", 1)[0] if email else "")
    return f"{owner}'s Workspace" if owner else "Workspace"


async def ensure_workspace(
    session: AsyncSession, account_id: str, email: str, display_name: str = ""
) -> Workspace:
    workspace = await repository.get_by_owner(session, account_id)
    if workspace is None:
        await repository.insert_if_absent(session, account_id, default_name(email, display_name))
        workspace = await repository.get_by_owner(session, account_id)
    assert workspace is not None  # inserted or found committed by the conflicting transaction
    return workspace
