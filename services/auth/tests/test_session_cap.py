"""No token outlives its session: `AUTH_SESSION_ABSOLUTE_TTL_SECONDS` caps the access token's `exp`, the
`expires_in` the API answers and the refresh token's expiry, at login and at every refresh.

A second auth process on the suite's database, with an absolute session lifetime (60 s) shorter than its
access-token lifetime (300 s): every token it issues is capped, so the tests need not wait for the cap.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import httpx
import jwt
import pytest
from auth_testkit import Secrets, register
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from auth.models import LoginSession, RefreshToken
from auth.sessions.tokens import hash_refresh_token
from testsupport import HttpService

SESSION_TTL = 60
ACCESS_TTL = 300


@pytest.fixture(scope="module")
def capped_service(
    auth_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[HttpService]:
    env = {
        **auth_env,
        "AUTH_SESSION_ABSOLUTE_TTL_SECONDS": str(SESSION_TTL),
        "AUTH_ACCESS_TOKEN_TTL_SECONDS": str(ACCESS_TTL),
    }
    service = HttpService(
        "auth-capped", "auth.main:create_app", env=env, log_dir=tmp_path_factory.mktemp("capped")
    )
    service.start()
    yield service
    service.terminate()


async def session_of(engine: AsyncEngine, refresh_token: str) -> tuple[uuid.UUID, datetime, datetime]:
    """The refresh token's session id, the session's start and the refresh token's expiry."""
    async with engine.connect() as conn:
        row = (
            await conn.execute(
                select(LoginSession.id, LoginSession.created_at, RefreshToken.expires_at)
                .join(RefreshToken, RefreshToken.session_id == LoginSession.id)
                .where(RefreshToken.token_hash == hash_refresh_token(refresh_token))
            )
        ).one()
    return row.id, row.created_at, row.expires_at


def assert_capped(body: dict[str, object], session_end: datetime, refresh_expires_at: datetime) -> None:
    claims = jwt.decode(str(body["access_token"]), options={"verify_signature": False})
    assert claims["exp"] <= int(session_end.timestamp()), (claims["exp"], session_end)
    assert body["expires_in"] == claims["exp"] - claims["iat"]
    assert 0 < int(str(body["expires_in"])) <= SESSION_TTL
    assert refresh_expires_at <= session_end


async def test_no_access_or_refresh_token_outlives_the_session(
    capped_service: HttpService, engine: AsyncEngine, seen: Secrets
) -> None:
    """Security review, finding 4. Before: login and the last refresh before the cap issued a full-length
    access token (here 300 s on a 60 s session: `expires_in` 300, `exp` 240 s past the session's end), and
    a refresh token living past it. Now both end by the session's absolute end."""
    async with httpx.AsyncClient(base_url=capped_service.base_url, timeout=10) as http:
        email, password, _ = await register(http, seen)
        r = await http.post("/auth/api/login", json={"email": email, "password": password})
        assert r.status_code == 200, r.text
        body = r.json()
        seen.add(body["access_token"], body["refresh_token"])
        session_id, started, refresh_expires_at = await session_of(engine, body["refresh_token"])
        assert_capped(body, started + timedelta(seconds=SESSION_TTL), refresh_expires_at)

        # The session is 45 s old: its last refresh gets at most the 15 s left.
        created = datetime.now(UTC) - timedelta(seconds=45)
        async with engine.begin() as conn:
            await conn.execute(
                update(LoginSession).where(LoginSession.id == session_id).values(created_at=created)
            )
        r = await http.post("/auth/api/refresh-token", json={"refresh_token": body["refresh_token"]})
        assert r.status_code == 200, r.text
        body = r.json()
        seen.add(body["access_token"], body["refresh_token"])
        _, _, refresh_expires_at = await session_of(engine, body["refresh_token"])
        assert_capped(body, created + timedelta(seconds=SESSION_TTL), refresh_expires_at)
        assert body["expires_in"] <= 16

        # Past the end, no refresh at all (unchanged).
        async with engine.begin() as conn:
            await conn.execute(
                update(LoginSession)
                .where(LoginSession.id == session_id)
                .values(created_at=datetime.now(UTC) - timedelta(seconds=SESSION_TTL + 1))
            )
        r = await http.post("/auth/api/refresh-token", json={"refresh_token": body["refresh_token"]})
        assert r.status_code == 401 and "log in again" in r.json()["error"]["message"]
