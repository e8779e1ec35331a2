"""AUTH_JWKS_URL's default follows AUTH_PORT, so moving auth's port locally needs no second setting."""

from __future__ import annotations

import pytest

from servicekit.auth import AuthSettings


def test_the_jwks_url_follows_auth_port(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AUTH_JWKS_URL", raising=False)
    monkeypatch.delenv("AUTH_PORT", raising=False)
    assert AuthSettings().jwks_url == "http://127.0.0.1:8001/auth/.well-known/jwks.json"
    monkeypatch.setenv("AUTH_PORT", "18001")
    assert AuthSettings().jwks_url == "http://127.0.0.1:18001/auth/.well-known/jwks.json"


def test_an_explicit_jwks_url_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AUTH_PORT", "18001")
    monkeypatch.setenv("AUTH_JWKS_URL", "http://auth:8001/auth/.well-known/jwks.json")
    assert AuthSettings().jwks_url == "http://auth:8001/auth/.well-known/jwks.json"
