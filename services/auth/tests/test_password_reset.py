"""Password reset by code: the event carries what a mail sender needs; confirming revokes every session."""

from __future__ import annotations

import uuid
from typing import Any

import httpx
from auth_testkit import (
    RESET_MAX_ATTEMPTS_PER_ACCOUNT,
    Secrets,
    fake_address,
    login,
    new_login,
    strong_password,
    unique_email,
)
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from auth.models import PasswordReset
from outbox import outbox_table


async def events_for(engine: AsyncEngine, account_id: str, event_type: str) -> list[dict[str, Any]]:
    async with engine.connect() as conn:
        rows = await conn.execute(
            select(outbox_table.c.payload)
            .where(outbox_table.c.aggregate_id == account_id, outbox_table.c.event_type == event_type)
            .order_by(outbox_table.c.id)
        )
        return [dict(r.payload) for r in rows]


async def request_code(
    http: httpx.AsyncClient, engine: AsyncEngine, seen: Secrets, email: str, account_id: str
) -> str:
    r = await http.post("/auth/api/reset-password", json={"email": email})
    assert r.status_code == 202 and r.json() == {"status": "accepted"}
    events = await events_for(engine, account_id, "auth.mail.password_reset_code")
    code = str(events[-1]["code"])
    seen.add(code)
    return code


async def test_reset_by_code_sets_password_and_revokes_sessions(
    http: httpx.AsyncClient, verifier: httpx.AsyncClient, engine: AsyncEngine, seen: Secrets
) -> None:
    session = await new_login(http, seen)
    code = await request_code(http, engine, seen, session.email, session.account_id)
    [event] = await events_for(engine, session.account_id, "auth.mail.password_reset_code")
    assert event["account_id"] == session.account_id and event["email"] == session.email
    assert event["expires_at"] and event["reset_id"] and len(code) == 8

    new_password = strong_password()
    seen.add(new_password)
    wrong = await http.post(
        "/auth/api/reset-password/confirm",
        json={
            "email": session.email,
            "code": "00000000" if code != "00000000" else "1",
            "new_password": new_password,
        },
    )
    assert wrong.status_code == 400 and wrong.json()["error"]["code"] == "invalid_reset_code"

    ok = await http.post(
        "/auth/api/reset-password/confirm",
        json={"email": session.email, "code": code, "new_password": new_password},
    )
    assert ok.status_code == 204, ok.text
    # Sessions revoked: the access token is denied everywhere, the refresh token is dead.
    assert (await http.get("/auth/api/me", headers=session.bearer)).status_code == 401
    assert (await verifier.get("/whoami", headers=session.bearer)).status_code == 401
    assert (
        await http.post("/auth/api/refresh-token", json={"refresh_token": session.refresh_token})
    ).status_code == 401
    old = await http.post("/auth/api/login", json={"email": session.email, "password": session.password})
    assert old.status_code == 401
    await login(http, seen, session.email, new_password)
    # The code is single use.
    again = await http.post(
        "/auth/api/reset-password/confirm",
        json={"email": session.email, "code": code, "new_password": strong_password()},
    )
    assert again.status_code == 400
    [changed] = await events_for(engine, session.account_id, "auth.account.password_changed")
    assert changed["version"] == 2 and changed["reason"] == "reset"


async def test_reset_for_unknown_email_looks_the_same_and_emits_nothing(
    http: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    email = unique_email("ghost")
    r = await http.post("/auth/api/reset-password", json={"email": email})
    assert r.status_code == 202 and r.json() == {"status": "accepted"}
    async with engine.connect() as conn:
        rows = await conn.execute(
            select(outbox_table.c.id).where(outbox_table.c.payload["email"].astext == email)
        )
        assert rows.first() is None


async def test_a_strangers_wrong_codes_lock_only_the_stranger(
    http: httpx.AsyncClient, engine: AsyncEngine, seen: Secrets
) -> None:
    """Security review, finding 2. Before: five wrong codes from anyone killed the owner's code. Now they
    lock that (account, address) pair; the owner, elsewhere, still resets with the code."""
    session = await new_login(http, seen)
    code = await request_code(http, engine, seen, session.email, session.account_id)
    wrong_code = f"{(int(code) + 1) % 10**8:08d}"
    stranger = {"X-Forwarded-For": fake_address()}
    for _ in range(5):
        r = await http.post(
            "/auth/api/reset-password/confirm",
            json={"email": session.email, "code": wrong_code, "new_password": strong_password()},
            headers=stranger,
        )
        assert r.status_code == 400
    body = {"email": session.email, "code": code, "new_password": strong_password()}
    assert (
        await http.post("/auth/api/reset-password/confirm", json=body, headers=stranger)
    ).status_code == 429
    owner = await http.post(
        "/auth/api/reset-password/confirm", json=body, headers={"X-Forwarded-For": fake_address()}
    )
    assert owner.status_code == 204, owner.text


async def test_guessing_from_many_addresses_hits_the_account_ceiling_and_cancels_the_codes(
    http: httpx.AsyncClient, engine: AsyncEngine, seen: Secrets
) -> None:
    session = await new_login(http, seen)
    code = await request_code(http, engine, seen, session.email, session.account_id)
    wrong = {
        "email": session.email,
        "code": f"{(int(code) + 1) % 10**8:08d}",
        "new_password": strong_password(),
    }
    for _ in range(RESET_MAX_ATTEMPTS_PER_ACCOUNT):
        r = await http.post(
            "/auth/api/reset-password/confirm", json=wrong, headers={"X-Forwarded-For": fake_address()}
        )
        assert r.status_code == 400
    right = {**wrong, "code": code}
    r = await http.post(
        "/auth/api/reset-password/confirm", json=right, headers={"X-Forwarded-For": fake_address()}
    )
    assert r.status_code == 429
    async with engine.connect() as conn:
        open_codes = await conn.scalar(
            select(func.count())
            .select_from(PasswordReset)
            .where(
                PasswordReset.account_id == uuid.UUID(session.account_id),
                PasswordReset.invalidated_at.is_(None),
            )
        )
    assert open_codes == 0  # the owner requests a new code


async def test_a_new_request_does_not_cancel_the_previous_code(
    http: httpx.AsyncClient, engine: AsyncEngine, seen: Secrets
) -> None:
    """Security review, finding 8: before, each request cancelled the open code, so a stranger requesting
    resets for the owner's email kept the owner's mailed code from ever working."""
    session = await new_login(http, seen)
    first = await request_code(http, engine, seen, session.email, session.account_id)
    await request_code(http, engine, seen, session.email, session.account_id)  # e.g. a stranger's request
    r = await http.post(
        "/auth/api/reset-password/confirm",
        json={"email": session.email, "code": first, "new_password": strong_password()},
    )
    assert r.status_code == 204, r.text
