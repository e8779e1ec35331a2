"""The indexer as real processes (API, consumer, relay) on a fresh database and consumer group; console's
events are published by hand, so every case (stale, duplicate, reordered) is under the test's control.
The processes connect as `indexer_app` (migrations ran as `indexer_owner`); `rows` queries as the superuser."""

from __future__ import annotations

import json
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from testsupport import HttpService, ServiceProcess, create_service_database
from testsupport.kafka import Sent, consumed, publish
from testsupport.tokens import TestTokenIssuer

__all__ = ["Doc", "Indexer", "Sent", "consumed"]

SERVICE = Path(__file__).resolve().parents[1]
RUN = uuid.uuid4().hex[:8]
BIN = Path(sys.executable).parent


@dataclass
class Indexer:
    api: HttpService
    db: str
    group: str
    issuer: TestTokenIssuer

    def rows(self, sql: str, *params: Any) -> list[tuple[Any, ...]]:
        with psycopg.connect(self.db) as conn:
            return conn.execute(sql, params).fetchall()

    def reports(self, document_id: str) -> list[tuple[str, int, dict[str, Any]]]:
        rows = self.rows(
            "SELECT event_type, aggregate_version, payload FROM outbox WHERE aggregate_id = %s ORDER BY id",
            document_id,
        )
        return [(t, v, p if isinstance(p, dict) else json.loads(p)) for t, v, p in rows]


@pytest.fixture(scope="session")
def indexer(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Indexer]:
    logs = tmp_path_factory.mktemp("indexer-logs")
    issuer = TestTokenIssuer().start()
    database = create_service_database(f"indexer_unit_{RUN}", "indexer")
    database.migrate(SERVICE / "alembic.ini")
    url = database.app_url
    group = f"indexer-unit-{RUN}"
    env = {
        **issuer.env(),
        "INDEXER_DATABASE_URL": url,
        "INDEXER_CONSUMER_NAME": group,
        "OUTBOX_CONSUMER_SESSION_TIMEOUT_MS": "6000",
    }
    processes: list[ServiceProcess] = []
    try:
        api = HttpService("indexer-api", "indexer.main:create_app", env=env, log_dir=logs).start()
        processes.append(api)
        processes.append(
            ServiceProcess(
                "indexer-consumer", [sys.executable, "-m", "indexer.consumer"], env=env, log_dir=logs
            ).start()
        )
        relay = [str(BIN / "outbox"), "relay", "--database-url", url, "--name", "indexer"]
        processes.append(ServiceProcess("indexer-relay", relay, env={}, log_dir=logs).start())
        yield Indexer(
            api=api,
            db=database.admin_url.replace("postgresql+psycopg://", "postgresql://"),
            group=group,
            issuer=issuer,
        )
    finally:
        for process in reversed(processes):
            process.terminate()
        issuer.stop()


@dataclass
class Doc:
    """A console document as its events describe it; `send` publishes the next version by hand."""

    owner: uuid.UUID
    id: uuid.UUID = field(default_factory=uuid.uuid4)
    dataset_id: uuid.UUID = field(default_factory=uuid.uuid4)
    workspace_id: uuid.UUID = field(default_factory=uuid.uuid4)
    name: str = "doc"
    text: str = ""
    enabled: bool = True
    archived: bool = False
    version: int = 0

    def state(self, *, deleted: bool = False) -> dict[str, Any]:
        return {
            "document_id": str(self.id),
            "dataset_id": str(self.dataset_id),
            "workspace_id": str(self.workspace_id),
            "owner_account_id": str(self.owner),
            "name": self.name,
            "text": "" if deleted else self.text,
            "enabled": self.enabled,
            "archived": self.archived,
            "deleted": deleted,
            "version": self.version,
            "unknown_future_field": "ignored",
        }

    async def send(self, verb: str, *, event_id: uuid.UUID | None = None, **changes: Any) -> Sent:
        for name, value in changes.items():
            setattr(self, name, value)
        self.version += 1
        return await self.publish_state(verb, self.version, self.state(deleted=verb == "deleted"), event_id)

    async def publish_state(
        self, verb: str, version: int, state: dict[str, Any], event_id: uuid.UUID | None = None
    ) -> Sent:
        return await publish(
            "console.document",
            f"console.document.{verb}",
            str(self.id),
            {**state, "version": version},
            version=version,
            event_id=event_id,
            source="console",
        )


class Client:
    def __init__(self, indexer: Indexer, account: uuid.UUID) -> None:
        self.account = account
        self.http = httpx.AsyncClient(
            base_url=indexer.api.base_url,
            headers={"Authorization": f"Bearer {indexer.issuer.token(account)}"},
        )

    async def search(self, dataset_id: uuid.UUID, q: str, limit: int = 10) -> list[dict[str, Any]]:
        r = await self.http.get(
            "/indexer/api/search", params={"dataset_id": str(dataset_id), "q": q, "limit": limit}
        )
        assert r.status_code == 200, r.text
        return list(r.json()["data"])

    async def document(self, document_id: uuid.UUID) -> dict[str, Any] | None:
        r = await self.http.get(f"/indexer/api/documents/{document_id}")
        if r.status_code == 404:
            return None
        assert r.status_code == 200, r.text
        return dict(r.json())


@pytest.fixture
async def client(indexer: Indexer) -> AsyncIterator[Client]:
    c = Client(indexer, uuid.uuid4())
    yield c
    await c.http.aclose()
