"""register → login → me → refresh → reuse detection → logout, checked by auth and by a servicekit.auth app."""

from __future__ import annotations

import asyncio
import uuid

import httpx
import jwt
from auth_testkit import REFRESH_REUSE_GRACE_SECONDS, Secrets, login, new_login, register


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def test_register_login_me_refresh_reuse_logout(
    http: httpx.AsyncClient, verifier: httpx.AsyncClient, seen: Secrets
) -> None:
    email, password, account_id = await register(http, seen)
    access, refresh = await login(http, seen, email, password)

    header = jwt.get_unverified_header(access)
    claims = jwt.decode(access, options={"verify_signature": False})
    assert header["alg"] == "EdDSA" and header["kid"]
    assert claims["sub"] == account_id and claims["aud"] == "outbox-reference"
    assert {"exp", "iat", "jti", "sid"} <= claims.keys() and claims["exp"] - claims["iat"] == 60

    me = await http.get("/auth/api/me", headers=bearer(access))
    assert me.status_code == 200 and me.json()["email"] == email and me.json()["id"] == account_id
    who = await verifier.get("/whoami", headers=bearer(access))
    assert who.status_code == 200 and who.json() == {"id": account_id, "email": email}

    r = await http.post("/auth/api/refresh-token", json={"refresh_token": refresh})
    assert r.status_code == 200, r.text
    access2, refresh2 = r.json()["access_token"], r.json()["refresh_token"]
    seen.add(access2, refresh2)
    assert refresh2 != refresh and access2 != access
    assert (await http.get("/auth/api/me", headers=bearer(access2))).status_code == 200

    # The rotated token is refused, and presenting it after the reuse grace revokes the family: the new
    # pair dies with it.
    await asyncio.sleep(REFRESH_REUSE_GRACE_SECONDS + 0.2)
    reused = await http.post("/auth/api/refresh-token", json={"refresh_token": refresh})
    assert reused.status_code == 401
    assert (await http.post("/auth/api/refresh-token", json={"refresh_token": refresh2})).status_code == 401
    assert (await http.get("/auth/api/me", headers=bearer(access2))).status_code == 401
    assert (await verifier.get("/whoami", headers=bearer(access2))).status_code == 401

    # A fresh login, then logout: its access token is refused by auth and by the other service.
    access3, refresh3 = await login(http, seen, email, password)
    assert (await verifier.get("/whoami", headers=bearer(access3))).status_code == 200
    out = await http.post("/auth/api/logout", headers=bearer(access3))
    assert out.status_code == 204
    me3 = await http.get("/auth/api/me", headers=bearer(access3))
    assert me3.status_code == 401 and me3.json()["error"]["message"] == "token revoked"
    assert me3.headers["WWW-Authenticate"] == "Bearer"
    assert (await verifier.get("/whoami", headers=bearer(access3))).status_code == 401
    assert (await http.post("/auth/api/refresh-token", json={"refresh_token": refresh3})).status_code == 401
    # Other sessions of the account are untouched by that logout.
    access4, _ = await login(http, seen, email, password)
    assert (await verifier.get("/whoami", headers=bearer(access4))).status_code == 200


async def test_concurrent_refresh_with_one_token_lets_one_win_and_keeps_the_session(
    http: httpx.AsyncClient, seen: Secrets
) -> None:
    """Two tabs refreshing at once (security review, finding 8): before, the loser's reuse revoked the
    whole session; now a reuse within the grace is refused and the winner's tokens keep working."""
    session = await new_login(http, seen)
    results = await asyncio.gather(
        *(
            http.post("/auth/api/refresh-token", json={"refresh_token": session.refresh_token})
            for _ in range(2)
        )
    )
    assert sorted(r.status_code for r in results) == [200, 401]
    winner = next(r for r in results if r.status_code == 200).json()
    seen.add(winner["access_token"], winner["refresh_token"])
    loser = next(r for r in results if r.status_code == 401)
    assert "already used" in loser.json()["error"]["message"]
    again = await http.post("/auth/api/refresh-token", json={"refresh_token": winner["refresh_token"]})
    assert again.status_code == 200, again.text
    seen.add(again.json()["access_token"], again.json()["refresh_token"])


async def test_duplicate_email_is_409_case_insensitively(http: httpx.AsyncClient, seen: Secrets) -> None:
    email, _, _ = await register(http, seen)
    r = await http.post(
        "/auth/api/register",
        json={"email": f"  {email.upper()} ", "password": "Another-pass-42", "name": "X"},
    )
    assert r.status_code == 409 and r.json()["error"]["code"] == "conflict"


async def test_wrong_password_and_unknown_email_get_the_same_answer(
    http: httpx.AsyncClient, seen: Secrets
) -> None:
    email, _, _ = await register(http, seen)
    wrong = await http.post("/auth/api/login", json={"email": email, "password": "Wrong-pass-123"})
    unknown = await http.post(
        "/auth/api/login",
        json={"email": f"nobody-{uuid.uuid4().hex}@example.test", "password": "Wrong-pass-123"},
    )
    assert wrong.status_code == unknown.status_code == 401
    assert wrong.json() == unknown.json()


async def test_refresh_with_unknown_token_is_401(http: httpx.AsyncClient) -> None:
    r = await http.post("/auth/api/refresh-token", json={"refresh_token": "made-up"})
    assert r.status_code == 401


async def test_me_and_logout_need_a_bearer_token(http: httpx.AsyncClient) -> None:
    assert (await http.get("/auth/api/me")).status_code == 401
    assert (
        await http.get("/auth/api/me", headers={"Authorization": "Basic dXNlcjpwYXNz"})
    ).status_code == 401
    assert (await http.post("/auth/api/logout")).status_code == 401
