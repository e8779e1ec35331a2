"""Auth and console across the broker and the token: the registered event creates the owner's workspace
(before any console request), and a logged-out token is refused by console, not only by auth."""

from __future__ import annotations

import httpx
import pytest

from tests.e2e.client import login, new_credentials, register
from tests.e2e.system import System
from testsupport import wait_until

pytestmark = pytest.mark.e2e


async def test_registration_reaches_console_and_logout_is_honoured_by_console(system: System) -> None:
    who = new_credentials("accounts")
    account = await register(system, who)

    async def workspace_created() -> int:
        return int(
            system.scalar(
                "console", "SELECT count(*) FROM workspaces WHERE owner_account_id = %s", account["id"]
            )
        )

    # auth.account.registered → auth's relay → console's consumer: the workspace exists before any request.
    assert await wait_until(workspace_created, timeout=30, what="workspace from auth.account.registered") == 1

    token = await login(system, who)
    headers = {"Authorization": f"Bearer {token}"}
    async with httpx.AsyncClient(base_url=system.url("console"), headers=headers, timeout=30) as console:
        assert (await console.get("/console/api/datasets")).status_code == 200
        assert await workspace_created() == 1  # the first request found it; no second workspace
        async with httpx.AsyncClient(base_url=system.url("auth"), headers=headers, timeout=30) as auth:
            assert (await auth.post("/auth/api/logout")).status_code == 204
            assert (await auth.get("/auth/api/me")).status_code == 401
        refused = await console.get("/console/api/datasets")
    assert refused.status_code == 401, refused.text
    assert refused.json()["error"]["code"] == "unauthorized"
