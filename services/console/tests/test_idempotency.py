"""Idempotency-Key: a retried request replays the first response, with one change and one event."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from datetime import timedelta

from sqlalchemy.ext.asyncio import AsyncSession

from servicekit.db import make_engine
from servicekit.idempotency import purge_expired

from .conftest import Api, Stack


def document_events(stack: Stack, dataset_id: str) -> list[tuple[str, int]]:
    return [
        (t, v)
        for t, v in stack.console_rows(
            "SELECT event_type, aggregate_version FROM outbox WHERE payload->>'dataset_id' = %s ORDER BY id",
            dataset_id,
        )
    ]


async def test_replay_returns_the_first_response_with_one_change_and_one_event(
    stack: Stack, api: Api
) -> None:
    ds = (await api.create_dataset())["id"]
    key = {"Idempotency-Key": str(uuid.uuid4())}
    body = {"name": "once", "text": "only once"}
    first = await api.console.post(f"/console/api/datasets/{ds}/documents", json=body, headers=key)
    again = await api.console.post(f"/console/api/datasets/{ds}/documents", json=body, headers=key)
    assert (first.status_code, again.status_code) == (201, 201)
    assert again.json() == first.json() and again.headers.get("Idempotent-Replayed") == "true"
    assert (await api.console.get(f"/console/api/datasets/{ds}/documents")).json()["total"] == 1
    assert document_events(stack, ds) == [("console.document.created", 1)]

    doc = first.json()["id"]
    toggle = {"Idempotency-Key": str(uuid.uuid4())}
    for _ in range(3):
        r = await api.console.patch(
            f"/console/api/datasets/{ds}/documents/status/disable/batch",
            params={"document_id": doc},
            headers=toggle,
        )
        assert r.status_code == 200 and r.json()["data"][0]["version"] == 2
    assert document_events(stack, ds) == [("console.document.created", 1), ("console.document.disabled", 2)]

    delete_key = {"Idempotency-Key": str(uuid.uuid4())}
    for _ in range(2):
        r = await api.console.delete(f"/console/api/datasets/{ds}/documents/{doc}", headers=delete_key)
        assert r.status_code == 204
    assert document_events(stack, ds)[-1] == ("console.document.deleted", 3)
    assert len(document_events(stack, ds)) == 3


async def test_same_key_with_another_body_is_rejected(api: Api) -> None:
    key = {"Idempotency-Key": str(uuid.uuid4())}
    assert (
        await api.console.post("/console/api/datasets", json={"name": "k1"}, headers=key)
    ).status_code == 201
    r = await api.console.post("/console/api/datasets", json={"name": "k2"}, headers=key)
    assert r.status_code == 422 and "different request" in r.json()["error"]["message"]
    names = [d["name"] for d in (await api.console.get("/console/api/datasets")).json()["data"]]
    assert names == ["k1"]


async def test_concurrent_duplicates_make_one_change(stack: Stack, api: Api) -> None:
    ds = (await api.create_dataset())["id"]
    key = {"Idempotency-Key": str(uuid.uuid4())}
    body = {"name": "raced", "text": "raced text"}
    responses = await asyncio.gather(
        *(
            api.console.post(f"/console/api/datasets/{ds}/documents", json=body, headers=key)
            for _ in range(10)
        )
    )
    assert {r.status_code for r in responses} == {201}
    assert len({r.json()["id"] for r in responses}) == 1
    assert sum(r.headers.get("Idempotent-Replayed") == "true" for r in responses) == 9
    assert document_events(stack, ds) == [("console.document.created", 1)]


async def test_keys_are_scoped_per_account(make_api: Callable[..., Api]) -> None:
    one, two = make_api(), make_api()
    key = {"Idempotency-Key": "shared-key"}
    a = await one.console.post("/console/api/datasets", json={"name": "mine"}, headers=key)
    b = await two.console.post("/console/api/datasets", json={"name": "mine"}, headers=key)
    assert (a.status_code, b.status_code) == (201, 201) and a.json()["id"] != b.json()["id"]
    assert "Idempotent-Replayed" not in b.headers


async def test_a_failed_request_does_not_burn_its_key(api: Api) -> None:
    key = {"Idempotency-Key": str(uuid.uuid4())}
    missing = f"/console/api/datasets/{uuid.uuid4()}"
    assert (await api.console.patch(missing, json={"name": "x"}, headers=key)).status_code == 404
    assert (await api.console.patch(missing, json={"name": "x"}, headers=key)).status_code == 404


async def test_stored_responses_are_purged_after_the_retention(stack: Stack) -> None:
    """Security review, finding 8: before, stored Idempotency-Key responses were never purged."""
    scope = f"purge-{uuid.uuid4().hex[:8]}"
    stack.console_rows(
        "INSERT INTO idempotency_keys (scope, key, fingerprint, status_code, response_body, created_at)"
        " VALUES (%s, 'old', 'f', 201, '{}', now() - interval '25 hours'),"
        " (%s, 'fresh', 'f', 201, '{}', now() - interval '1 hour') RETURNING key",
        scope,
        scope,
    )
    engine = make_engine(stack.console_db, pool_size=1)
    try:
        async with engine.begin() as conn:
            session = AsyncSession(bind=conn)
            await purge_expired(session, older_than=timedelta(hours=24))
    finally:
        await engine.dispose()
    assert stack.console_rows("SELECT key FROM idempotency_keys WHERE scope = %s", scope) == [("fresh",)]
