"""Fixtures for the library's tests: a real PostgreSQL database and the real broker, nothing mocked."""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine

from outbox import IdempotentConsumer, OutboxWriter, create_tables
from outbox.kafka import bootstrap_from_env
from outbox.testing import EFFECTS_DDL
from testsupport import recreate_database

DB_NAME = os.environ.get("OUTBOX_TEST_DB", f"outbox_lib_test_{os.environ['TEST_RUN_ID']}")


@pytest.fixture(scope="session")
def database_url() -> str:
    url = recreate_database(DB_NAME)
    return url


@pytest.fixture(scope="session")
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    engine = create_async_engine(database_url, pool_size=10)
    async with engine.begin() as conn:
        await conn.run_sync(create_tables)
        await conn.execute(text(EFFECTS_DDL))
    yield engine
    await engine.dispose()


@pytest.fixture
async def clean(engine: AsyncEngine) -> None:
    """Every test starts from empty tables (they share one database)."""
    async with engine.begin() as conn:
        await conn.execute(
            text(
                "TRUNCATE outbox, outbox_heads, inbox, consumer_versions, inbox_parked, effects RESTART IDENTITY"
            )
        )


@pytest.fixture
def sessions(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, expire_on_commit=False)


@pytest.fixture
def writer() -> OutboxWriter:
    return OutboxWriter(source="test")


@pytest.fixture
def topic() -> str:
    return f"test.{uuid.uuid4().hex[:12]}"


@pytest.fixture
def bootstrap() -> str:
    return bootstrap_from_env()


@pytest.fixture
def log_dir(tmp_path: Path) -> Path:
    return tmp_path / "logs"


@pytest.fixture
async def run_consumer(
    sessions: async_sessionmaker[AsyncSession],
) -> AsyncIterator[Callable[[IdempotentConsumer], None]]:
    """Start consumers as tasks; stopped (batch in hand finished) and awaited after the test."""
    tasks: list[tuple[IdempotentConsumer, asyncio.Task[None]]] = []

    def start(consumer: IdempotentConsumer) -> None:
        tasks.append((consumer, asyncio.create_task(consumer.run())))

    yield start
    for consumer, _task in tasks:
        consumer.stop()
    for _, task in tasks:
        await asyncio.wait_for(task, 30)
