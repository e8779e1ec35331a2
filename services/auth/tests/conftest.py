"""Fixtures on real infrastructure: a fresh `auth_svc_test_<run>` database provisioned as deployed (migrations
as `auth_owner`, auth itself as `auth_app`: servicekit.pgroles), a Redis key prefix of our own (deleted at the
end), auth served by uvicorn in its own process, and the verifier app."""

from __future__ import annotations

import os
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
import redis
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker

sys.path.insert(0, str(Path(__file__).parent))  # auth_testkit, with --import-mode=importlib

from auth_testkit import (
    KEY_ENCRYPTION_KEY,
    LOGIN_WINDOW_SECONDS,
    MAX_FAILURES_PER_ACCOUNT,
    MAX_FAILURES_PER_ADDRESS,
    REDIS_URL,
    REFRESH_REUSE_GRACE_SECONDS,
    RESET_MAX_ATTEMPTS_PER_ACCOUNT,
    Forger,
    Secrets,
    VerifierApp,
)

from auth.keys import repository as signing_keys
from auth.keys.crypto import KeyCipher
from servicekit.auth import AuthSettings
from servicekit.db import make_engine
from testsupport import HttpService, ServiceDatabase, create_service_database

AUTH_DIR = Path(__file__).resolve().parents[1]
TEST_DATABASE = f"auth_svc_test_{os.environ['TEST_RUN_ID']}"


@pytest.fixture(scope="session")
def database() -> ServiceDatabase:
    db = create_service_database(TEST_DATABASE, "auth")
    db.migrate(AUTH_DIR / "alembic.ini")
    return db


@pytest.fixture(scope="session")
def database_url(database: ServiceDatabase) -> str:
    """What auth connects with: the app role's URL."""
    return database.app_url


@pytest.fixture(scope="session")
def redis_prefix() -> Iterator[str]:
    prefix = f"authtest-{uuid.uuid4().hex[:8]}:"
    yield prefix
    client = redis.Redis.from_url(REDIS_URL)
    keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
    if keys:
        client.delete(*keys)
    client.close()


@pytest.fixture(scope="session")
def auth_env(database_url: str, redis_prefix: str) -> dict[str, str]:
    return {
        "AUTH_ENVIRONMENT": "test",
        "AUTH_LOG_LEVEL": "DEBUG",
        "AUTH_DATABASE_URL": database_url,
        "AUTH_REDIS_URL": REDIS_URL,
        "AUTH_REDIS_PREFIX": redis_prefix,
        "AUTH_KEY_ENCRYPTION_KEY": KEY_ENCRYPTION_KEY,
        "AUTH_KEY_CACHE_SECONDS": "1",
        "AUTH_ACCESS_TOKEN_TTL_SECONDS": "60",
        "AUTH_LOGIN_WINDOW_SECONDS": str(LOGIN_WINDOW_SECONDS),
        "AUTH_LOGIN_MAX_FAILURES_PER_ADDRESS": str(MAX_FAILURES_PER_ADDRESS),
        "AUTH_LOGIN_MAX_FAILURES_PER_ACCOUNT": str(MAX_FAILURES_PER_ACCOUNT),
        "AUTH_RESET_MAX_ATTEMPTS_PER_ACCOUNT": str(RESET_MAX_ATTEMPTS_PER_ACCOUNT),
        "AUTH_REFRESH_REUSE_GRACE_SECONDS": str(REFRESH_REUSE_GRACE_SECONDS),
        # The suite registers hundreds of accounts from one address; test_security sets its own limits.
        "AUTH_REGISTER_MAX_PER_ADDRESS": "100000",
        "AUTH_RESET_MAX_REQUESTS_PER_ADDRESS": "100000",
        # Cheaper Argon2id keeps the suite quick; the parameters are still Argon2id's, from settings.
        "AUTH_ARGON2_MEMORY_COST_KIB": "19456",
        "AUTH_ARGON2_TIME_COST": "2",
        "AUTH_ARGON2_PARALLELISM": "1",
    }


@pytest.fixture(scope="session")
def auth_service(auth_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[HttpService]:
    service = HttpService(
        "auth", "auth.main:create_app", env=auth_env, log_dir=tmp_path_factory.mktemp("auth")
    )
    service.start()
    yield service
    service.terminate()


@pytest.fixture(scope="session")
async def http(auth_service: HttpService) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=auth_service.base_url, timeout=10) as client:
        yield client


@pytest.fixture(scope="session")
async def verifier_app(auth_service: HttpService, redis_prefix: str) -> AsyncIterator[VerifierApp]:
    app = VerifierApp(
        AuthSettings(
            jwks_url=f"{auth_service.base_url}/auth/.well-known/jwks.json",
            redis_url=REDIS_URL,
            redis_prefix=redis_prefix,
            jwks_min_refetch_seconds=1.0,
        )
    )
    await app.start()
    yield app
    await app.stop()


@pytest.fixture(scope="session")
async def verifier(verifier_app: VerifierApp) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=verifier_app.base_url, timeout=10) as client:
        yield client


@pytest.fixture(scope="session")
def seen() -> Secrets:
    return Secrets()


@pytest.fixture(scope="session")
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    engine = make_engine(database_url, pool_size=2)
    yield engine
    await engine.dispose()


@pytest.fixture
async def forger(engine: AsyncEngine, auth_service: HttpService) -> Forger:
    """The active signing key as auth stored it, decrypted with the test's key-encryption key."""
    async with async_sessionmaker(engine)() as session:
        row = await signing_keys.active(session)
    assert row is not None
    return Forger(row.kid, KeyCipher(KEY_ENCRYPTION_KEY).decrypt(row.kid, row.private_key_ciphertext))
