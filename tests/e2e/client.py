"""HTTP clients of the running system, as a user sees it: register and log in at auth, then use console
and the indexer with the access token auth issued."""

from __future__ import annotations

import secrets
import uuid
from dataclasses import dataclass
from typing import Any

import httpx

from tests.e2e.system import System
from testsupport import wait_until

DOCUMENTS = "/console/api/datasets/{ds}/documents"


@dataclass
class Credentials:
    email: str
    password: str
    name: str


def new_credentials(label: str = "user") -> Credentials:
    return Credentials(f"{label}-{uuid.uuid4().hex[:8]}@example.com", f"Pw-{secrets.token_hex(8)}!", label)


async def register(system: System, who: Credentials) -> dict[str, Any]:
    async with httpx.AsyncClient(base_url=system.url("auth"), timeout=30) as http:
        r = await http.post(
            "/auth/api/register", json={"email": who.email, "password": who.password, "name": who.name}
        )
    assert r.status_code == 201, r.text
    return dict(r.json())


async def login(system: System, who: Credentials) -> str:
    async with httpx.AsyncClient(base_url=system.url("auth"), timeout=30) as http:
        r = await http.post("/auth/api/login", json={"email": who.email, "password": who.password})
    assert r.status_code == 200, r.text
    return str(r.json()["access_token"])


class User:
    """One logged-in user's console and indexer clients."""

    def __init__(self, system: System, token: str, *, timeout: float = 30.0) -> None:
        headers = {"Authorization": f"Bearer {token}"}
        self.console = httpx.AsyncClient(base_url=system.url("console"), headers=headers, timeout=timeout)
        self.indexer = httpx.AsyncClient(base_url=system.url("indexer"), headers=headers, timeout=timeout)

    @classmethod
    async def signed_up(cls, system: System, label: str = "user") -> User:
        who = new_credentials(label)
        await register(system, who)
        return cls(system, await login(system, who))

    async def aclose(self) -> None:
        await self.console.aclose()
        await self.indexer.aclose()

    async def create_dataset(self) -> str:
        r = await self.console.post("/console/api/datasets", json={"name": f"ds-{uuid.uuid4().hex[:8]}"})
        assert r.status_code == 201, r.text
        return str(r.json()["id"])

    async def create_document(self, ds: str, text: str, *, enabled: bool = True) -> dict[str, Any]:
        body = {"name": f"doc-{uuid.uuid4().hex[:6]}", "text": text, "enabled": enabled}
        r = await self.console.post(DOCUMENTS.format(ds=ds), json=body)
        assert r.status_code == 201, r.text
        return dict(r.json())

    async def action(
        self, ds: str, action: str, *ids: str, headers: dict[str, str] | None = None
    ) -> httpx.Response:
        return await self.console.patch(
            DOCUMENTS.format(ds=ds) + f"/status/{action}/batch",
            params=[("document_id", i) for i in ids],
            headers=headers,
        )

    async def document(self, ds: str, doc: str) -> dict[str, Any]:
        r = await self.console.get(DOCUMENTS.format(ds=ds) + f"/{doc}")
        assert r.status_code == 200, r.text
        return dict(r.json())

    async def search(self, ds: str, q: str) -> list[str]:
        r = await self.indexer.get("/indexer/api/search", params={"dataset_id": ds, "q": q, "limit": 50})
        assert r.status_code == 200, r.text
        return [str(hit["document_id"]) for hit in r.json()["data"]]

    async def indexed(self, doc: str) -> dict[str, Any] | None:
        """What the indexer serves for the document; None when it is not (or no longer) indexed."""
        r = await self.indexer.get(f"/indexer/api/documents/{doc}")
        if r.status_code == 404:
            return None
        assert r.status_code == 200, r.text
        return dict(r.json())

    async def settled(self, ds: str, doc: str, version: int, timeout: float = 30.0) -> dict[str, Any]:
        """Console's view once indexing of `version` is final (completed or error)."""

        async def probe() -> dict[str, Any] | None:
            d = await self.document(ds, doc)
            return d if d["version"] == version and d["indexing_status"] in ("completed", "error") else None

        return await wait_until(probe, timeout=timeout, what=f"document {doc} v{version} settled")
