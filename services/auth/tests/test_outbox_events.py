"""`auth.account.registered` is written to auth's outbox in the registering transaction, and only then."""

from __future__ import annotations

import asyncio
import uuid

import httpx
import pytest
from auth_testkit import REDIS_URL, Secrets, register, strong_password, unique_email
from redis.asyncio import Redis
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from auth.accounts import service as accounts
from auth.deps import Resources
from auth.email_login.codes import CodeStore
from auth.keys.crypto import CodeHasher, KeyCipher
from auth.keys.service import Keyring
from auth.models import Account
from auth.passwords import PasswordHasher
from auth.settings import Settings
from auth.throttle import Throttle
from outbox import OutboxWriter, outbox_table
from servicekit.auth import RevocationList
from servicekit.db import Database


async def registered_events(engine: AsyncEngine, email: str) -> list[dict[str, object]]:
    async with engine.connect() as conn:
        rows = await conn.execute(
            select(outbox_table).where(
                outbox_table.c.event_type == "auth.account.registered",
                outbox_table.c.payload["email"].astext == email,
            )
        )
        return [dict(r._mapping) for r in rows]


async def test_registration_writes_the_event_to_the_outbox(
    http: httpx.AsyncClient, engine: AsyncEngine, seen: Secrets
) -> None:
    email, _, account_id = await register(http, seen)
    [row] = await registered_events(engine, email)
    assert row["topic"] == "auth.account" and row["source"] == "auth"
    assert row["aggregate_id"] == account_id and row["aggregate_version"] == 1
    assert row["payload"] == {"account_id": account_id, "email": email, "name": "Test User", "version": 1}


async def test_duplicate_email_rolls_back_and_leaves_a_single_event(
    http: httpx.AsyncClient, engine: AsyncEngine, seen: Secrets
) -> None:
    email, _, _ = await register(http, seen)
    r = await http.post(
        "/auth/api/register", json={"email": email, "password": strong_password(), "name": "Dup"}
    )
    assert r.status_code == 409
    assert len(await registered_events(engine, email)) == 1


async def test_rolled_back_transaction_leaves_neither_account_nor_event(
    database_url: str, engine: AsyncEngine
) -> None:
    db = Database(database_url, OutboxWriter(source="auth"), pool_size=1)
    hasher = PasswordHasher(time_cost=1, memory_cost_kib=8192, parallelism=1, concurrency=1)
    redis = Redis.from_url(REDIS_URL)
    prefix = f"test-{uuid.uuid4().hex[:8]}:"
    settings = Settings(environment="local", database_url=database_url)
    secret = "k" * 32
    resources = Resources(
        settings=settings,
        redis=redis,
        keyring=Keyring(db.sessions, KeyCipher(secret), cache_seconds=1),  # never started: unused here
        hasher=hasher,
        codes=CodeHasher(secret),
        throttle=Throttle(redis, prefix),
        login_codes=CodeStore(redis, prefix),
        revocations=RevocationList(redis, prefix),
    )
    email = unique_email("rollback")
    try:
        with pytest.raises(RuntimeError, match="after the write"):
            async with db.unit_of_work() as uow:
                await accounts.register(
                    uow,
                    resources,
                    email=email,
                    password=strong_password(),
                    name="R",
                    client_address="10.0.0.1",
                )
                await uow.flush_events()  # the event row exists inside the transaction...
                raise RuntimeError("crash after the write")
    finally:
        await db.dispose()
        await redis.aclose()
    # ...and vanished with it, like the account.
    assert await registered_events(engine, email) == []
    async with engine.connect() as conn:
        count = await conn.scalar(select(func.count()).select_from(Account).where(Account.email == email))
    assert count == 0


async def test_concurrent_duplicate_registrations_create_one_account_and_one_event(
    http: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    email = unique_email("race")
    body = {"email": email, "password": f"Race-{uuid.uuid4().hex[:8]}-9", "name": "Race"}
    results = await asyncio.gather(*(http.post("/auth/api/register", json=body) for _ in range(4)))
    assert sorted(r.status_code for r in results) == [201, 409, 409, 409]
    assert len(await registered_events(engine, email)) == 1
