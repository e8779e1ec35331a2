"""Settings refuse obvious default secrets outside local runs."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from auth.settings import Settings


@pytest.mark.parametrize("secret", ["changethis", "secret", "short-but-random-8c1f"])
def test_default_or_short_secret_is_refused_outside_local(secret: str) -> None:
    with pytest.raises(ValidationError, match="AUTH_KEY_ENCRYPTION_KEY"):
        Settings(environment="production", key_encryption_key=secret)  # type: ignore[arg-type]


def test_default_secret_is_tolerated_for_local_runs() -> None:
    assert Settings(environment="local", key_encryption_key="changethis").environment == "local"  # type: ignore[arg-type]


def test_database_url_is_normalised_to_psycopg() -> None:
    s = Settings(database_url="postgres://u@h:5432/auth", key_encryption_key="x" * 40)  # type: ignore[arg-type]
    assert s.database_url == "postgresql+psycopg://u@h:5432/auth"
