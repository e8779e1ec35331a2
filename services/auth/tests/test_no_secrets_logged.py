"""Nothing secret in logs or error bodies: passwords, tokens, reset codes, the key-encryption key.

Auth runs in its own process at DEBUG level; its whole log file is checked, so every secret any test in
this session handled (collected in `seen`) counts, plus the ones this test produces on purpose.
"""

from __future__ import annotations

import logging

import httpx
import pytest
from auth_testkit import KEY_ENCRYPTION_KEY, Forger, Secrets, new_login, strong_password
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from outbox import outbox_table
from testsupport import HttpService


async def test_no_secret_reaches_logs_or_error_bodies(
    http: httpx.AsyncClient,
    verifier: httpx.AsyncClient,
    auth_service: HttpService,
    engine: AsyncEngine,
    forger: Forger,
    seen: Secrets,
    caplog: pytest.LogCaptureFixture,
) -> None:
    seen.add(KEY_ENCRYPTION_KEY)
    bodies: list[str] = []
    with caplog.at_level(logging.DEBUG):
        session = await new_login(http, seen)
        wrong = "Wrong-" + strong_password()
        seen.add(wrong)
        for path, body in [
            ("/auth/api/login", {"email": session.email, "password": wrong}),
            ("/auth/api/register", {"email": session.email, "password": wrong, "name": "Dup"}),
            ("/auth/api/register", {"email": "bad", "password": "weakweakweak", "name": "N"}),
            ("/auth/api/refresh-token", {"refresh_token": session.refresh_token + "x"}),
        ]:
            bodies.append((await http.post(path, json=body)).text)
        seen.add("weakweakweak", session.refresh_token + "x")

        r = await http.post("/auth/api/refresh-token", json={"refresh_token": session.refresh_token})
        seen.add(r.json()["access_token"], r.json()["refresh_token"])
        bodies.append(
            (await http.post("/auth/api/refresh-token", json={"refresh_token": session.refresh_token})).text
        )
        for token in forger.attacks(session.account_id, session.email).values():
            seen.add(token)
            bodies.append((await http.get("/auth/api/me", headers={"Authorization": f"Bearer {token}"})).text)
            bodies.append((await verifier.get("/whoami", headers={"Authorization": f"Bearer {token}"})).text)

        await http.post("/auth/api/reset-password", json={"email": session.email})
        async with engine.connect() as conn:
            payload = (
                await conn.execute(
                    select(outbox_table.c.payload)
                    .where(outbox_table.c.event_type == "auth.mail.password_reset_code")
                    .where(outbox_table.c.aggregate_id == session.account_id)
                )
            ).scalar_one()
        seen.add(str(payload["code"]))
        new_password = strong_password()
        seen.add(new_password)
        bad_code = f"{(int(payload['code']) + 1) % 10**8:08d}"
        bodies.append(
            (
                await http.post(
                    "/auth/api/reset-password/confirm",
                    json={"email": session.email, "code": bad_code, "new_password": new_password},
                )
            ).text
        )
        ok = await http.post(
            "/auth/api/reset-password/confirm",
            json={"email": session.email, "code": payload["code"], "new_password": new_password},
        )
        assert ok.status_code == 204

    assert seen.found_in("\n".join(bodies)) == []
    assert seen.found_in(caplog.text) == []  # the in-process servicekit.auth verifier
    auth_log = auth_service.log_path.read_text(errors="replace")
    assert "DEBUG" in auth_log or "INFO" in auth_log  # the log really is captured
    assert seen.found_in(auth_log) == []
