"""The settings every database-owning service shares; each service subclasses with its env prefix and defaults."""

from __future__ import annotations

import os
from typing import ClassVar, Self

from pydantic import Field, SecretStr, field_validator, model_validator

from servicekit.db import normalise_url
from servicekit.secrets import SecretFileSettings, with_password


def local_database_name(service: str) -> str:
    """The service's database on the local stack: `<SERVICE>_PGDATABASE`, else the service's name."""
    return os.environ.get(f"{service.upper()}_PGDATABASE") or service


def local_database_url(service: str, *, role: str = "app") -> str:
    """The default URL of a service's database as `make stack` provisions it: PGHOST/PGPORT (127.0.0.1:5432
    otherwise), the role `<service>_app` (what the service's processes run as) or `<service>_owner` (what
    its migrations run as; servicekit.pgroles). A `<SERVICE>_DATABASE_URL` overrides it."""
    env = os.environ.get
    host, port = env("PGHOST", "127.0.0.1"), env("PGPORT", "5432")
    return f"postgresql+psycopg://{service}_{role}@{host}:{port}/{local_database_name(service)}"


def local_redis_url() -> str:
    """REDIS_HOST/REDIS_PORT (as `make stack` reads them), 127.0.0.1:6379 otherwise; AUTH_REDIS_URL overrides."""
    return f"redis://{os.environ.get('REDIS_HOST', '127.0.0.1')}:{os.environ.get('REDIS_PORT', '6379')}/0"


class DatabaseUrlSettings(SecretFileSettings):
    """`database_url` (or `_FILE`), and its password apart (`database_password` or `_FILE`), so that the URL
    itself can stay a plain setting."""

    secret_fields: ClassVar[tuple[str, ...]] = ("database_url", "database_password")
    database_url: str
    database_password: SecretStr | None = None

    @field_validator("database_url")
    @classmethod
    def _normalise(cls, value: str) -> str:
        return normalise_url(value)

    @model_validator(mode="after")
    def _password_into_url(self) -> Self:
        if self.database_password is not None:
            prefix = str(self.model_config.get("env_prefix") or "")
            password = self.database_password.get_secret_value()
            self.database_url = with_password(
                self.database_url, password, setting=f"{prefix}DATABASE_PASSWORD"
            )
            self.database_password = None  # one place holds it: the URL the engine gets
        return self


class RedisUrlSettings(SecretFileSettings):
    """`redis_url` (or `_FILE`), and the Redis user's password apart (`redis_password` or `_FILE`): the URL
    names the user (`redis://console@redis:6379/0`), the password stays out of it until the process starts."""

    secret_fields: ClassVar[tuple[str, ...]] = ("redis_url", "redis_password")
    redis_url: str = Field(default_factory=local_redis_url)
    redis_password: SecretStr | None = None

    @model_validator(mode="after")
    def _redis_password_into_url(self) -> Self:
        if self.redis_password is not None:
            prefix = str(self.model_config.get("env_prefix") or "")
            password = self.redis_password.get_secret_value()
            self.redis_url = with_password(self.redis_url, password, setting=f"{prefix}REDIS_PASSWORD")
            self.redis_password = None
        return self


class ServiceSettings(DatabaseUrlSettings):
    host: str = "127.0.0.1"
    port: int
    max_body_bytes: int = 1_048_576
    db_pool_size: int = 10
    # Kafka consumer group and inbox key of the service's consumer process.
    consumer_name: str
