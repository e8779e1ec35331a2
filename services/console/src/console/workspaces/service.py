"""Every account owns exactly one workspace, created by whichever comes first: its first request or the
`auth.account.registered` event."""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy.ext.asyncio import AsyncSession

from console.models import Workspace
from console.workspaces import repository


def default_name(email: str, display_name: str = "") -> str:
    """Dify's "<name>'s Workspace"; the lazy path knows only the email, so its local part stands in."""
    owner = display_name.strip() or (email.split("@", 1)[0] if email else "")
    return f"{owner}'s Workspace" if owner else "Workspace"


# Workspaces this process has seen committed, by owner. A workspace is never deleted nor changed once
# created (nothing in console updates or deletes the row; its owner is unique), so the request path need
# not read it again: one SELECT fewer per request. Bounded: the oldest entry goes first when full.
_KNOWN_LIMIT = 10_000
_known: dict[str, tuple[uuid.UUID, str, datetime]] = {}


def _remember(workspace: Workspace) -> None:
    if len(_known) >= _KNOWN_LIMIT:
        del _known[next(iter(_known))]
    _known[workspace.owner_account_id] = (workspace.id, workspace.name, workspace.created_at)


async def ensure_workspace(
    session: AsyncSession, account_id: str, email: str, display_name: str = "", *, cached: bool = False
) -> Workspace:
    """The account's workspace, created if absent. `cached`: from this process's memory when it saw the
    workspace committed before (a detached copy, for reading its fields: the request path)."""
    if cached and (known := _known.get(account_id)) is not None:
        workspace_id, name, created_at = known
        return Workspace(id=workspace_id, owner_account_id=account_id, name=name, created_at=created_at)
    workspace = await repository.get_by_owner(session, account_id)
    if workspace is not None:
        # Found before this transaction wrote anything: committed, so safe to remember (an insert of this
        # transaction is not remembered: it could still roll back).
        _remember(workspace)
    else:
        await repository.insert_if_absent(session, account_id, default_name(email, display_name))
        workspace = await repository.get_by_owner(session, account_id)
    assert workspace is not None  # inserted or found committed by the conflicting transaction
    return workspace
