"""Secrets as files (servicekit.secrets): `<NAME>_FILE` is read when set; both set, or an unreadable file, stop
the process with an error naming the variable; passwords given apart land in the URL the client gets."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import SecretStr
from pydantic_settings import SettingsConfigDict

from auth.settings import Settings as AuthServiceSettings
from console.settings import Settings as ConsoleSettings
from outbox.env_settings import SettingError, env_or_file, with_password
from servicekit.auth import AuthSettings
from servicekit.secrets import SecretFileSettings

KEY = "k" * 40


def secret_file(tmp_path: Path, name: str, content: str) -> str:
    path = tmp_path / name
    path.write_text(content)
    return str(path)


def test_env_or_file_reads_the_variable_or_the_file_it_names(tmp_path: Path) -> None:
    assert env_or_file("X", {}) is None
    assert env_or_file("X", {"X": "plain"}) == "plain"
    # One trailing newline (what `echo` and editors leave) is not part of the secret; inner ones are.
    path = secret_file(tmp_path, "x", "from a file\n")
    assert env_or_file("X", {"X_FILE": path}) == "from a file"
    assert env_or_file("X", {"X_FILE": secret_file(tmp_path, "y", "a\nb\n\n")}) == "a\nb\n"
    assert env_or_file("X", {"X_FILE": path, "X": ""}) == "from a file"  # empty counts as unset


def test_both_set_or_an_unreadable_file_is_an_error_naming_the_variable(tmp_path: Path) -> None:
    path = secret_file(tmp_path, "x", "one")
    with pytest.raises(SettingError, match="AUTH_REDIS_PASSWORD and AUTH_REDIS_PASSWORD_FILE are both set"):
        env_or_file("AUTH_REDIS_PASSWORD", {"AUTH_REDIS_PASSWORD": "two", "AUTH_REDIS_PASSWORD_FILE": path})
    missing = str(tmp_path / "missing")
    with pytest.raises(SettingError, match=r"AUTH_REDIS_PASSWORD_FILE='.*missing' cannot be read"):
        env_or_file("AUTH_REDIS_PASSWORD", {"AUTH_REDIS_PASSWORD_FILE": missing})
    with pytest.raises(SettingError, match=r"X_FILE=.* cannot be read"):
        env_or_file("X", {"X_FILE": str(tmp_path)})  # a directory


def test_with_password_sets_it_quoted_and_refuses_a_second_one() -> None:
    url = with_password("postgresql+psycopg://auth_app@db:5432/auth", "p@ss/w:rd")
    assert url == "postgresql+psycopg://auth_app:p%40ss%2Fw%3Ard@db:5432/auth"
    assert with_password("redis://console@redis:6379/0", "s3") == "redis://console:s3@redis:6379/0"
    assert with_password("redis://redis:6379/0", None) == "redis://redis:6379/0"
    with pytest.raises(SettingError, match="DB_PASSWORD is set and the URL carries a password too"):
        with_password("postgresql://u:old@db/x", "new", setting="DB_PASSWORD")


def test_every_secret_of_auth_can_come_from_a_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AUTH_ENVIRONMENT", "production")
    monkeypatch.setenv("AUTH_KEY_ENCRYPTION_KEY_FILE", secret_file(tmp_path, "kek", KEY + "\n"))
    monkeypatch.setenv("AUTH_DATABASE_URL", "postgresql://auth_app@auth-db:5432/auth")
    monkeypatch.setenv("AUTH_DATABASE_PASSWORD_FILE", secret_file(tmp_path, "db", "db-secret\n"))
    monkeypatch.setenv("AUTH_REDIS_URL", "redis://auth@redis:6379/0")
    monkeypatch.setenv("AUTH_REDIS_PASSWORD_FILE", secret_file(tmp_path, "redis", "redis-secret"))
    s = AuthServiceSettings()
    assert s.key_encryption_key.get_secret_value() == KEY
    assert s.database_url == "postgresql+psycopg://auth_app:db-secret@auth-db:5432/auth"
    assert s.redis_url == "redis://auth:redis-secret@redis:6379/0"
    assert s.database_password is None and s.redis_password is None  # the URL is the one copy

    # A whole URL from a file works too (a managed database's connection string, say).
    monkeypatch.delenv("AUTH_DATABASE_PASSWORD_FILE")
    monkeypatch.delenv("AUTH_DATABASE_URL")
    monkeypatch.setenv("AUTH_DATABASE_URL_FILE", secret_file(tmp_path, "url", "postgresql://u:p@h/auth\n"))
    assert AuthServiceSettings().database_url == "postgresql+psycopg://u:p@h/auth"


def test_a_secret_set_twice_stops_the_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AUTH_ENVIRONMENT", "local")
    monkeypatch.setenv("AUTH_KEY_ENCRYPTION_KEY", KEY)
    monkeypatch.setenv("AUTH_KEY_ENCRYPTION_KEY_FILE", secret_file(tmp_path, "kek", KEY))
    with pytest.raises(SettingError, match="AUTH_KEY_ENCRYPTION_KEY and AUTH_KEY_ENCRYPTION_KEY_FILE"):
        AuthServiceSettings()
    monkeypatch.delenv("AUTH_KEY_ENCRYPTION_KEY")
    monkeypatch.setenv("AUTH_KEY_ENCRYPTION_KEY_FILE", str(tmp_path / "nowhere"))
    with pytest.raises(SettingError, match=r"AUTH_KEY_ENCRYPTION_KEY_FILE=.*cannot be read"):
        AuthServiceSettings()


def test_verifiers_and_services_read_their_secrets_from_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AUTH_REDIS_URL", "redis://console@redis:6379/0")
    monkeypatch.setenv("AUTH_REDIS_PASSWORD_FILE", secret_file(tmp_path, "r", "verifier-secret\n"))
    assert AuthSettings().redis_url == "redis://console:verifier-secret@redis:6379/0"
    monkeypatch.setenv("CONSOLE_DATABASE_URL", "postgresql+psycopg://console_app@console-db/console")
    monkeypatch.setenv("CONSOLE_DATABASE_PASSWORD_FILE", secret_file(tmp_path, "d", "app-secret"))
    assert ConsoleSettings().database_url == "postgresql+psycopg://console_app:app-secret@console-db/console"
    monkeypatch.setenv("CONSOLE_DATABASE_PASSWORD", "again")
    with pytest.raises(SettingError, match="CONSOLE_DATABASE_PASSWORD and CONSOLE_DATABASE_PASSWORD_FILE"):
        ConsoleSettings()


def test_only_the_listed_fields_are_read_from_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    class Example(SecretFileSettings):
        model_config = SettingsConfigDict(env_prefix="EXAMPLE_")
        secret_fields = ("token",)
        token: SecretStr = SecretStr("")
        name: str = "default"

    monkeypatch.setenv("EXAMPLE_TOKEN_FILE", secret_file(tmp_path, "t", "tok"))
    monkeypatch.setenv("EXAMPLE_NAME_FILE", secret_file(tmp_path, "n", "from a file"))
    example = Example()
    assert example.token.get_secret_value() == "tok"
    assert example.name == "default"
