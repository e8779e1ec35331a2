"""Bad requests get clear, structured errors: malformed JSON, oversize bodies, unknown or missing fields."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
from auth_testkit import strong_password, unique_email


async def test_malformed_json_is_422_json_invalid(http: httpx.AsyncClient) -> None:
    r = await http.post(
        "/auth/api/login",
        content=b'{"email": "a@b.io", "password": ',
        headers={"Content-Type": "application/json"},
    )
    assert r.status_code == 422
    error = r.json()["error"]
    assert error["code"] == "validation_error" and error["details"][0]["type"] == "json_invalid"


async def test_oversize_body_is_413(http: httpx.AsyncClient) -> None:
    big = {"email": unique_email(), "password": strong_password(), "name": "x" * 100_000}
    r = await http.post("/auth/api/register", json=big)
    assert r.status_code == 413 and r.json()["error"]["code"] == "payload_too_large"


async def test_oversize_streamed_body_without_content_length_is_413(http: httpx.AsyncClient) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(100):
            yield b"x" * 1024

    r = await http.post("/auth/api/register", content=chunks(), headers={"Content-Type": "application/json"})
    assert r.status_code < 500  # refused either way, never a crash
    assert r.status_code == 413


async def test_unknown_fields_are_refused(http: httpx.AsyncClient) -> None:
    r = await http.post(
        "/auth/api/register",
        json={"email": unique_email(), "password": strong_password(), "name": "N", "is_admin": True},
    )
    assert r.status_code == 422
    [detail] = r.json()["error"]["details"]
    assert detail["loc"] == ["body", "is_admin"] and detail["type"] == "extra_forbidden"


async def test_missing_and_mistyped_fields_are_named(http: httpx.AsyncClient) -> None:
    r = await http.post("/auth/api/register", json={"email": unique_email(), "password": 12})
    assert r.status_code == 422
    locs = {tuple(d["loc"]) for d in r.json()["error"]["details"]}
    assert {("body", "password"), ("body", "name")} <= locs


async def test_invalid_email_and_weak_password_say_why_without_echoing(http: httpx.AsyncClient) -> None:
    weak = "abcabcabcabc"
    r = await http.post("/auth/api/register", json={"email": "not-an-email", "password": weak, "name": "N"})
    assert r.status_code == 422
    messages = {d["loc"][-1]: d["msg"] for d in r.json()["error"]["details"]}
    assert "email" in messages["email"]
    assert "too simple" in messages["password"]
    assert weak not in r.text


async def test_password_containing_the_email_is_refused(http: httpx.AsyncClient) -> None:
    email = unique_email("samename")
    r = await http.post(
        "/auth/api/register", json={"email": email, "password": email.split("@")[0] + "-X9", "name": "N"}
    )
    assert r.status_code == 422 and "email" in r.text


async def test_empty_body_and_wrong_content_type(http: httpx.AsyncClient) -> None:
    assert (await http.post("/auth/api/login")).status_code == 422
    r = await http.post("/auth/api/login", content=b"email=a", headers={"Content-Type": "text/plain"})
    assert r.status_code == 422
