"""The security review's auth findings (issue 15), each against real PostgreSQL, Redis and HTTP.

Where a finding is a race, the test forces the interleaving with a hook on the password hasher (a real
Argon2id hasher; the hook only decides *when* the other side runs).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from auth_testkit import (
    KEY_ENCRYPTION_KEY,
    REDIS_URL,
    Secrets,
    VerifierApp,
    fake_address,
    new_login,
    request_reset_code,
    strong_password,
)
from redis.asyncio import Redis
from sqlalchemy import select, text, update
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine

from auth.accounts import service as accounts
from auth.deps import Resources
from auth.email_login.codes import CodeStore
from auth.keys.crypto import CodeHasher, KeyCipher
from auth.keys.service import Keyring
from auth.mail import scrub_once
from auth.models import LoginSession
from auth.passwords import PasswordHasher
from auth.sessions import service as sessions
from auth.settings import Settings
from auth.throttle import Throttle
from contracts.auth import MAIL_TOPIC
from outbox import OutboxWriter, outbox_table
from outbox.kafka import bootstrap_from_env
from outbox.testing import drain_outbox
from servicekit.auth import AuthSettings, RevocationList
from servicekit.db import Database, make_engine
from servicekit.errors import Conflict, ServiceUnavailable, TooManyRequests, Unauthorized
from servicekit.openapi import ErrorResponse
from testsupport import HttpService


@dataclass
class InProcess:
    db: Database
    redis: Redis
    keyring: Keyring
    settings: Settings
    prefix: str

    def resources(self, hasher: PasswordHasher) -> Resources:
        return Resources(
            settings=self.settings,
            redis=self.redis,
            keyring=self.keyring,
            hasher=hasher,
            codes=CodeHasher(KEY_ENCRYPTION_KEY),
            throttle=Throttle(self.redis, self.prefix),
            login_codes=CodeStore(self.redis, self.prefix),
            revocations=RevocationList(self.redis, self.prefix),
        )


@pytest.fixture
async def in_process(database_url: str, redis_prefix: str) -> AsyncIterator[InProcess]:
    db = Database(database_url, OutboxWriter(source="auth"))
    redis = Redis.from_url(REDIS_URL)
    keyring = Keyring(db.sessions, KeyCipher(KEY_ENCRYPTION_KEY), cache_seconds=1)
    await keyring.start()
    settings = Settings(environment="local", database_url=database_url, register_max_per_address=2)
    yield InProcess(db, redis, keyring, settings, f"{redis_prefix}sec-{uuid.uuid4().hex[:6]}:")
    await redis.aclose()
    await db.dispose()


def hasher() -> PasswordHasher:
    return PasswordHasher(time_cost=2, memory_cost_kib=19456, parallelism=1, concurrency=2)


async def test_a_login_racing_a_password_reset_does_not_survive_it(
    http: httpx.AsyncClient, in_process: InProcess, engine: AsyncEngine, seen: Secrets
) -> None:
    """Finding 3. The login verifies the old password; the reset commits (new hash, every session revoked)
    before the login inserts its session. Before: the login's new session survived the reset. Now the login
    re-reads the hash under a row lock and refuses."""
    user = await new_login(http, seen)
    racing = hasher()
    verify = racing.verify

    async def verify_then_reset(password_hash: str | None, password: str) -> bool:
        ok = await verify(password_hash, password)
        code = await request_reset_code(http, engine, user.email, user.account_id)
        new_password = strong_password()
        seen.add(code, new_password)
        r = await http.post(
            "/auth/api/reset-password/confirm",
            json={"email": user.email, "code": code, "new_password": new_password},
        )
        assert r.status_code == 204, r.text
        return ok

    racing.verify = verify_then_reset  # type: ignore[method-assign]
    with pytest.raises(Unauthorized):
        async with in_process.db.unit_of_work() as uow:
            await sessions.login(
                uow,
                in_process.resources(racing),
                email=user.email,
                password=user.password,
                client_address=fake_address(),
            )
    async with engine.connect() as conn:
        live = (
            await conn.execute(
                select(LoginSession.id).where(
                    LoginSession.account_id == uuid.UUID(user.account_id), LoginSession.revoked_at.is_(None)
                )
            )
        ).all()
    assert live == []


async def test_the_reset_code_travels_only_on_the_mail_topic_and_is_scrubbed_once_published(
    http: httpx.AsyncClient, engine: AsyncEngine, in_process: InProcess, seen: Secrets
) -> None:
    """Finding 4. Before: the raw code rode `auth.account` (which console consumes) and stayed in the outbox
    for the retention period. Now it rides `auth.mail` only, and is removed from the row once relayed."""
    user = await new_login(http, seen)
    code = await request_reset_code(http, engine, user.email, user.account_id)
    seen.add(code)
    async with engine.connect() as conn:
        rows = (
            await conn.execute(
                select(outbox_table.c.topic, outbox_table.c.payload).where(
                    outbox_table.c.aggregate_id == user.account_id
                )
            )
        ).all()
    assert [r.topic for r in rows if code in str(r.payload)] == [MAIL_TOPIC]

    await drain_outbox(engine, bootstrap_from_env())  # the real relay publishes it to the real broker
    await scrub_once(in_process.db)
    async with engine.connect() as conn:
        payloads = (
            await conn.execute(
                select(outbox_table.c.payload, outbox_table.c.published_at).where(
                    outbox_table.c.aggregate_id == user.account_id, outbox_table.c.topic == MAIL_TOPIC
                )
            )
        ).all()
    assert payloads and all(p.published_at is not None and "code" not in p.payload for p in payloads)


async def test_a_dead_mail_row_loses_its_code_and_a_pending_one_keeps_it(
    http: httpx.AsyncClient, engine: AsyncEngine, in_process: InProcess, seen: Secrets
) -> None:
    """Security review, finding 8. Before: only published rows were scrubbed, so a row the relay gave up on
    (`dead_at`) kept its one-time code for the dead-row retention (30 days). Now a dead row loses it too;
    a row still waiting for the relay keeps it (the mail has not gone out yet)."""
    user = await new_login(http, seen)
    dead_code = await request_reset_code(http, engine, user.email, user.account_id)
    async with engine.begin() as conn:
        await conn.execute(
            update(outbox_table)
            .where(outbox_table.c.aggregate_id == user.account_id, outbox_table.c.topic == MAIL_TOPIC)
            .values(dead_at=datetime.now(UTC), attempts=10, last_error="broker refused the record")
        )
    pending_code = await request_reset_code(http, engine, user.email, user.account_id)
    seen.add(dead_code, pending_code)

    assert await scrub_once(in_process.db) >= 1
    async with engine.connect() as conn:
        rows = (
            await conn.execute(
                select(outbox_table.c.payload, outbox_table.c.dead_at).where(
                    outbox_table.c.aggregate_id == user.account_id, outbox_table.c.topic == MAIL_TOPIC
                )
            )
        ).all()
    dead = [r.payload for r in rows if r.dead_at is not None]
    pending = [r.payload for r in rows if r.dead_at is None]
    assert len(dead) == 1 and "code" not in dead[0] and dead_code not in str(dead[0])
    assert [p["code"] for p in pending] == [pending_code]


async def test_registration_is_throttled_per_address_and_hashes_before_the_lookup(
    in_process: InProcess,
) -> None:
    """Finding 6. Before: unlimited, and a taken email answered 409 before any hashing (a timing oracle)."""
    counting = hasher()
    hashed = 0
    real_hash = counting.hash

    async def count_hash(password: str) -> str:
        nonlocal hashed
        hashed += 1
        return await real_hash(password)

    counting.hash = count_hash  # type: ignore[method-assign]
    resources = in_process.resources(counting)  # one throttle (the same prefix) for every call
    address = fake_address()
    email = f"taken-{uuid.uuid4().hex[:8]}@example.test"
    async with in_process.db.unit_of_work() as uow:
        await accounts.register(
            uow, resources, email=email, password=strong_password(), name="A", client_address=address
        )
    with pytest.raises(Conflict):
        async with in_process.db.unit_of_work() as uow:
            await accounts.register(
                uow, resources, email=email, password=strong_password(), name="B", client_address=address
            )
    assert hashed == 2  # the taken email cost a hash too
    with pytest.raises(TooManyRequests):  # register_max_per_address=2 here
        async with in_process.db.unit_of_work() as uow:
            await accounts.register(
                uow,
                resources,
                email=f"x-{email}",
                password=strong_password(),
                name="C",
                client_address=address,
            )


async def test_the_hash_queue_is_bounded_and_answers_503() -> None:
    """Finding 6. Before: an unbounded queue, so a registration flood slowed every login."""
    bounded = PasswordHasher(time_cost=2, memory_cost_kib=19456, parallelism=1, concurrency=1, queue_limit=3)
    results = await asyncio.gather(
        *(bounded.hash(strong_password()) for _ in range(8)), return_exceptions=True
    )
    refused = [r for r in results if isinstance(r, ServiceUnavailable)]
    assert len(refused) == 5 and all(r.headers["Retry-After"] == "1" for r in refused)
    assert all(isinstance(r, str) and r.startswith("$argon2id$") for r in results if r not in refused)


async def test_me_is_never_cached(http: httpx.AsyncClient, seen: Secrets) -> None:
    user = await new_login(http, seen)
    r = await http.get("/auth/api/me", headers=user.bearer)
    assert r.status_code == 200 and r.headers["Cache-Control"] == "no-store"


@pytest.mark.parametrize("name", ["Eve\r\nBcc: victim@example.com", "Eve\nX", "Eve\x00"])
async def test_names_with_control_characters_are_refused(http: httpx.AsyncClient, name: str) -> None:
    r = await http.post(
        "/auth/api/register",
        json={
            "email": f"crlf-{uuid.uuid4().hex[:8]}@example.test",
            "password": strong_password(),
            "name": name,
        },
    )
    assert r.status_code == 422 and r.json()["error"]["code"] == "validation_error"


async def test_a_session_cannot_be_refreshed_past_its_absolute_lifetime(
    http: httpx.AsyncClient, engine: AsyncEngine, seen: Secrets
) -> None:
    """Finding 8: before, the refresh lifetime slid forever."""
    user = await new_login(http, seen)
    async with engine.begin() as conn:
        await conn.execute(
            update(LoginSession)
            .where(LoginSession.account_id == uuid.UUID(user.account_id))
            .values(created_at=datetime.now(UTC) - timedelta(days=31))
        )
    r = await http.post("/auth/api/refresh-token", json={"refresh_token": user.refresh_token})
    assert r.status_code == 401 and "log in again" in r.json()["error"]["message"]


async def test_sql_errors_never_carry_parameter_values(database_url: str) -> None:
    """Finding 8: before, a failing statement's error (and so the log line) carried its parameters, e.g. a
    password hash on register."""
    engine = make_engine(database_url, pool_size=1)
    secret = "$argon2id$v=19$m=65536,t=3,p=4$secret-looking-hash"
    try:
        with pytest.raises(DBAPIError) as failure:
            async with engine.connect() as conn:
                await conn.execute(text("SELECT CAST(:value AS text), 1 / 0"), {"value": secret})
    finally:
        await engine.dispose()
    assert secret not in str(failure.value) and "parameters hidden" in str(failure.value)


async def test_a_hung_redis_fails_verification_closed_within_the_timeout(
    auth_service: HttpService, http: httpx.AsyncClient, seen: Secrets
) -> None:
    """Finding 8: before, Redis clients had no timeouts, so a Redis that accepts connections but never
    answers hung every authenticated request. Now the verifier answers 503 within its timeout."""
    user = await new_login(http, seen)

    async def swallow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(-1)  # accept, read, never answer

    hung = await asyncio.start_server(swallow, "127.0.0.1", 0)
    port = hung.sockets[0].getsockname()[1]
    app = VerifierApp(
        AuthSettings(
            jwks_url=f"{auth_service.base_url}/auth/.well-known/jwks.json",
            redis_url=f"redis://127.0.0.1:{port}/0",
            redis_timeout_seconds=1.0,
        )
    )
    await app.start()
    try:
        async with httpx.AsyncClient(base_url=app.base_url, timeout=15) as client:
            started = asyncio.get_running_loop().time()
            r = await client.get("/whoami", headers=user.bearer)
            elapsed = asyncio.get_running_loop().time() - started
        assert r.status_code == 503 and r.json()["error"]["code"] == "unavailable", r.text
        # The configured 1 s bounds it (before: redis-py's own 5 s connect bound, or forever once connected).
        assert elapsed < 4
    finally:
        await app.stop()
        hung.close()


async def test_every_error_answer_is_documented_in_the_openapi_document(
    http: httpx.AsyncClient, seen: Secrets
) -> None:
    """Issue 13: each status auth answers is in its OpenAPI document, in the real error shape."""
    spec = (await http.get("/openapi.json")).json()
    user = await new_login(http, seen)
    address = {"X-Forwarded-For": fake_address()}
    wrong = {"email": user.email, "password": "Wrong-pass-123"}
    # At once, then one more: the test's login window is 2 s, and six Argon2 checks one after the other take
    # longer than that on a loaded 2-core host, so the failures would expire before the limit (no 429).
    failed = await asyncio.gather(
        *(http.post("/auth/api/login", json=wrong, headers=address) for _ in range(6))
    )
    login_answers = [*failed, await http.post("/auth/api/login", json=wrong, headers=address)]
    code_body = {"email": user.email, "code": "00000000", "new_password": strong_password()}
    answers = [
        (
            "post",
            "/auth/api/register",
            await http.post(
                "/auth/api/register", json={"email": user.email, "password": strong_password(), "name": "D"}
            ),
        ),
        ("post", "/auth/api/register", await http.post("/auth/api/register", json={"email": "not an email"})),
        ("post", "/auth/api/login", login_answers[0]),
        ("post", "/auth/api/login", login_answers[-1]),
        (
            "post",
            "/auth/api/refresh-token",
            await http.post("/auth/api/refresh-token", json={"refresh_token": "x" * 43}),
        ),
        ("get", "/auth/api/me", await http.get("/auth/api/me")),
        (
            "post",
            "/auth/api/reset-password/confirm",
            await http.post("/auth/api/reset-password/confirm", json=code_body),
        ),
    ]
    assert sorted({r.status_code for _, _, r in answers}) == [400, 401, 409, 422, 429]
    for method, path, response in answers:
        documented = spec["paths"][path][method]["responses"]
        assert str(response.status_code) in documented, (method, path, response.status_code)
        ErrorResponse.model_validate(response.json())
