"""One workspace per account: created by the first request or by auth.account.registered, whichever first."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable

from testsupport import wait_until

from .conftest import Api, Stack, consumed, publish


def workspaces_of(stack: Stack, account_id: uuid.UUID) -> list[tuple[object, ...]]:
    return stack.console_rows("SELECT id, name FROM workspaces WHERE owner_account_id = %s", str(account_id))


def registered(account_id: uuid.UUID) -> dict[str, object]:
    return {"account_id": str(account_id), "email": "new@example.com", "name": "New", "version": 1}


async def test_first_requests_create_one_workspace(stack: Stack, make_api: Callable[..., Api]) -> None:
    api = make_api()
    responses = await asyncio.gather(*(api.console.get("/console/api/datasets") for _ in range(10)))
    assert {r.status_code for r in responses} == {200}
    assert len(workspaces_of(stack, api.account_id)) == 1


async def test_registered_event_creates_the_workspace_once(stack: Stack) -> None:
    account = uuid.uuid4()
    first = await publish(
        "auth.account", "auth.account.registered", str(account), registered(account), version=1
    )
    await wait_until(
        lambda: asyncio.to_thread(workspaces_of, stack, account), what="workspace from the event"
    )
    again = await publish(
        "auth.account",
        "auth.account.registered",
        str(account),
        registered(account),
        version=1,
        event_id=first.event_id,
    )
    await consumed(stack.console_group, [first, again])
    rows = workspaces_of(stack, account)
    assert len(rows) == 1 and rows[0][1] == "New's Workspace"


async def test_event_after_lazy_creation_is_a_no_op(stack: Stack, make_api: Callable[..., Api]) -> None:
    api = make_api()
    ds = await api.create_dataset()
    before = workspaces_of(stack, api.account_id)
    sent = await publish(
        "auth.account", "auth.account.registered", str(api.account_id), registered(api.account_id), version=1
    )
    await consumed(stack.console_group, [sent])
    assert workspaces_of(stack, api.account_id) == before
    assert (await api.console.get(f"/console/api/datasets/{ds['id']}")).status_code == 200
