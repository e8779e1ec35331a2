"""Dify's email-code login (issue 11 item 6, issue 20) on real PostgreSQL, Redis and HTTP: a code by mail
event bound to the token its request returned, the same tokens as a password login, single use, its own
lifetime, a few guesses, a few open per account, hashed at rest, throttled, and no answer that tells whether
an account exists. A stranger's guesses never reach the owner's code."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import httpx
import pytest
import redis.asyncio as aioredis
from auth_testkit import (
    REDIS_URL,
    Secrets,
    fake_address,
    new_login,
    request_reset_code,
    strong_password,
    unique_email,
)
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from auth.email_login.codes import token_id
from auth.settings import Settings
from contracts.auth import MAIL_TOPIC
from outbox import outbox_table
from testsupport import HttpService


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


VALIDITY = "/auth/api/email-code-login/validity"


async def request_code(http: httpx.AsyncClient, email: str, address: str | None = None) -> str:
    """Ask for a code; the token the exchange must present."""
    r = await http.post(
        "/auth/api/email-code-login",
        json={"email": email},
        headers={"X-Forwarded-For": address or fake_address()},
    )
    assert r.status_code == 202, r.text
    assert r.headers["Cache-Control"] == "no-store" and set(r.json()) == {"status", "token"}
    return str(r.json()["token"])


async def exchange(
    http: httpx.AsyncClient, email: str, code: str, token: str, address: str | None = None
) -> httpx.Response:
    return await http.post(
        VALIDITY,
        json={"email": email, "code": code, "token": token},
        headers={"X-Forwarded-For": address or fake_address()},
    )


def wrong(code: str, k: int = 1) -> str:
    return f"{(int(code) + k) % 10**6:06d}"


def spent(r: httpx.Response, seen: Secrets) -> None:
    assert r.status_code == 200, r.text
    seen.add(r.json()["access_token"], r.json()["refresh_token"])


def refused(r: httpx.Response) -> bool:
    return r.status_code == 400 and r.json()["error"]["code"] == "invalid_login_code"


async def test_a_mailed_code_logs_in_once_with_the_same_tokens_as_a_password(
    http: httpx.AsyncClient,
    verifier: httpx.AsyncClient,
    engine: AsyncEngine,
    seen: Secrets,
    redis_prefix: str,
) -> None:
    user = await new_login(http, seen)
    token = await request_code(http, user.email)
    [code] = await mailed_codes(engine, user.account_id)
    seen.add(code, token)
    assert len(code) == 6 and code.isdigit()

    stored = aioredis.from_url(REDIS_URL)
    try:
        keys = [k.decode() async for k in stored.scan_iter(match=f"{redis_prefix}email-login:code:*")]
        mine = f"{redis_prefix}email-login:code:{token_id(token).hex()}"
        assert mine in keys and not any(token in k for k in keys)  # keyed by a digest, not the token
        held = await stored.hgetall(mine)
        assert held[b"account"].decode() == user.account_id
        assert code.encode() not in held[b"digest"] and len(held[b"digest"]) == 64  # an HMAC, never the code
    finally:
        await stored.aclose()

    ok = await exchange(http, user.email, code, token)
    spent(ok, seen)
    assert ok.headers["Cache-Control"] == "no-store" and set(ok.json()) >= {"access_token", "refresh_token"}
    me = await verifier.get("/whoami", headers={"Authorization": f"Bearer {ok.json()['access_token']}"})
    assert me.status_code == 200 and me.json()["id"] == user.account_id
    assert refused(await exchange(http, user.email, code, token))  # single use


async def test_unknown_emails_get_the_same_answers_and_no_mail(
    http: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    email = unique_email("nobody")
    token = await request_code(http, email)  # a token all the same
    assert refused(await exchange(http, email, "123456", token))
    async with engine.connect() as conn:
        rows = await conn.execute(
            select(outbox_table.c.id).where(outbox_table.c.payload["email"].astext == email)
        )
        assert rows.first() is None


async def test_a_code_works_only_with_its_own_token_and_for_its_own_account(
    http: httpx.AsyncClient, engine: AsyncEngine, seen: Secrets
) -> None:
    owner = await new_login(http, seen)
    other = await new_login(http, seen)
    owner_token = await request_code(http, owner.email)
    other_token = await request_code(http, other.email)
    [code] = await mailed_codes(engine, owner.account_id)
    seen.add(code, owner_token, other_token)
    assert refused(await exchange(http, owner.email, code, other_token))  # the right code, another token
    assert refused(await exchange(http, other.email, code, owner_token))  # the right pair, another email
    assert refused(await exchange(http, owner.email, code, "A" * 32))  # a token nobody was given
    malformed = await http.post(VALIDITY, json={"email": owner.email, "code": code, "token": "x y"})
    assert malformed.status_code == 422
    # Those were the wrong token's guesses, or none: the owner's own token still has its allowance.
    spent(await exchange(http, owner.email, code, owner_token), seen)


async def test_a_new_request_keeps_older_codes_and_concurrent_exchanges_spend_a_code_once(
    http: httpx.AsyncClient, engine: AsyncEngine, seen: Secrets
) -> None:
    user = await new_login(http, seen)
    first_token = await request_code(http, user.email)
    second_token = await request_code(
        http, user.email
    )  # e.g. a stranger's request: the first code must still work
    first, second = await mailed_codes(engine, user.account_id)
    seen.add(first, second, first_token, second_token)
    results = await asyncio.gather(*(exchange(http, user.email, first, first_token) for _ in range(4)))
    assert sorted(r.status_code for r in results) == [200, 400, 400, 400]
    for r in results:
        if r.status_code == 200:
            spent(r, seen)
    spent(await exchange(http, user.email, second, second_token), seen)


async def test_a_code_allows_a_few_guesses_then_dies_even_for_the_right_code(
    http: httpx.AsyncClient, engine: AsyncEngine, seen: Secrets
) -> None:
    """The guess bound: each code takes at most `email_code_max_guesses` (3) guesses, from any number of
    addresses; the one after finds no code, right or wrong."""
    user = await new_login(http, seen)
    token = await request_code(http, user.email)
    [code] = await mailed_codes(engine, user.account_id)
    seen.add(code, token)
    guesses = Settings(environment="local").email_code_max_guesses
    for k in range(1, guesses + 1):
        assert refused(await exchange(http, user.email, wrong(code, k), token))  # a new address each time
    assert refused(await exchange(http, user.email, code, token))


async def test_the_oldest_open_code_is_cancelled_past_the_cap(
    http: httpx.AsyncClient, engine: AsyncEngine, seen: Secrets
) -> None:
    user = await new_login(http, seen)
    cap = Settings(environment="local").email_code_max_open
    tokens = [await request_code(http, user.email) for _ in range(cap + 1)]
    codes = await mailed_codes(engine, user.account_id)
    seen.add(*codes, *tokens)
    assert refused(await exchange(http, user.email, codes[0], tokens[0]))
    for code, token in zip(codes[1:], tokens[1:], strict=True):
        spent(await exchange(http, user.email, code, token), seen)


async def test_a_strangers_guesses_from_many_addresses_never_lock_the_owner_out(
    http: httpx.AsyncClient, engine: AsyncEngine, seen: Secrets
) -> None:
    """Finding 2. Before: 20 wrong codes from 4 addresses made the owner's right code answer 429 at the
    owner's address, and cancelled it. Now guesses count per code and per (email, address) only."""
    user = await new_login(http, seen)
    owner_address = fake_address()
    token = await request_code(http, user.email, owner_address)
    [code] = await mailed_codes(engine, user.account_id)
    seen.add(code, token)
    for _ in range(6):  # 6 addresses x 5 guesses at tokens nobody was given, then their own throttle
        address = fake_address()
        for k in range(5):
            assert refused(await exchange(http, user.email, wrong(code, k + 1), "B" * 32, address))
        blocked = await exchange(http, user.email, code, "B" * 32, address)
        assert blocked.status_code == 429 and "Retry-After" in blocked.headers
    spent(await exchange(http, user.email, code, token, owner_address), seen)
    await request_code(http, user.email, owner_address)  # and the owner may still ask for a code


async def test_a_password_reset_cancels_open_login_codes_and_the_other_reset_codes(
    http: httpx.AsyncClient, engine: AsyncEngine, seen: Secrets
) -> None:
    """Finding 3. Before: a login code asked before a reset still exchanged for tokens after it (200)."""
    user = await new_login(http, seen)
    token = await request_code(http, user.email)
    [code] = await mailed_codes(engine, user.account_id)
    resets = [await request_reset_code(http, engine, user.email, user.account_id) for _ in range(2)]
    seen.add(code, token, *resets)
    confirm = {"email": user.email, "code": resets[1], "new_password": strong_password()}
    seen.add(confirm["new_password"])
    assert (await http.post("/auth/api/reset-password/confirm", json=confirm)).status_code == 204
    assert refused(await exchange(http, user.email, code, token))
    again = await http.post(
        "/auth/api/reset-password/confirm",
        json={**confirm, "code": resets[0], "new_password": strong_password()},
    )
    assert again.status_code == 400, again.text


async def test_requests_are_bounded_per_email_and_guesses_do_not_use_them_up(
    http: httpx.AsyncClient, engine: AsyncEngine, seen: Secrets
) -> None:
    """The mail bound: at most `email_code_max_requests` codes per email per window, from any addresses."""
    user = await new_login(http, seen)
    limit = Settings(environment="local").email_code_max_requests
    for _ in range(limit):
        seen.add(await request_code(http, user.email))
    flood = await http.post(
        "/auth/api/email-code-login", json={"email": user.email}, headers={"X-Forwarded-For": fake_address()}
    )
    assert flood.status_code == 429 and "Retry-After" in flood.headers
    assert len(await mailed_codes(engine, user.account_id)) == limit


def test_the_default_policy_keeps_a_days_guessing_under_one_in_a_thousand() -> None:
    """The arithmetic of services/auth/README.md, on the defaults: every guess needs a token, every token
    costs a request (bounded per email, whatever the number of addresses), every code takes a few guesses."""
    s = Settings(environment="local")
    requests_per_day = s.email_code_max_requests * 86_400 / s.email_code_request_window_seconds
    assert requests_per_day * s.email_code_max_guesses / 10**6 <= 0.001
    assert s.email_code_max_requests * 3600 / s.email_code_request_window_seconds <= 5  # mails an hour


@pytest.fixture(scope="module")
def short_lived(auth_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[HttpService]:
    """Auth with 2-second codes (the same database and Redis prefix)."""
    service = HttpService(
        "auth-short-codes",
        "auth.main:create_app",
        env={**auth_env, "AUTH_EMAIL_CODE_TTL_SECONDS": "2"},
        log_dir=tmp_path_factory.mktemp("auth-short-codes"),
    )
    service.start()
    yield service
    service.terminate()


async def test_a_code_dies_at_its_own_expiry_whatever_comes_after(
    short_lived: HttpService, engine: AsyncEngine, seen: Secrets
) -> None:
    """Finding 1. Before: every request reset the expiry of the account's whole hash of codes, so a code
    whose stated expiry had passed still logged in when another request had come meanwhile."""
    async with httpx.AsyncClient(base_url=short_lived.base_url, timeout=10) as http:
        user = await new_login(http, seen)
        first_token = await request_code(http, user.email)
        await asyncio.sleep(1.2)
        second_token = await request_code(http, user.email)  # would have extended the first code
        first, second = await mailed_codes(engine, user.account_id)
        seen.add(first, second, first_token, second_token)
        await asyncio.sleep(1.0)  # the first code's stated expiry has passed, the second's has not
        assert refused(await exchange(http, user.email, first, first_token))
        spent(await exchange(http, user.email, second, second_token), seen)
