"""The whole document flow as real processes: console and indexer APIs, their consumers and relays, on
their own fresh databases and consumer groups (topics are shared; groups and databases isolate a run).
Databases are provisioned as deployed: migrations as `<service>_owner`, every process as `<service>_app`;
the tests' own queries (`console_rows`, `indexer_rows`) as the superuser."""

from __future__ import annotations

import sys
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from testsupport import HttpService, ServiceProcess, create_service_database, wait_until
from testsupport.kafka import Sent, consumed, publish
from testsupport.tokens import TestTokenIssuer

__all__ = ["Api", "Sent", "Stack", "consumed", "make_api_for", "publish"]

SERVICES = Path(__file__).resolve().parents[2]
RUN = uuid.uuid4().hex[:8]
BIN = Path(sys.executable).parent


def libpq(url: str) -> str:
    return url.replace("postgresql+psycopg://", "postgresql://")


@dataclass
class Stack:
    console: HttpService
    indexer: HttpService
    console_db: str
    indexer_db: str
    console_group: str
    indexer_group: str
    issuer: TestTokenIssuer
    processes: list[ServiceProcess] = field(default_factory=list)

    def console_rows(self, sql: str, *params: Any) -> list[tuple[Any, ...]]:
        with psycopg.connect(self.console_db) as conn:
            return conn.execute(sql, params).fetchall()

    def indexer_rows(self, sql: str, *params: Any) -> list[tuple[Any, ...]]:
        with psycopg.connect(self.indexer_db) as conn:
            return conn.execute(sql, params).fetchall()


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    logs = tmp_path_factory.mktemp("console-logs")
    issuer = TestTokenIssuer().start()
    console_db = create_service_database(f"console_test_{RUN}", "console")
    indexer_db = create_service_database(f"indexer_test_{RUN}", "indexer")
    console_db.migrate(SERVICES / "console" / "alembic.ini")
    indexer_db.migrate(SERVICES / "indexer" / "alembic.ini")
    console_url, indexer_url = console_db.app_url, indexer_db.app_url
    console_group, indexer_group = f"console-test-{RUN}", f"indexer-test-{RUN}"
    common = {**issuer.env(), "OUTBOX_CONSUMER_SESSION_TIMEOUT_MS": "6000"}
    console_env = {**common, "CONSOLE_DATABASE_URL": console_url, "CONSOLE_CONSUMER_NAME": console_group}
    indexer_env = {**common, "INDEXER_DATABASE_URL": indexer_url, "INDEXER_CONSUMER_NAME": indexer_group}
    console_env["CONSOLE_MAX_BODY_BYTES"] = "300000"
    console_env["OUTBOX_MAX_EVENT_BYTES"] = "100000"  # below the body limit: test_errors shows the 413
    processes: list[ServiceProcess] = []
    try:
        console = HttpService("console-api", "console.main:create_app", env=console_env, log_dir=logs).start()
        processes.append(console)
        indexer = HttpService("indexer-api", "indexer.main:create_app", env=indexer_env, log_dir=logs).start()
        processes.append(indexer)
        for name, argv, env in (
            ("console-consumer", [sys.executable, "-m", "console.consumer"], console_env),
            ("indexer-consumer", [sys.executable, "-m", "indexer.consumer"], indexer_env),
            (
                "console-relay",
                [str(BIN / "outbox"), "relay", "--database-url", console_url, "--name", "console"],
                {},
            ),
            (
                "indexer-relay",
                [str(BIN / "outbox"), "relay", "--database-url", indexer_url, "--name", "indexer"],
                {},
            ),
        ):
            processes.append(ServiceProcess(name, argv, env=env, log_dir=logs).start())
        yield Stack(
            console=console,
            indexer=indexer,
            console_db=libpq(console_db.admin_url),
            indexer_db=libpq(indexer_db.admin_url),
            console_group=console_group,
            indexer_group=indexer_group,
            issuer=issuer,
            processes=processes,
        )
    finally:
        for process in reversed(processes):
            process.terminate()
        issuer.stop()


class Api:
    """One account's HTTP clients for console and indexer."""

    def __init__(self, stack: Stack, account_id: uuid.UUID, token: str) -> None:
        self.account_id = account_id
        headers = {"Authorization": f"Bearer {token}"}
        self.console = httpx.AsyncClient(base_url=stack.console.base_url, headers=headers, timeout=30)
        self.indexer = httpx.AsyncClient(base_url=stack.indexer.base_url, headers=headers, timeout=30)

    async def aclose(self) -> None:
        await self.console.aclose()
        await self.indexer.aclose()

    async def create_dataset(self, name: str | None = None) -> dict[str, Any]:
        r = await self.console.post(
            "/console/api/datasets", json={"name": name or f"ds-{uuid.uuid4().hex[:8]}"}
        )
        assert r.status_code == 201, r.text
        return dict(r.json())

    async def create_document(self, dataset_id: str, text: str, **extra: Any) -> dict[str, Any]:
        body = {"name": extra.pop("name", "doc"), "text": text, **extra}
        r = await self.console.post(f"/console/api/datasets/{dataset_id}/documents", json=body)
        assert r.status_code == 201, r.text
        return dict(r.json())

    async def action(self, dataset_id: str, action: str, *document_ids: str) -> httpx.Response:
        return await self.console.patch(
            f"/console/api/datasets/{dataset_id}/documents/status/{action}/batch",
            params=[("document_id", d) for d in document_ids],
        )

    async def document(self, dataset_id: str, document_id: str) -> dict[str, Any]:
        r = await self.console.get(f"/console/api/datasets/{dataset_id}/documents/{document_id}")
        assert r.status_code == 200, r.text
        return dict(r.json())

    async def search(self, dataset_id: str, q: str) -> list[dict[str, Any]]:
        r = await self.indexer.get(
            "/indexer/api/search", params={"dataset_id": dataset_id, "q": q, "limit": 20}
        )
        assert r.status_code == 200, r.text
        return list(r.json()["data"])

    async def indexed(self, document_id: str) -> dict[str, Any] | None:
        r = await self.indexer.get(f"/indexer/api/documents/{document_id}")
        if r.status_code == 404:
            return None
        assert r.status_code == 200, r.text
        return dict(r.json())

    async def settled(self, dataset_id: str, document_id: str, *, timeout: float = 30.0) -> dict[str, Any]:
        """Wait until console's status is final for the document's current version; return the document."""

        async def probe() -> dict[str, Any] | None:
            doc = await self.document(dataset_id, document_id)
            return doc if doc["indexing_status"] in ("completed", "error") else None

        return await wait_until(probe, timeout=timeout, what=f"document {document_id} settled")


def make_api_for(stack: Stack, account_id: uuid.UUID) -> Api:
    """Another client (own connection pool and token) for the same account."""
    return Api(stack, account_id, stack.issuer.token(account_id, email=f"{account_id.hex[:8]}@example.com"))


@pytest.fixture
async def make_api(stack: Stack) -> AsyncIterator[Callable[..., Api]]:
    made: list[Api] = []

    def make(account_id: uuid.UUID | None = None) -> Api:
        api = make_api_for(stack, account_id or uuid.uuid4())
        made.append(api)
        return api

    yield make
    for api in made:
        await api.aclose()


@pytest.fixture
async def api(make_api: Callable[..., Api]) -> Api:
    return make_api()
