"""Login throttling in Redis: per (account, address), an account-wide ceiling, per address; 429 + Retry-After."""

from __future__ import annotations

import math
import time

import httpx
from auth_testkit import (
    LOGIN_WINDOW_SECONDS,
    MAX_FAILURES_PER_ACCOUNT,
    MAX_FAILURES_PER_ADDRESS,
    Secrets,
    fake_address,
    register,
    unique_email,
)

from testsupport import wait_until


async def test_sixth_wrong_password_is_429_and_the_right_one_works_after_the_window(
    http: httpx.AsyncClient, seen: Secrets
) -> None:
    email, password, _ = await register(http, seen)
    headers = {"X-Forwarded-For": fake_address()}
    wrong = {"email": email, "password": "Wrong-pass-123"}
    for _ in range(5):
        r = await http.post("/auth/api/login", json=wrong, headers=headers)
        assert r.status_code == 401, r.text
    sixth = await http.post("/auth/api/login", json=wrong, headers=headers)
    locked_at = time.monotonic()
    assert sixth.status_code == 429, sixth.text
    assert 1 <= int(sixth.headers["Retry-After"]) <= math.ceil(LOGIN_WINDOW_SECONDS)
    assert sixth.json()["error"]["code"] == "too_many_requests"
    # Within the window even the right password is refused from that address: the lock is on the pair.
    right = {"email": email, "password": password}
    assert (await http.post("/auth/api/login", json=right, headers=headers)).status_code == 429

    async def logged_in() -> bool:
        r = await http.post("/auth/api/login", json=right, headers=headers)
        if r.status_code == 200:
            seen.add(r.json()["access_token"], r.json()["refresh_token"])
        return r.status_code == 200

    await wait_until(logged_in, timeout=LOGIN_WINDOW_SECONDS + 5, interval=0.2, what="login after the window")
    assert time.monotonic() - locked_at >= LOGIN_WINDOW_SECONDS / 2


async def test_a_strangers_failures_do_not_lock_the_owner_out(http: httpx.AsyncClient, seen: Secrets) -> None:
    """Security review, finding 2. Before: five wrong passwords from anyone locked the account, and the
    owner's right password got 429. Now the stranger's address is locked, the owner's is not."""
    email, password, _ = await register(http, seen)
    stranger = {"X-Forwarded-For": fake_address()}
    for _ in range(5):
        r = await http.post(
            "/auth/api/login", json={"email": email, "password": "Wrong-pass-123"}, headers=stranger
        )
        assert r.status_code == 401
    r = await http.post(
        "/auth/api/login", json={"email": email, "password": "Wrong-pass-123"}, headers=stranger
    )
    assert r.status_code == 429
    owner = await http.post(
        "/auth/api/login",
        json={"email": email, "password": password},
        headers={"X-Forwarded-For": fake_address()},
    )
    assert owner.status_code == 200, owner.text
    seen.add(owner.json()["access_token"], owner.json()["refresh_token"])


async def test_guessing_one_account_from_many_addresses_hits_the_account_ceiling(
    http: httpx.AsyncClient, seen: Secrets
) -> None:
    email, _, _ = await register(http, seen)
    for _ in range(MAX_FAILURES_PER_ACCOUNT):
        r = await http.post(
            "/auth/api/login",
            json={"email": email, "password": "Wrong-pass-123"},
            headers={"X-Forwarded-For": fake_address()},
        )
        assert r.status_code == 401
    r = await http.post(
        "/auth/api/login",
        json={"email": email, "password": "Wrong-pass-123"},
        headers={"X-Forwarded-For": fake_address()},
    )
    assert r.status_code == 429 and 1 <= int(r.headers["Retry-After"]) <= math.ceil(LOGIN_WINDOW_SECONDS)


async def test_one_address_guessing_many_accounts_is_throttled(http: httpx.AsyncClient) -> None:
    headers = {"X-Forwarded-For": fake_address()}
    for _ in range(MAX_FAILURES_PER_ADDRESS):
        r = await http.post(
            "/auth/api/login", json={"email": unique_email(), "password": "Wrong-pass-123"}, headers=headers
        )
        assert r.status_code == 401
    r = await http.post(
        "/auth/api/login", json={"email": unique_email(), "password": "Wrong-pass-123"}, headers=headers
    )
    assert r.status_code == 429 and int(r.headers["Retry-After"]) >= 1
