"""Datasets and documents through the API, and the events each change writes in the same transaction."""

from __future__ import annotations

import json

from .conftest import Api, Stack


def outbox_events(stack: Stack, document_id: str) -> list[tuple[str, int, dict[str, object]]]:
    rows = stack.console_rows(
        "SELECT event_type, aggregate_version, payload FROM outbox WHERE aggregate_id = %s ORDER BY id",
        document_id,
    )
    return [(t, v, p if isinstance(p, dict) else json.loads(p)) for t, v, p in rows]


async def test_datasets_crud_and_pagination(api: Api) -> None:
    created = [await api.create_dataset(f"set-{i}") for i in range(5)]
    page1 = (await api.console.get("/console/api/datasets", params={"page": 1, "limit": 2})).json()
    page3 = (await api.console.get("/console/api/datasets", params={"page": 3, "limit": 2})).json()
    assert (page1["total"], page1["has_more"], len(page1["data"])) == (5, True, 2)
    assert (page3["has_more"], len(page3["data"])) == (False, 1)
    assert page1["data"][0]["name"] == "set-4"  # newest first

    ds = created[0]["id"]
    r = await api.console.patch(f"/console/api/datasets/{ds}", json={"name": "renamed", "description": "d"})
    assert r.status_code == 200 and (r.json()["name"], r.json()["description"]) == ("renamed", "d")
    await api.create_document(ds, "hello")
    got = (await api.console.get(f"/console/api/datasets/{ds}")).json()
    assert got["document_count"] == 1
    assert (await api.console.delete(f"/console/api/datasets/{ds}")).status_code == 204
    assert (await api.console.get(f"/console/api/datasets/{ds}")).status_code == 404


async def test_documents_crud_filter_and_events(stack: Stack, api: Api) -> None:
    ds = (await api.create_dataset())["id"]
    a = await api.create_document(ds, "alpha text", name="a")
    b = await api.create_document(ds, "beta text", name="b", enabled=False)
    assert (a["enabled"], a["archived"], a["indexing_status"], a["version"]) == (True, False, "waiting", 1)
    assert a["text"] == "alpha text" and a["created_at"] and a["updated_at"]

    r = await api.action(ds, "archive", a["id"], b["id"])
    assert r.status_code == 200 and [d["archived"] for d in r.json()["data"]] == [True, True]
    r = await api.action(ds, "un_archive", b["id"])
    assert r.status_code == 200
    r = await api.action(ds, "enable", b["id"], b["id"])  # duplicates in the query count once
    assert r.status_code == 200 and r.json()["data"][0]["version"] == 4
    r = await api.action(ds, "enable", b["id"])  # already enabled: a no-op, like Dify
    assert r.status_code == 200 and r.json()["data"][0]["version"] == 4

    async def listed(status: str) -> list[str]:
        r = await api.console.get(f"/console/api/datasets/{ds}/documents", params={"status": status})
        assert r.status_code == 200
        return [d["name"] for d in r.json()["data"]]

    assert await listed("archived") == ["a"]
    assert await listed("enabled") == ["b"]
    assert await listed("disabled") == []
    listing = (await api.console.get(f"/console/api/datasets/{ds}/documents", params={"limit": 1})).json()
    assert (listing["total"], listing["has_more"], "text" not in listing["data"][0]) == (2, True, True)

    r = await api.console.patch(f"/console/api/datasets/{ds}/documents/{b['id']}", json={"name": "b2"})
    assert r.status_code == 200 and (r.json()["name"], r.json()["version"]) == ("b2", 5)
    r = await api.console.patch(f"/console/api/datasets/{ds}/documents/{b['id']}", json={"name": "b2"})
    assert r.json()["version"] == 5  # nothing changed, no new version
    assert (await api.console.delete(f"/console/api/datasets/{ds}/documents/{b['id']}")).status_code == 204

    events = outbox_events(stack, b["id"])
    assert [(t, v) for t, v, _ in events] == [
        ("console.document.created", 1),
        ("console.document.archived", 2),
        ("console.document.unarchived", 3),
        ("console.document.enabled", 4),
        ("console.document.updated", 5),
        ("console.document.deleted", 6),
    ]
    created = events[0][2]
    assert created["text"] == "beta text" and created["enabled"] is False and created["deleted"] is False
    assert created["dataset_id"] == ds and created["owner_account_id"] == str(api.account_id)
    assert events[-1][2]["deleted"] is True
