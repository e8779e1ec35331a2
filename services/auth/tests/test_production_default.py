"""Finding 1 of the security review: auth no longer runs with a public key-encryption key by default.

Before: the environment defaulted to "local" and the key to "changethis", so a plain start encrypted the
signing keys with a public value. Now production is the default and the process refuses to start."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from pydantic import ValidationError

from auth.settings import DEFAULT_SECRET, Settings
from testsupport import free_port

AUTH_VARS = ("AUTH_ENVIRONMENT", "AUTH_KEY_ENCRYPTION_KEY")


def test_settings_default_to_production_and_refuse_a_missing_key(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in AUTH_VARS:
        monkeypatch.delenv(var, raising=False)
    with pytest.raises(ValidationError, match="AUTH_KEY_ENCRYPTION_KEY is missing, a default"):
        Settings()
    monkeypatch.setenv("AUTH_KEY_ENCRYPTION_KEY", DEFAULT_SECRET)
    with pytest.raises(ValidationError, match="AUTH_ENVIRONMENT=production"):
        Settings()


def test_the_auth_process_refuses_to_start_without_a_real_key() -> None:
    env = {k: v for k, v in os.environ.items() if k not in AUTH_VARS}
    proc = subprocess.run(
        [sys.executable, "-m", "uvicorn", "auth.main:create_app", "--factory", "--port", str(free_port())],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode != 0
    assert "AUTH_KEY_ENCRYPTION_KEY is missing, a default" in proc.stderr


def test_explicit_local_mode_still_starts_with_a_weak_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AUTH_ENVIRONMENT", "local")
    monkeypatch.delenv("AUTH_KEY_ENCRYPTION_KEY", raising=False)
    assert Settings().environment == "local"


def test_migrations_need_no_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    from auth.settings import DatabaseSettings

    for var in AUTH_VARS:
        monkeypatch.delenv(var, raising=False)
    assert DatabaseSettings().database_url.startswith("postgresql+psycopg://")
