"""Dify's email-code login (issue 11 item 6) on real PostgreSQL, Redis and HTTP: a code by mail event, the
same tokens as a password login, single use, short lived, hashed at rest, throttled, and no answer that
tells whether an account exists."""

from __future__ import annotations

import asyncio

import httpx
import redis.asyncio as aioredis
from auth_testkit import REDIS_URL, Secrets, fake_address, new_login, unique_email
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from contracts.auth import MAIL_TOPIC
from outbox import outbox_table


async def mailed_codes(engine: AsyncEngine, account_id: str) -> list[str]:
    async with engine.connect() as conn:
        rows = await conn.execute(
            select(outbox_table.c.payload, outbox_table.c.topic)
            .where(
                outbox_table.c.aggregate_id == account_id, outbox_table.c.event_type == "auth.mail.login_code"
            )
            .order_by(outbox_table.c.id)
        )
        return [str(r.payload["code"]) for r in rows if r.topic == MAIL_TOPIC]


async def request_code(http: httpx.AsyncClient, email: str) -> httpx.Response:
    return await http.post(
        "/auth/api/email-code-login", json={"email": email}, headers={"X-Forwarded-For": fake_address()}
    )


async def test_a_mailed_code_logs_in_once_with_the_same_tokens_as_a_password(
    http: httpx.AsyncClient,
    verifier: httpx.AsyncClient,
    engine: AsyncEngine,
    seen: Secrets,
    redis_prefix: str,
) -> None:
    user = await new_login(http, seen)
    r = await request_code(http, user.email)
    assert r.status_code == 202 and r.json() == {"status": "accepted"}
    [code] = await mailed_codes(engine, user.account_id)
    seen.add(code)
    assert len(code) == 6 and code.isdigit()

    stored = aioredis.from_url(REDIS_URL)
    try:
        [(_field, digest)] = (await stored.hgetall(f"{redis_prefix}email-login:{user.account_id}")).items()
        assert code.encode() not in digest and len(digest) == 32  # an HMAC at rest, never the code
    finally:
        await stored.aclose()

    exchange = {"email": user.email, "code": code}
    ok = await http.post("/auth/api/email-code-login/validity", json=exchange)
    assert ok.status_code == 200, ok.text
    assert ok.headers["Cache-Control"] == "no-store" and set(ok.json()) >= {"access_token", "refresh_token"}
    seen.add(ok.json()["access_token"], ok.json()["refresh_token"])
    me = await verifier.get("/whoami", headers={"Authorization": f"Bearer {ok.json()['access_token']}"})
    assert me.status_code == 200 and me.json()["id"] == user.account_id
    again = await http.post("/auth/api/email-code-login/validity", json=exchange)
    assert again.status_code == 400 and again.json()["error"]["code"] == "invalid_login_code"  # single use


async def test_unknown_emails_get_the_same_answers_and_no_mail(
    http: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    email = unique_email("nobody")
    r = await request_code(http, email)
    assert r.status_code == 202 and r.json() == {"status": "accepted"}
    bad = await http.post("/auth/api/email-code-login/validity", json={"email": email, "code": "123456"})
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "invalid_login_code"
    async with engine.connect() as conn:
        rows = await conn.execute(
            select(outbox_table.c.id).where(outbox_table.c.payload["email"].astext == email)
        )
        assert rows.first() is None


async def test_a_new_request_keeps_older_codes_and_concurrent_exchanges_spend_a_code_once(
    http: httpx.AsyncClient, engine: AsyncEngine, seen: Secrets
) -> None:
    user = await new_login(http, seen)
    await request_code(http, user.email)
    await request_code(http, user.email)  # e.g. a stranger's request: the first code must still work
    first, _second = await mailed_codes(engine, user.account_id)
    seen.add(first, _second)
    body = {"email": user.email, "code": first}
    results = await asyncio.gather(
        *(http.post("/auth/api/email-code-login/validity", json=body) for _ in range(4))
    )
    assert sorted(r.status_code for r in results) == [200, 400, 400, 400]
    for r in results:
        if r.status_code == 200:
            seen.add(r.json()["access_token"], r.json()["refresh_token"])


async def test_wrong_codes_are_throttled_per_address_and_requests_per_email(
    http: httpx.AsyncClient, engine: AsyncEngine, seen: Secrets
) -> None:
    user = await new_login(http, seen)
    await request_code(http, user.email)
    [code] = await mailed_codes(engine, user.account_id)
    seen.add(code)
    stranger = {"X-Forwarded-For": fake_address()}
    wrong = {"email": user.email, "code": f"{(int(code) + 1) % 10**6:06d}"}
    for _ in range(5):
        assert (
            await http.post("/auth/api/email-code-login/validity", json=wrong, headers=stranger)
        ).status_code == 400
    blocked = await http.post(
        "/auth/api/email-code-login/validity", json={**wrong, "code": code}, headers=stranger
    )
    assert blocked.status_code == 429 and "Retry-After" in blocked.headers
    owner = await http.post(
        "/auth/api/email-code-login/validity",
        json={"email": user.email, "code": code},
        headers={"X-Forwarded-For": fake_address()},
    )
    assert owner.status_code == 200, owner.text  # the stranger's guesses did not burn the owner's code
    seen.add(owner.json()["access_token"], owner.json()["refresh_token"])
    statuses = [(await request_code(http, user.email)).status_code for _ in range(3)]
    assert statuses == [202, 202, 429]  # three codes per email per code lifetime (one was asked above)
