"""Every error answer console gives, one per case; and its OpenAPI document."""

from __future__ import annotations

import uuid
from collections.abc import Callable

import httpx
import pytest

from servicekit.openapi import ErrorResponse
from testsupport.tokens import TestTokenIssuer

from .conftest import Api, Stack


def error_code(r: httpx.Response) -> str:
    return str(r.json()["error"]["code"])


async def test_openapi_is_served(stack: Stack) -> None:
    async with httpx.AsyncClient(base_url=stack.console.base_url) as c:
        r = await c.get("/openapi.json")
    assert r.status_code == 200
    paths = r.json()["paths"]
    assert "/console/api/datasets/{dataset_id}/documents/status/{action}/batch" in paths
    assert {"get", "post"} <= set(paths["/console/api/datasets"])


async def test_missing_or_foreign_token_is_401(stack: Stack) -> None:
    async with httpx.AsyncClient(base_url=stack.console.base_url) as c:
        assert (await c.get("/console/api/datasets")).status_code == 401
        stranger = TestTokenIssuer()  # its key is not in the JWKS console trusts
        r = await c.get("/console/api/datasets", headers={"Authorization": f"Bearer {stranger.token()}"})
        assert r.status_code == 401 and error_code(r) == "unauthorized"


async def test_unknown_ids_are_404(api: Api) -> None:
    ds = (await api.create_dataset())["id"]
    nope = str(uuid.uuid4())
    for r in (
        await api.console.get(f"/console/api/datasets/{nope}"),
        await api.console.patch(f"/console/api/datasets/{nope}", json={"name": "x"}),
        await api.console.delete(f"/console/api/datasets/{nope}"),
        await api.console.get(f"/console/api/datasets/{nope}/documents"),
        await api.console.post(f"/console/api/datasets/{nope}/documents", json={"name": "n", "text": "t"}),
        await api.console.get(f"/console/api/datasets/{ds}/documents/{nope}"),
        await api.console.patch(f"/console/api/datasets/{ds}/documents/{nope}", json={"text": "t"}),
        await api.console.delete(f"/console/api/datasets/{ds}/documents/{nope}"),
        await api.action(ds, "enable", nope),
    ):
        assert r.status_code == 404, r.text
        assert error_code(r) == "not_found"


async def test_another_workspace_ids_are_404(make_api: Callable[..., Api]) -> None:
    owner, other = make_api(), make_api()
    ds = (await owner.create_dataset())["id"]
    doc = (await owner.create_document(ds, "private words"))["id"]
    for r in (
        await other.console.get(f"/console/api/datasets/{ds}"),
        await other.console.patch(f"/console/api/datasets/{ds}", json={"name": "mine"}),
        await other.console.delete(f"/console/api/datasets/{ds}"),
        await other.console.get(f"/console/api/datasets/{ds}/documents/{doc}"),
        await other.console.delete(f"/console/api/datasets/{ds}/documents/{doc}"),
        await other.action(ds, "disable", doc),
    ):
        assert r.status_code == 404, r.text
    assert (await other.console.get("/console/api/datasets")).json()["total"] == 0
    assert (await owner.document(ds, doc))["version"] == 1  # untouched


async def test_invalid_transitions_are_409(api: Api) -> None:
    ds_name = f"dup-{uuid.uuid4().hex[:6]}"
    ds = (await api.create_dataset(ds_name))["id"]
    r = await api.console.post("/console/api/datasets", json={"name": ds_name})
    assert r.status_code == 409 and "already exists" in r.json()["error"]["message"]

    doc = (await api.create_document(ds, "some text"))["id"]
    assert (await api.action(ds, "archive", doc)).status_code == 200
    for action in ("enable", "disable"):
        r = await api.action(ds, action, doc)
        assert r.status_code == 409 and error_code(r) == "conflict"
        assert "un_archive" in r.json()["error"]["message"]
    r = await api.console.patch(f"/console/api/datasets/{ds}/documents/{doc}", json={"text": "new"})
    assert r.status_code == 409 and "archived" in r.json()["error"]["message"]
    assert (await api.document(ds, doc))["version"] == 2  # only the archive changed it


@pytest.mark.parametrize(
    ("method", "path", "body", "params"),
    [
        ("POST", "/console/api/datasets", {"description": "no name"}, None),
        ("POST", "/console/api/datasets", {"name": "x", "unknown": 1}, None),
        ("POST", "/console/api/datasets", {"name": ""}, None),
        ("PATCH", "/console/api/datasets/{ds}", {}, None),
        ("GET", "/console/api/datasets/not-a-uuid", None, None),
        ("GET", "/console/api/datasets", None, {"page": 0}),
        ("GET", "/console/api/datasets", None, {"limit": 1000}),
        ("POST", "/console/api/datasets/{ds}/documents", {"name": "n"}, None),
        (
            "POST",
            "/console/api/datasets/{ds}/documents",
            {"name": "n", "text": "t", "enabled": "maybe"},
            None,
        ),
        ("GET", "/console/api/datasets/{ds}/documents", None, {"status": "sleeping"}),
        (
            "PATCH",
            "/console/api/datasets/{ds}/documents/status/publish/batch",
            None,
            {"document_id": "{doc}"},
        ),
        ("PATCH", "/console/api/datasets/{ds}/documents/status/enable/batch", None, None),
        ("PATCH", "/console/api/datasets/{ds}/documents/status/enable/batch", None, {"document_id": "zzz"}),
        ("PATCH", "/console/api/datasets/{ds}/documents/{doc}", {"name": "n", "text": None, "x": 1}, None),
    ],
)
async def test_malformed_requests_are_422(
    api: Api, method: str, path: str, body: dict[str, object] | None, params: dict[str, object] | None
) -> None:
    ds = (await api.create_dataset())["id"]
    doc = (await api.create_document(ds, "text"))["id"]
    fill = {k: str(v).format(ds=ds, doc=doc) for k, v in (params or {}).items()}
    r = await api.console.request(method, path.format(ds=ds, doc=doc), json=body, params=fill)
    assert r.status_code == 422, r.text
    assert error_code(r) == "validation_error"


async def test_malformed_json_and_bad_idempotency_key_are_422(api: Api) -> None:
    r = await api.console.post(
        "/console/api/datasets", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert r.status_code == 422
    r = await api.console.post(
        "/console/api/datasets", json={"name": "k"}, headers={"Idempotency-Key": "x" * 300}
    )
    assert r.status_code == 422 and "Idempotency-Key" in r.json()["error"]["message"]


async def test_oversize_body_is_413(api: Api) -> None:
    ds = (await api.create_dataset())["id"]
    r = await api.console.post(
        f"/console/api/datasets/{ds}/documents", json={"name": "big", "text": "a" * 400_000}
    )
    assert r.status_code == 413 and error_code(r) == "payload_too_large"
    assert (await api.console.get(f"/console/api/datasets/{ds}/documents")).json()["total"] == 0


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("post", "/console/api/datasets", '{"name": "a\\u0000b"}'),
        ("post", "/console/api/datasets", '{"name": "ok", "description": "x\\u0000"}'),
        ("get", "/console/api/datasets?keyword=a%00b", None),
        ("get", "/console/api/datasets/%00", None),
    ],
)
async def test_nul_characters_anywhere_are_422(api: Api, method: str, path: str, body: str | None) -> None:
    """Security review, finding 8: before, a NUL reached PostgreSQL and came back as a 500."""
    headers = {"content-type": "application/json"}
    r = await api.console.request(method, path, content=body, headers=headers)
    assert r.status_code == 422, r.text
    assert error_code(r) == "validation_error" and "NUL" in r.json()["error"]["message"]


async def test_an_escaped_backslash_before_u0000_is_not_a_nul(api: Api) -> None:
    r = await api.console.post(
        "/console/api/datasets",
        content='{"name": "a\\\\u0000b"}',
        headers={"content-type": "application/json"},
    )
    assert r.status_code == 201, r.text
    assert r.json()["name"] == "a\\u0000b"


async def test_a_change_whose_event_the_broker_could_not_carry_is_413_and_writes_nothing(
    api: Api, stack: Stack
) -> None:
    """Security review, finding 8: before, a body under the HTTP limit could exceed the broker's record size
    and leave an outbox row that could only be dead-lettered. Now it is refused when written."""
    ds = (await api.create_dataset())["id"]
    r = await api.console.post(
        f"/console/api/datasets/{ds}/documents", json={"name": "big", "text": "word " * 30_000}
    )  # 150 KB: under the console's body limit here (300 KB) and text limit, over its event limit (100 KB)
    assert r.status_code == 413, r.text
    assert error_code(r) == "payload_too_large" and "would publish an event" in r.json()["error"]["message"]
    listed = await api.console.get(f"/console/api/datasets/{ds}/documents")
    assert listed.json()["total"] == 0


async def test_every_error_answer_is_documented_in_the_openapi_document(api: Api, stack: Stack) -> None:
    """Issue 13: the spec lists each status an operation answers, with the services' real error shape."""
    async with httpx.AsyncClient(base_url=stack.console.base_url) as anonymous:
        spec = (await anonymous.get("/openapi.json")).json()
        no_token = await anonymous.get("/console/api/datasets")
    ds = (await api.create_dataset())["id"]
    name = (await api.console.get(f"/console/api/datasets/{ds}")).json()["name"]
    answers = [
        ("get", "/console/api/datasets", no_token),
        (
            "get",
            "/console/api/datasets/{dataset_id}",
            await api.console.get(f"/console/api/datasets/{uuid.uuid4()}"),
        ),
        (
            "post",
            "/console/api/datasets",
            await api.console.post("/console/api/datasets", json={"name": name}),
        ),
        ("post", "/console/api/datasets", await api.console.post("/console/api/datasets", json={"nope": 1})),
        (
            "post",
            "/console/api/datasets/{dataset_id}/documents",
            await api.console.post(f"/console/api/datasets/{ds}/documents", content=b"x" * 300_001),
        ),
        (
            "patch",
            "/console/api/datasets/{dataset_id}/documents/status/{action}/batch",
            await api.console.patch(f"/console/api/datasets/{ds}/documents/status/explode/batch"),
        ),
    ]
    assert sorted({r.status_code for _, _, r in answers}) == [401, 404, 409, 413, 422]
    for method, path, response in answers:
        documented = spec["paths"][path][method]["responses"]
        assert str(response.status_code) in documented, (method, path, response.status_code)
        schema = documented[str(response.status_code)]["content"]["application/json"]["schema"]
        assert schema == {"$ref": "#/components/schemas/ErrorResponse"}
        ErrorResponse.model_validate(response.json())
    assert "HTTPValidationError" not in str(spec)
